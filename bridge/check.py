"""``meshbridge check``: validate a spec, render it in memory, and cross-check the artifacts.

The spec loader guarantees each field is valid on its own; this module reads the *rendered documents*
back (not the model; through :mod:`bridge.artifacts`, the reader the demo uses too) and checks that they
agree with each other, the way the consumers will meet them:

* every DNS name an external app authenticates (network shield ``_DESTINATION`` with server auth on,
  Ghostunnel ``--target`` host when fed from files) is in the ``dnsNameTemplates`` of the
  ``ClusterSPIFFEID`` selecting that service's pods — otherwise the TLS handshake fails on the name;
* every external app is admitted by the ``AuthorizationPolicy``s selecting each service it calls,
  evaluated as Istio does (DENY before ALLOW; ``principals`` exact or with a prefix/suffix ``*``, AND NOT
  ``notPrincipals``; ``namespaces`` as ``/ns/<ns>/`` in the principal), and has a SPIRE entry with that
  SPIFFE ID; services without ``meshCallers`` still admit in-mesh callers;
* Ghostunnel ``--verify-uri`` is the target service's Istio SPIFFE ID;
* the SVID/bundle sessions the app sessions import are the ones the SVIDStore templates name;
* no SPIFFE ID is registered twice; Ghostunnel listen/status ports of one app do not clash;
* with ``federation:`` (apps in their own trust domain): the target services' ``ClusterSPIFFEID``s
  federate with the apps' trust domain and no other service's does (SPIRE then puts the apps' bundle in
  the targets' ``ROOTCA`` only), a ``ClusterFederatedTrustDomain`` fetches it, the overlay admits it to
  Istio's SAN check (``meshConfig.caCertificates[].trustDomains``) and runs the SDS server with
  ``--rootca-all-bundles``, and each app's entry federates with the mesh's trust domain so its session
  gets the mesh's CA from the federated-bundles session; every service's policies refuse identities
  of the apps' trust domain that the spec does not declare for it (an undeclared app path, a
  ``/ns/<ns>/sa/..``-shaped one, and the declared apps that target other services);
* warnings: an ALLOW policy whose selector also selects another service's pods (over-admission), mesh
  services sharing a service account (Ghostunnel cannot tell them apart by SPIFFE ID), and the exposure
  an app in the mesh's own trust domain leaves (every mesh workload trusts its SVID; only policies keep
  it out).

:func:`consistency_problems` is what the property tests run on random specs.
"""

from __future__ import annotations

from dataclasses import dataclass

import istio
from bridge import artifacts
from bridge import render as layout
from bridge.model import Bridge, ExternalApp, MeshService
from bridge.render import render
from bridge.rendering import Rendering
from scone.svidstore import FEDERATED_BUNDLES_SECRET

_SCHEME = "spiffe://"
_Policies = tuple[artifacts.AuthorizationPolicy, ...]
_Crds = tuple[artifacts.ClusterSpiffeId, ...]


@dataclass(frozen=True, slots=True)
class CheckReport:
    """``problems`` make ``check`` fail (exit 2); ``warnings`` are printed; ``documents`` were checked."""

    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    documents: int


def check(bridge: Bridge) -> CheckReport:
    """Render ``bridge`` in memory and cross-check the documents."""
    rendering = render(bridge)
    warnings = list(rendering.warnings) + _model_warnings(bridge)
    problems = consistency_problems(bridge, rendering)
    return CheckReport(tuple(problems), tuple(dict.fromkeys(warnings)), len(rendering))


