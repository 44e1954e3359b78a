"""The ``README.md`` of a rendered output directory: what to apply, in which order, with exact commands.

The order matters (istio.io "ops/integrations/spire", spire-controller-manager docs, SCONE CAS docs):

1. ``ClusterSPIFFEID``s before any SPIRE-backed pod starts (pods without an entry never become Ready);
2. Istio with the overlay, then STRICT mTLS and the AuthorizationPolicies (ALLOW and DENY);
3. the mesh workloads opt in to the ``spire`` injection template and are restarted;
4. the SPIRE agent next to CAS gets the SVIDStore plugin and its three session templates;
5. each app's CAS session is posted — CAS answers with the session hash;
6. the apps' SPIRE entries are created with those hashes (the plugin then posts the SVID sessions,
   exported to the app session pinned by hash);
7. the apps start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from shlex import quote

from bridge import artifacts
from bridge.model import Bridge
from bridge.rendering import Document

_ANNOTATION = "inject.istio.io/templates"
_NATIVE_SIDECAR = "sidecar.istio.io/nativeSidecar"  # per pod, Istio >= 1.24


def _session(docs: Mapping[str, Document], app_name: str) -> Mapping[str, object]:
    return artifacts.as_dict(docs.get(f"scone/{app_name}/session.yaml"))


def _namespace(session_name: str) -> str:
    return session_name.rpartition("/")[0]


def _cas_namespaces(
    bridge: Bridge, docs: Mapping[str, Document], svidstore: bool
) -> tuple[set[str], set[str]]:
    """CAS namespaces the apps' sessions live in, and those the SVIDStore plugin posts into (the SVID
    sessions the app sessions import; the bundle and federated-bundles sessions when ``svidstore``)."""
    sessions = [_session(docs, a.name) for a in bridge.apps]
    apps = {_namespace(str(s.get("name", ""))) for s in sessions}
    plugin = {_namespace(source) for s in sessions for _, source in artifacts.session_imports(s)}
    if svidstore:
        names = (bridge.spire.bundle_session_name, bridge.spire.federated_bundles_session_name)
        plugin |= {_namespace(name) for name in names}
    return apps - {""}, plugin - {""}


def _parent_id_notes(bridge: Bridge) -> list[str]:
    """How the agent gets the SPIFFE ID the entries name as parent (x509pop's default differs)."""
    parents = sorted({a.parent_id for a in bridge.apps})
    prefix = f"spiffe://{bridge.trust_domain}/spire/agent/x509pop/"
    x509pop = [p for p in parents if p.startswith(prefix)]
    if not x509pop:
        return [
            f"The apps' entries name {', '.join(f'`{p}`' for p in parents)} as parent: the agent's SPIFFE ID "
            "(`spire-server agent list`) must be exactly that.",
            "",
        ]
    return [
        f"The apps' entries name {', '.join(f'`{p}`' for p in x509pop)} as parent. An `x509pop` agent's "
        "ID is `spiffe://<td>/spire/agent/x509pop/<certificate fingerprint>` by default "
        "(`agent_path_template` `{{ .PluginName}}/{{ .Fingerprint }}`), so set the server's node attestor "
        "to name agents by their certificate's common name, and give the agent's certificate that CN "
        f"(`{x509pop[0].removeprefix(prefix)}`); check with `spire-server agent list`:",
        "",
        "```hcl",
        'NodeAttestor "x509pop" {',
        "    plugin_data {",
        '        ca_bundle_path      = "/opt/spire/conf/server/agent-cacert.pem"',
        '        agent_path_template = "/x509pop/{{ .Subject.CommonName }}"',
        "    }",
        "}",
        "```",
        "",
    ]


def _federation_notes(bridge: Bridge) -> list[str]:
    """What federation needs on both sides (SPIFFE Federation; SPIRE "Configuring federation")."""
    fed = bridge.federation
    if fed is None:
        return [
            f"The external apps' SPIFFE IDs are in the mesh's trust domain `{bridge.trust_domain}`: every "
            "mesh workload trusts their SVIDs at the TLS handshake, and only the AuthorizationPolicies keep "
            "them out (`meshbridge check` explains this exposure). A service without `meshCallers` gets a "
            "DENY policy naming the declared apps that do not call it (a whole-trust-domain DENY would cut "
            "off the mesh itself), so any other SVID of this trust domain, e.g. an undeclared app's, is "
            "admitted there. Declare `federation:` in the spec to give the apps their own trust domain, "
            "trusted only by their targets and refused by every other mesh service.",
            "",
        ]
    targets = sorted({t.service.key for a in bridge.apps if bridge.in_federation(a) for t in a.targets})
    return [
        f"The external apps live in their own trust domain `{fed.trust_domain}`. The mesh's SPIRE fetches "
        f"its bundle from `{fed.bundle_endpoint_url}` (`ClusterFederatedTrustDomain`) and hands it only to "
        f"the pods whose ClusterSPIFFEID federates with it: {', '.join(f'`{t}`' for t in targets)}. Their "
        "`meshbridge-sds` serves it in `ROOTCA` (`--rootca-all-bundles`); every other sidecar refuses the "
        "apps' certificates at the handshake. The overlay admits the trust domain to Istio's own SAN check "
        "(`meshConfig.caCertificates[].trustDomains`, Istio >= 1.16), not as a `trustDomainAlias` (an alias "
        "would also let the apps' trust domain match mesh principals in AuthorizationPolicies).",
        "",
        f"Every mesh service's DENY `AuthorizationPolicy` (`<service>-meshbridge-deny`) refuses "
        f"`{fed.trust_domain}/*` except the apps the spec admits to that service (`notPrincipals`): any "
        "other SVID the apps' SPIRE issues gets 403 even where its certificate is trusted (Istio evaluates "
        "DENY before ALLOW). The mesh's own identities do not match, so in-mesh traffic is untouched.",
        "",
        f"The other direction: the SPIRE server of `{fed.trust_domain}` (the one the SGX host's agent "
        f"belongs to) must federate with `{bridge.trust_domain}`: expose the mesh SPIRE server's bundle "
        "endpoint (`federation { bundle_endpoint { ... } }` in its server.conf; the hardened chart's "
        "`spire-server.federation.enabled=true`) and, on the apps' server, `spire-server federation create "
        f"-trustDomain {bridge.trust_domain} -bundleEndpointURL <URL> -bundleEndpointProfile https_spiffe "
        f"-endpointSpiffeID spiffe://{bridge.trust_domain}/spire/server "
        "-trustDomainBundlePath <mesh bundle>` (first bundle from `spire-server bundle show -format spiffe` "
        "on the mesh's server). The apps' entries "
        f"federate with `{bridge.trust_domain}`, so the SVIDStore plugin posts the mesh's CA in "
        f"`{bridge.spire.federated_bundles_session_name}`, which the app sessions import.",
        "",
    ]


def render_readme(bridge: Bridge, docs: Mapping[str, Document], warnings: list[str]) -> str:
    """Markdown for ``DIR/README.md``; ``docs`` are the other rendered documents (paths decide steps)."""
    cas_apps = [a for a in bridge.apps if a.stores_svid_in_cas]
    out: list[str] = [
        "# meshbridge output",
        "",
        f"Trust domain `{bridge.trust_domain}`: {len(bridge.services)} mesh service(s), "
        f"{len(bridge.apps)} external SCONE app(s). Generated by `meshbridge render`; regenerate instead "
        "of editing (the whole directory is replaced on the next render). Run the commands from this "
        "directory, in order.",
        "",
    ]
    if warnings:
        out += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    out += [
        "## 1. SPIRE identities for the mesh services and gateways (before any pod starts)",
        "",
        f"spire-controller-manager (cluster `{bridge.spire.cluster_name}`"
        + (f", class `{bridge.spire.class_name}`" if bridge.spire.class_name else "")
        + ") turns these into entries; pods without one never become Ready.",
        "",
        "```sh",
        *(
            ["kubectl apply -f spire/cluster-federated-trust-domains.yaml"]
            if "spire/cluster-federated-trust-domains.yaml" in docs
            else []
        ),
        "kubectl apply -f spire/cluster-spiffeids.yaml",
        "```",
        "",
        *_federation_notes(bridge),
    ]
    dns = [s for s in bridge.services if bridge.carries_dns_names(s)]
    if dns:
        names = ", ".join(f"`{s.fqdn}`" for s in dns)
        out += [
            f"The SVIDs of {names} carry their DNS names (`dnsNameTemplates`): external apps authenticate "
            "them by name.",
            "",
        ]
    out += [
        "## 2. Istio on SPIRE, STRICT mTLS, who may call",
        "",
        *(
            [
                f"The overlay installs revision `{bridge.mesh.revision}` (`spec.revision`); label namespaces "
                f"`istio.io/rev={bridge.mesh.revision}` to use it.",
                "",
            ]
            if bridge.mesh.revision
            else []
        ),
        "```sh",
        "istioctl install --skip-confirmation -f istio/istio-operator.yaml",
        "kubectl apply -f istio/peer-authentication.yaml",
        "kubectl apply -f istio/authorization-policies.yaml",
        "```",
        "",
        "## 3. Mesh workloads use the SPIRE-backed sidecar",
        "",
        f"Annotate each workload's pod template with `{_ANNOTATION}: sidecar,spire` and "
        f'`{_NATIVE_SIDECAR}: "false"` (istio-proxy stays a regular container, started after the '
        "`meshbridge-sds` native sidecar; per pod, so the rest of the mesh is untouched; Istio >= 1.24) "
        "(commands assume a Deployment named like the service) and let it roll:",
        "",
        "```sh",
    ]
    patch = json.dumps(
        {
            "spec": {
                "template": {
                    "metadata": {"annotations": {_ANNOTATION: "sidecar,spire", _NATIVE_SIDECAR: "false"}}
                }
            }
        },
        separators=(",", ":"),
    )
    for s in bridge.services:
        out.append(f"kubectl -n {quote(s.namespace)} patch deployment {quote(s.name)} -p {quote(patch)}")
    out += ["```", ""]
    if cas_apps:
        tdir = bridge.spire.templates_dir
        out += [
            f"## 4. SVIDStore plugin ({bridge.spire.svidstore_plugin}) on the SPIRE agent next to CAS",
            "",
            f"Copy the session templates to `{tdir}` on the agent's host and add `spire/agent-svidstore.hcl` "
            "to the `plugins { }` block of the agent's configuration, then restart the agent. Both "
            "directories must survive a reboot (not `/run`): without its templates the agent does not "
            "start, and without the predecessor hashes it can never update its CAS sessions again.",
            "",
            "```sh",
            f"install -d -m 0700 {quote(tdir)} {quote(bridge.spire.cas_predecessor_dir)}",
            f"install -m 0600 spire/svidstore-templates/*.template {quote(tdir)}/",
            "```",
            "",
            *_parent_id_notes(bridge),
        ]
    out += ["## 5. CAS sessions of the external apps", ""]
    out += [
        "Attest each CAS once (`scone cas attest`, see the SCONE docs) and make it the default; post each "
        "session: CAS prints the session hash, which the SPIRE entries need (an existing session is "
        "changed with `scone session update` and `predecessor:`).",
        "",
    ]
    app_ns, plugin_ns = _cas_namespaces(bridge, docs, svidstore=bool(cas_apps))
    if app_ns or plugin_ns:
        ns_list = ", ".join(f"`{n}`" for n in sorted(app_ns | plugin_ns))
        out += [
            "A session named `<namespace>/<name>` is created inside the namespace session `<namespace>`, "
            f'which must exist first (SCONE docs, "Namespaces"): create {ns_list} if missing.'
        ]
        if plugin_ns:
            out[-1] += (
                " The SVIDStore plugin posts its sessions with its own CAS client certificate: the namespace "
                f"sessions {', '.join(f'`{n}`' for n in sorted(plugin_ns))} must let that certificate create "
                'sessions (`access_policy.create_sessions`, SCONE docs, "Access Control").'
            )
        out.append("")
    out += ["```sh"]
    cas = ""
    for a in bridge.apps:
        if a.scone.cas_address != cas:
            cas = a.scone.cas_address
            out.append(f"scone cas set-default {quote(cas)}")
        hash_file = f"{a.name}.session-hash"
        out.append(f"scone session create scone/{a.name}/session.yaml | tee {quote(hash_file)}")
    out += ["```", "", "## 6. SPIRE entries of the external apps", ""]
    if bridge.federation is not None:
        out += [
            f"Run it against the SPIRE server of `{bridge.federation.trust_domain}` (`SPIRE_SERVER=...`), "
            "after the federation relationship above exists (`-federatesWith` names it).",
            "",
        ]
    out += ["```sh"]
    args = " ".join(
        f"{quote(a.scone.qualified_session_name)}=@{quote(a.name + '.session-hash')}" for a in cas_apps
    )
    out.append(f"spire/register-entries.sh {args}".rstrip())
    out += ["```", ""]
    if "spire/entries.json" in docs:
        out += ["or, with the hashes given to `meshbridge render --session-hash`:", "", "```sh"]
        out += ["spire-server entry create -data spire/entries.json", "```", ""]
    out += ["## 7. Start the apps", ""]
    for a in bridge.apps:
        targets = ", ".join(f"`{t.service.fqdn}:{t.service.port}`" for t in a.targets)
        if a.mode == "network-shield":
            auth = "verifies the server (DNS name, SPIRE bundle)" if a.server_auth else "server auth DISABLED"
            out.append(
                f"- `{a.name}` (`{a.spiffe_id}`): network shield to {targets}; {auth}. Start its enclave "
                f"with `SCONE_CONFIG_ID={a.scone.qualified_session_name}/{a.scone.service_name}`."
            )
        else:
            source = a.ghostunnel.cert_source if a.ghostunnel else "files"
            config_ids = ", ".join(
                f"`SCONE_CONFIG_ID={a.scone.qualified_session_name}/{artifacts.get(service, 'name')}`"
                for service in artifacts.as_list(_session(docs, a.name).get("services"))
            )
            out.append(
                f"- `{a.name}` (`{a.spiffe_id}`): confidential Ghostunnel ({source}) to {targets}; start "
                f"one enclave per tunnel with {config_ids}. Outside CAS: the command lines in "
                f"`scone/{a.name}/ghostunnel-command.txt`."
            )
    out += [
        "",
        "The apps must reach each target's **sidecar** with their own TLS: an ingress gateway in TLS "
        "`PASSTHROUGH` forwards the bytes over its own mTLS connection, so the sidecar sees the gateway's "
        "identity, not the app's, and the app's certificate never reaches the STRICT sidecar. Expose the "
        "target pods directly (a `LoadBalancer`/`NodePort` Service selecting them, or pod IPs routable "
        "from the SGX host) and point the app's DNS name (`_DESTINATION_IP` for the network shield) there.",
        "",
        "## Check",
        "",
        "```sh",
        "istioctl proxy-config secret <pod> -n <namespace>   # default + ROOTCA issued by SPIRE",
        "```",
        "",
    ]
    return "\n".join(out)