def _rule_matches(rule: artifacts.PolicyRule, principal: str, *, action: str) -> bool:
    """Whether one policy rule matches a request from ``principal`` (any path, method, port).

    ``from`` entries are OR-ed, ``to``/``when`` would narrow the rule. Fields this check does not model
    count against the policy's purpose: a DENY rule is then taken not to match (it may not refuse), an
    ALLOW rule to match only through what is modelled."""
    if action == "DENY" and rule.narrowed:
        return False
    if not rule.sources:
        return True
    for source in rule.sources:
        verdict = istio.source_matches(source.principal_fields(), principal)
        if verdict is None:
            continue
        # Istio matches source.namespaces as the regex '.*/ns/<ns>/.*' on the principal, whatever its
        # trust domain (pilot/pkg/security/authz/model/generator.go, srcNamespaceGenerator)
        in_namespace = not source.namespaces or any(f"/ns/{ns}/" in principal for ns in source.namespaces)
        if verdict and in_namespace:
            return True
    return False


def _allow_admits(policies: _Policies, service: MeshService, principal: str) -> bool:
    """Whether an ALLOW policy selecting ``service`` has a rule matching ``principal``."""
    return any(
        _rule_matches(r, principal, action="ALLOW")
        for policy in artifacts.selecting(policies, service.namespace, service.label_map)
        if policy.action == "ALLOW"
        for r in policy.rules
    )


def _policy_refuses(policies: _Policies, service: MeshService, principal: str) -> bool:
    """Whether the rendered policies selecting ``service`` refuse ``principal`` (no ``spiffe://``), with
    Istio's semantics: a matching DENY rule refuses (DENY before ALLOW); otherwise, once an ALLOW policy
    selects the pods, only a matching ALLOW rule admits."""
    allow_seen = allowed = False
    for policy in artifacts.selecting(policies, service.namespace, service.label_map):
        action = policy.action
        if action == "DENY" and any(_rule_matches(r, principal, action=action) for r in policy.rules):
            return True
        if action == "ALLOW":
            allow_seen = True
            allowed = allowed or any(_rule_matches(r, principal, action=action) for r in policy.rules)
    return allow_seen and not allowed


def _authenticated_names(rendering: Rendering, app: ExternalApp) -> list[str]:
    """DNS names the app's TLS client checks in the server certificate, read from its artifacts."""
    if app.mode == "network-shield":
        session = rendering.yaml_documents(layout.session_path(app.name))[0]
        out = []
        for env in artifacts.session_environments(session):
            for key, value in env.items():
                if key.endswith("_DESTINATION") and str(value).startswith("TCP:"):
                    auth = env.get(key.removesuffix("_DESTINATION") + "_SERVER_AUTH")
                    if auth != "disabled":
                        out.append(str(value).split(":")[1])
        return out
    if app.ghostunnel is None or app.ghostunnel.cert_source != "files":
        return []
    return [_flag(line, "target").rpartition(":")[0] for line in _ghostunnel_lines(rendering, app)]


def _ghostunnel_lines(rendering: Rendering, app: ExternalApp) -> list[str]:
    return [ln for ln in rendering.text(layout.ghostunnel_command_path(app.name)).splitlines() if ln.strip()]


def _flag(line: str, name: str) -> str:
    for word in line.split():
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
    return ""


def consistency_problems(bridge: Bridge, rendering: Rendering) -> list[str]:
    """Every disagreement between the rendered documents (empty list = consistent)."""
    problems: list[str] = []
    policies = artifacts.authorization_policies(rendering)
    crds = artifacts.cluster_spiffe_ids(rendering)
    registered = {e.spiffe_id for e in artifacts.register_entries(rendering)}
    for i, app in enumerate(bridge.apps):
        where = f"externalApps[{i}] ({app.name})"
        principal = app.spiffe_id.removeprefix(_SCHEME)
        if app.spiffe_id not in registered:
            problems.append(f"{where}: {layout.ENTRIES_SCRIPT} registers no entry for {app.spiffe_id!r}")
        for t in app.targets:
            svc = t.service
            if _policy_refuses(policies, svc, principal) or (
                svc.lists_mesh_callers and not _allow_admits(policies, svc, principal)
            ):
                problems.append(
                    f"{where}: {principal!r}: no AuthorizationPolicy selecting {svc.key} admits it "
                    "(STRICT mTLS would pass, the request would get 403)"
                )
        for name in _authenticated_names(rendering, app):
            svc_match = [t.service for t in app.targets if name in t.service.dns_names]
            if not svc_match:
                problems.append(f"{where}: {name!r}: authenticates a DNS name of no target service")
                continue
            selecting = artifacts.selecting(crds, svc_match[0].namespace, svc_match[0].label_map)
            if not any(name in artifacts.as_list(c.dns_name_templates) for c in selecting):
                problems.append(
                    f"{where}: {name!r}: authenticated by DNS name but no ClusterSPIFFEID of "
                    f"{svc_match[0].key} puts it in the SVID (dnsNameTemplates): the handshake would fail"
                )
        problems += _session_problems(bridge, rendering, app, where)
    problems += _duplicate_ids(bridge)
    problems += _mesh_traffic_problems(bridge, policies)
    problems += _federation_problems(bridge, rendering, policies, crds)
    problems += _strict_problems(rendering)
    return problems


def _strict_problems(rendering: Rendering) -> list[str]:
    """The mesh-wide STRICT PeerAuthentication (no selector) must be in Istio's root namespace, else it
    holds in its own namespace only (``security/v1beta1/peer_authentication.proto``)."""
    root = artifacts.root_namespace(rendering)
    return [
        f"{path}: PeerAuthentication {artifacts.get(doc, 'metadata', 'name')!r} in namespace "
        f"{namespace!r}: mesh-wide STRICT mTLS needs Istio's root namespace {root!r} (the IstioOperator's)"
        for path, doc in artifacts.documents(rendering, "PeerAuthentication")
        if not artifacts.get(doc, "spec", "selector")
        and (namespace := artifacts.get(doc, "metadata", "namespace")) != root
    ]


_PROBE_SA = "meshbridge-check-undeclared"
"""Service account of the identities ``check`` tries against the rendered policies (no spec names it)."""


def _mesh_traffic_problems(bridge: Bridge, policies: _Policies) -> list[str]:
    """A service whose spec lists no in-mesh callers must keep admitting in-mesh callers after apply."""
    problems = []
    for i, svc in enumerate(bridge.services):
        if svc.lists_mesh_callers:
            continue
        caller = f"{bridge.trust_domain}/ns/{svc.namespace}/sa/{_PROBE_SA}"
        if _policy_refuses(policies, svc, caller):
            problems.append(
                f"meshServices[{i}] ({svc.key}): its AuthorizationPolicies refuse in-mesh callers such as "
                f"{caller!r} although the spec lists no meshCallers: applying them would cut the mesh off"
            )
    return problems


def _federation_problems(bridge: Bridge, rendering: Rendering, policies: _Policies, crds: _Crds) -> list[str]:
    fed = bridge.federation
    if fed is None:
        return []
    td = fed.trust_domain
    problems: list[str] = []
    where = f"federation ({td})"
    targets = {t.service.key for a in bridge.apps if bridge.in_federation(a) for t in a.targets}
    for i, svc in enumerate(bridge.services):
        selecting = artifacts.selecting(crds, svc.namespace, svc.label_map)
        federates = any(td in c.federates_with for c in selecting)
        if svc.key in targets and not federates:
            problems.append(
                f"meshServices[{i}] ({svc.key}): no ClusterSPIFFEID selecting it federates with {td!r}: its "
                "ROOTCA would not hold the apps' bundle and the sidecar would refuse their handshakes"
            )
        if svc.key not in targets and federates:
            problems.append(
                f"meshServices[{i}] ({svc.key}): its ClusterSPIFFEID federates with {td!r} although no app "
                "in that trust domain targets it: its sidecar would trust every SVID the apps' SPIRE issues"
            )
    for i, svc in enumerate(bridge.services):
        callers = {a.spiffe_id for a in bridge.callers_of(svc)}
        # any SVID the apps' SPIRE issues, path-shaped like an app's or like a mesh workload's (an ALLOW
        # policy's namespaces rule matches '/ns/<ns>/' in any trust domain), and declared apps elsewhere
        probes = [f"{td}/external/{_PROBE_SA}", f"{td}/ns/{svc.namespace}/sa/{_PROBE_SA}"]
        probes += [
            a.spiffe_id.removeprefix(_SCHEME)
            for a in bridge.apps
            if bridge.in_federation(a) and a.spiffe_id not in callers
        ]
        admitted = [p for p in probes if not _policy_refuses(policies, svc, p)]
        if admitted:
            problems.append(
                f"meshServices[{i}] ({svc.key}): its AuthorizationPolicies admit "
                f"{', '.join(map(repr, admitted))}: identities of {td!r} that no app declares for it; "
                "every mesh service must refuse the apps' trust domain except its declared callers (a DENY "
                f"policy with principals ['{td}/*'] and notPrincipals = those callers)"
            )
    if td not in artifacts.federated_trust_domains(rendering):
        problems.append(
            f"{where}: no ClusterFederatedTrustDomain for {td!r} in "
            f"{layout.CLUSTER_FEDERATED_TRUST_DOMAINS}: the mesh's SPIRE would never fetch the apps' bundle"
        )
    overlays = artifacts.overlays(rendering)
    if not any(td in (*o.trust_domain_aliases, *o.ca_trust_domains) for o in overlays):
        problems.append(
            f"{where}: {layout.ISTIO_OPERATOR}: meshConfig.caCertificates names no trustDomains {td!r}: "
            "Istio's inbound SAN check admits only spiffe://<mesh td>/ and would refuse every app"
        )
    commands = [c for o in overlays for c in o.sds_commands]
    if not commands or any("--rootca-all-bundles" not in c for c in commands):
        problems.append(
            f"{where}: {layout.ISTIO_OPERATOR}: a meshbridge-sds container runs without "
            "--rootca-all-bundles: its ROOTCA would carry the mesh's bundle only, so no target trusts "
            "the apps"
        )
    entries = artifacts.register_entries(rendering)
    for i, app in enumerate(bridge.apps):
        if not bridge.in_federation(app):
            continue
        own = [e for e in entries if e.spiffe_id == app.spiffe_id]
        if not own or any(bridge.trust_domain not in e.federates_with for e in own):
            problems.append(
                f"externalApps[{i}] ({app.name}): its SPIRE entry does not federate with "
                f"{bridge.trust_domain!r}: the SVIDStore plugin would post no mesh CA for its session"
            )
    return problems


def _session_problems(bridge: Bridge, rendering: Rendering, app: ExternalApp, where: str) -> list[str]:
    problems: list[str] = []
    session = rendering.yaml_documents(layout.session_path(app.name))[0]
    if session.get("name") != app.scone.qualified_session_name:
        problems.append(
            f"{where}: session name {session.get('name')!r} != {app.scone.qualified_session_name!r}"
        )
    svid_name, bundle_name, fed_name = (
        artifacts.session_name_of(rendering.text(layout.SVIDSTORE_TEMPLATES[kind]))
        for kind in ("svid", "bundle", "federated_bundles")
    )
    for imported, source in artifacts.session_imports(session):
        if imported == "svid" and svid_name is not None:
            expected = svid_name.replace("<\\session-name-selector>", app.scone.qualified_session_name)
            if source != expected:
                problems.append(
                    f"{where}: imports the SVID from {source!r}; the SVIDStore posts it as {expected!r}"
                )
        if imported == "spire-ca" and bundle_name is not None and source != bundle_name:
            problems.append(
                f"{where}: imports the bundle from {source!r}; the SVIDStore posts {bundle_name!r}"
            )
        if imported == "spire-ca" and bridge.in_federation(app):
            problems.append(
                f"{where}: authenticates mesh services with its own trust domain's CA ({source!r}, "
                "spire-ca); the mesh's CA reaches it in the federated-bundles session"
            )
        if imported == FEDERATED_BUNDLES_SECRET and fed_name is not None and source != fed_name:
            problems.append(
                f"{where}: imports the federated bundles from {source!r}; the SVIDStore posts {fed_name!r}"
            )
    if app.mode == "ghostunnel":
        lines = _ghostunnel_lines(rendering, app)
        ports: dict[str, str] = {}
        for line, target in zip(lines, app.targets, strict=False):
            if _flag(line, "verify-uri") != target.service.spiffe_id:
                problems.append(
                    f"{where}: --verify-uri={_flag(line, 'verify-uri')} is not {target.service.key}'s "
                    f"SPIFFE ID {target.service.spiffe_id!r}"
                )
            for flag in ("listen", "status"):
                port = _flag(line, flag).rpartition(":")[2]
                if port in ports:
                    problems.append(f"{where}: port {port} used twice (--{flag} and {ports[port]})")
                ports[port] = f"--{flag}"
        if len(lines) != len(app.targets):
            problems.append(f"{where}: {len(lines)} Ghostunnel command lines for {len(app.targets)} targets")
    return problems


def _duplicate_ids(bridge: Bridge) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for i, app in enumerate(bridge.apps):
        if app.spiffe_id in seen:
            problems.append(f"externalApps[{i}].spiffeId: {app.spiffe_id!r}: also {seen[app.spiffe_id]}")
        seen[app.spiffe_id] = f"externalApps[{i}]"
    mesh_ids = {s.spiffe_id for s in bridge.services}
    for i, app in enumerate(bridge.apps):
        if app.spiffe_id in mesh_ids:
            problems.append(f"externalApps[{i}].spiffeId: {app.spiffe_id!r}: a mesh service's SPIFFE ID")
    return problems


def _model_warnings(bridge: Bridge) -> list[str]:
    warnings = []
    for a in bridge.services:
        for b in bridge.services:
            if a is b or a.namespace != b.namespace or not bridge.callers_of(a):
                continue
            extra = {x.name for x in bridge.callers_of(a)} - {x.name for x in bridge.callers_of(b)}
            if artifacts.labels_select(a.label_map, b.label_map) and extra:
                warnings.append(
                    f"meshServices ({a.key}): labels {a.label_map} also select the pods of {b.key}: its "
                    f"AuthorizationPolicy admits {a.key}'s callers to {b.key} too"
                )
    mesh_td_apps = [(i, a) for i, a in enumerate(bridge.apps) if not bridge.in_federation(a)]
    open_services = [
        f"meshServices[{i}] ({s.key})" for i, s in enumerate(bridge.services) if not s.lists_mesh_callers
    ]
    if mesh_td_apps:
        names = ", ".join(f"externalApps[{i}] ({a.name})" for i, a in mesh_td_apps)
        warnings.append(
            f"{names}: SPIFFE ID(s) in the mesh's trust domain {bridge.trust_domain!r}: every mesh workload "
            "trusts these SVIDs at the TLS handshake (STRICT mTLS checks the CA, not who it is); only "
            "AuthorizationPolicies keep them out, and meshbridge renders those for the meshServices of this "
            "spec alone: any other workload in the mesh without a policy naming them accepts their requests"
            + (
                f"; and {', '.join(open_services)} (no meshCallers: DENY policies, which can name only the "
                "declared apps, not a whole trust domain the mesh itself uses) admit every other SVID issued "
                f"in {bridge.trust_domain!r}, e.g. an undeclared external app's"
                if open_services
                else ""
            )
            + ". Declare 'federation:' to give the apps their own trust domain, trusted only by their "
            "targets and refused by every other mesh service's DENY policy"
        )
    # category tolerations without advisories: the renderer's warning (scone.session.attestation_advice)
    by_id: dict[str, list[str]] = {}
    for s in bridge.services:
        by_id.setdefault(s.spiffe_id, []).append(s.key)
    for sid, keys in by_id.items():
        if len(keys) > 1:
            warnings.append(
                f"meshServices ({', '.join(keys)}): share the SPIFFE ID {sid!r} (same service account): "
                "Ghostunnel's --verify-uri cannot tell them apart"
            )
    return warnings
