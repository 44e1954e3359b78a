"""What the demo runs, read from the rendering of ``examples/httpbin/bridge.yaml`` — nothing invented.

Every identity, name and setting the demo uses is taken from the rendered artifacts, the way each
consumer in a cluster would read them:

- trust domain: the ``IstioOperator`` overlay's ``meshConfig.trustDomain``;
- httpbin's SPIFFE ID and DNS SANs: the ``ClusterSPIFFEID`` whose ``podSelector``/``namespaceSelector``
  select the httpbin pods of ``examples/httpbin/httpbin.yaml``, its ``spiffeIDTemplate`` and
  ``dnsNameTemplates`` evaluated for those pods (as spire-controller-manager does);
- STRICT: the mesh-wide ``PeerAuthentication``; admitted callers: the ``AuthorizationPolicy`` ALLOW
  principals selecting those pods; refused ones: their DENY sources (exact principals, or Istio's
  ``td/*`` wildcard with ``notPrincipals``, enforced as Envoy RBAC the way istiod compiles them);
- each external app's SPIFFE ID: the SPIRE registration entry carrying its CAS session selector;
- each app's session (``scone/<app>/session.yaml``) and the SVIDStore templates (text, filled later
  like the plugin does).
A missing or inconsistent artifact raises ``DemoError`` naming it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from bridge import artifacts
from bridge.demo.cas import PLACEHOLDER_SVID, PLACEHOLDER_TRUST_BUNDLE, PLACEHOLDER_TRUST_BUNDLE_CA
from bridge.demo.errors import DemoError
from bridge.demo.identities import trust_domain_of
from bridge.envoy.bootstrap import SourceRule
from bridge.rendering import Rendering

AppMode = Literal["network-shield", "ghostunnel"]
Doc = Mapping[str, object]

_TEMPLATE_VAR = re.compile(r"\{\{\s*\.([A-Za-z.]+)\s*\}\}")
_BUNDLE_MARKERS = (PLACEHOLDER_TRUST_BUNDLE, PLACEHOLDER_TRUST_BUNDLE_CA)
"""The bundle session template's placeholder: the sconecas plugin's, else the tutorial plugin's."""


@dataclass(frozen=True, slots=True)
class Pod:
    """httpbin's pods as ``examples/httpbin/httpbin.yaml`` declares them."""

    namespace: str
    name: str
    service_account: str
    labels: Mapping[str, str]
    service_name: str
    service_port: int

    def resolves(self, host: str) -> bool:
        """Whether cluster DNS resolves ``host`` to this Service (``svc``, ``svc.ns``, ``svc.ns.svc…``)."""
        svc, ns = self.service_name, self.namespace
        return host in (svc, f"{svc}.{ns}", f"{svc}.{ns}.svc") or host.startswith(f"{svc}.{ns}.svc.")


@dataclass(frozen=True, slots=True)
class MeshSide:
    spiffe_id: str
    dns_names: tuple[str, ...]
    service_port: int
    principals: tuple[str, ...] | None
    """Callers ALLOW policies admit, as SPIFFE IDs (``spiffe://…``); ``None``: no ALLOW policy selects
    the pods, so Istio admits every caller that passes mTLS and no DENY policy."""
    policy_paths: tuple[str, ...]
    cluster_spiffe_id_path: str
    namespace_sources: tuple[str, ...] = ()
    """``source.namespaces`` of the ALLOW policies: in-mesh callers (no such caller runs in the demo)."""
    denied: tuple[str, ...] = ()
    """Callers DENY policies refuse by exact principal, as SPIFFE IDs (checked before ALLOW, as Istio
    does)."""
    federates_with: tuple[str, ...] = ()
    """The ClusterSPIFFEID's ``federatesWith``: foreign trust domains whose bundles the pods receive."""
    pod: Pod | None = None
    deny_rules: tuple[SourceRule, ...] = ()
    """DENY sources with a ``*`` wildcard or ``notPrincipals`` (e.g. every identity of the apps' trust
    domain but the service's declared callers), in Istio's syntax: RBAC ``and_ids``/``not_id``."""

    @property
    def name(self) -> str:
        return self.pod.service_name if self.pod is not None else self.spiffe_id.rsplit("/", 1)[-1]

    @property
    def sni(self) -> str:
        """What a client dialling the service sends as SNI: its first DNS SAN, else its name."""
        return self.dns_names[0] if self.dns_names else self.name


@dataclass(frozen=True, slots=True)
class AppPlan:
    name: str
    mode: AppMode
    spiffe_id: str
    session_name: str
    session: Doc
    session_path: str

    @property
    def socket_name(self) -> str:
        """This app's own Workload API socket (prefixed: app names never clash with the mesh's)."""
        return f"app-{self.name}"

    @property
    def service(self) -> Doc:
        services = self.session.get("services")
        if not isinstance(services, list) or not services or not isinstance(services[0], dict):
            raise DemoError(f"{self.session_path}: services: the session runs no service")
        return services[0]

    @property
    def environment(self) -> dict[str, str]:
        env = self.service.get("environment", {})
        if not isinstance(env, dict):
            raise DemoError(f"{self.session_path}: services[0].environment: must be a mapping")
        return {str(k): str(v) for k, v in env.items()}

    @property
    def command(self) -> list[str]:
        cmd = self.service.get("command")
        if not isinstance(cmd, str) or not cmd.strip():
            raise DemoError(f"{self.session_path}: services[0].command: {cmd!r}: must be a command line")
        return shlex.split(cmd)

    @property
    def injection_files(self) -> dict[str, str]:
        """Rendered in-enclave path → content (with ``$$SCONE::…$$`` injections) of every image."""
        out: dict[str, str] = {}
        for image in artifacts.as_list(self.session.get("images")):
            for f in artifacts.as_list(artifacts.get(image, "injection_files")):
                if isinstance(f, dict) and isinstance(f.get("path"), str):
                    out[str(f["path"])] = str(f.get("content", ""))
        return out


@dataclass(frozen=True, slots=True)
class DemoPlan:
    trust_domain: str
    pod: Pod
    mesh: MeshSide
    apps: tuple[AppPlan, ...]
    svid_template: str
    bundle_template: str
    others: tuple[MeshSide, ...] = ()
    """Mesh services besides the apps' target that a ClusterSPIFFEID registers (their pods from the
    example manifests): each gets its own sidecar."""
    san_trust_domains: tuple[str, ...] = ()
    """Istio's inbound SAN check: ``meshConfig.trustDomain`` + ``trustDomainAliases`` +
    ``caCertificates[].trustDomains`` of the overlay."""
    rootca_all_bundles: bool = False
    """The injected ``meshbridge-sds`` runs with ``--rootca-all-bundles`` (federated bundles in ROOTCA)."""
    federated_template: str | None = None
    """The SVIDStore federated-bundles session template, when an app session imports from it."""
    app_federates_with: tuple[str, ...] = ()
    """Trust domains the apps' SPIRE entries federate with (``-federatesWith`` of the entries script)."""

    @property
    def apps_trust_domain(self) -> str:
        """The apps' trust domain (the mesh's in one-trust-domain mode)."""
        return trust_domain_of(self.apps[0].spiffe_id) if self.apps else self.trust_domain

    @property
    def trust_domains(self) -> tuple[str, ...]:
        """Every trust domain an embedded Workload API must serve: the mesh's, then the apps'."""
        return tuple(dict.fromkeys((self.trust_domain, *(trust_domain_of(a.spiffe_id) for a in self.apps))))


def load_pod(manifests: Path) -> Pod:
    """httpbin's namespace, service account, pod labels and service port from the example manifests."""
    try:
        docs = [d for d in yaml.safe_load_all(manifests.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        raise DemoError(f"{manifests}: cannot read the example manifests: {exc}") from exc
    deploy = next((d for d in docs if d.get("kind") == "Deployment"), None)
    service = next((d for d in docs if d.get("kind") == "Service"), None)
    if deploy is None or service is None:
        raise DemoError(f"{manifests}: needs a Deployment and a Service")
    meta, tmpl = deploy["metadata"], deploy["spec"]["template"]
    return Pod(
        namespace=str(meta.get("namespace", "default")),
        name=f"{meta['name']}-demo",
        service_account=str(tmpl["spec"].get("serviceAccountName", "default")),
        labels={str(k): str(v) for k, v in tmpl["metadata"].get("labels", {}).items()},
        service_name=str(service["metadata"]["name"]),
        service_port=int(service["spec"]["ports"][0]["port"]),
    )


def evaluate_template(template: str, *, trust_domain: str, pod: Pod, where: str) -> str:
    """A spire-controller-manager Go template, for the variables our ClusterSPIFFEIDs may use."""
    values = {
        "TrustDomain": trust_domain,
        "PodMeta.Namespace": pod.namespace,
        "PodMeta.Name": pod.name,
        "PodSpec.ServiceAccountName": pod.service_account,
    }

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise DemoError(f"{where}: {m.group(0)!r}: the demo cannot evaluate this template variable")
        return values[m.group(1)]

    return _TEMPLATE_VAR.sub(sub, template)


def _trust_domain(overlay: artifacts.Overlay) -> str:
    td = overlay.trust_domain
    if not isinstance(td, str) or not td:
        raise DemoError(f"{overlay.path}: spec.meshConfig.trustDomain: {td!r}: must be the trust domain")
    return td


def _strict(rendering: Rendering) -> None:
    docs = artifacts.documents(rendering, "PeerAuthentication")
    if not any(artifacts.get(d, "spec", "mtls", "mode") == "STRICT" for _, d in docs):
        raise DemoError("rendering: no PeerAuthentication with spec.mtls.mode STRICT")


def _mesh_side(
    crds: Sequence[artifacts.ClusterSpiffeId],
    policies: Sequence[artifacts.AuthorizationPolicy],
    trust_domain: str,
    pod: Pod,
) -> MeshSide:
    matching = artifacts.selecting(crds, pod.namespace, pod.labels)
    if len(matching) != 1:
        raise DemoError(
            f"rendering: {len(matching)} ClusterSPIFFEIDs select the {pod.service_name} pods (labels "
            f"{dict(pod.labels)}, namespace {pod.namespace!r}); exactly one must, or its pods get no SVID"
        )
    crd = matching[0]
    path, tpl = crd.path, crd.spiffe_id_template
    if not isinstance(tpl, str):
        raise DemoError(f"{path}: spec.spiffeIDTemplate: {tpl!r}: missing")
    spiffe_id = evaluate_template(tpl, trust_domain=trust_domain, pod=pod, where=f"{path}: spiffeIDTemplate")
    raw_dns = crd.dns_name_templates or []
    if not isinstance(raw_dns, list):
        raise DemoError(f"{path}: spec.dnsNameTemplates: {raw_dns!r}: must be a list")
    dns = tuple(
        evaluate_template(str(t), trust_domain=trust_domain, pod=pod, where=f"{path}: dnsNameTemplates")
        for t in raw_dns
    )
    principals: list[str] = []
    denied: list[str] = []
    deny_rules: list[SourceRule] = []
    namespaces: list[str] = []
    policy_paths: list[str] = []
    allow = False
    for policy in artifacts.selecting(policies, pod.namespace, pod.labels):
        ppath, action = policy.path, policy.action
        if action not in ("ALLOW", "DENY"):
            raise DemoError(
                f"{ppath}: spec.action: {action!r}: the demo enforces ALLOW and DENY policies only"
            )
        policy_paths.append(ppath)
        allow = allow or action == "ALLOW"
        for rule in policy.rules:
            for src in rule.sources:
                ids = [f"spiffe://{p}" for p in src.principals]
                if action == "ALLOW":
                    principals += ids
                    namespaces += src.namespaces
                elif src.namespaces or src.other_fields or rule.narrowed:
                    raise DemoError(
                        f"{ppath}: a DENY rule the demo cannot enforce (only principals, notPrincipals)"
                    )
                elif src.not_principals or any("*" in p for p in src.principals):
                    deny_rules.append(SourceRule(src.principals, src.not_principals))
                else:
                    denied += ids
    return MeshSide(
        spiffe_id,
        dns,
        pod.service_port,
        tuple(principals) if allow else None,
        tuple(policy_paths),
        path,
        tuple(namespaces),
        tuple(denied),
        crd.federates_with,
        pod,
        tuple(deny_rules),
    )


def _network_shield(session: Doc) -> bool:
    """The session's first service runs under SCONE's network shield."""
    envs = artifacts.session_environments(session)
    return bool(envs) and "SCONE_NETWORK_SHIELD" in envs[0]


def _apps(rendering: Rendering, entries: tuple[artifacts.RegisterEntry, ...]) -> tuple[AppPlan, ...]:
    # CAS session name -> SPIFFE ID, from the SPIRE entries (JSON entries or the create script)
    ids: dict[str, str] = {}
    for entry in entries:
        if entry.session_name is not None:
            ids.setdefault(entry.session_name, entry.spiffe_id)
    apps = []
    for path, doc in rendering.items():
        m = artifacts.SESSION_PATH.fullmatch(path)
        if not m or not isinstance(doc, dict):
            continue
        name, commands = str(doc.get("name", "")), artifacts.session_commands(doc)
        if _network_shield(doc):
            mode: AppMode = "network-shield"
        elif commands and "ghostunnel" in commands[0].split(" ", 1)[0]:
            mode = "ghostunnel"
        else:
            raise DemoError(f"{path}: neither a network-shield session nor a Ghostunnel command")
        spiffe_id = ids.get(name)
        if spiffe_id is None:
            raise DemoError(
                f"{path}: no SPIRE entry stores its SVID into session {name!r}: the app would never get one"
            )
        if mode == "ghostunnel":
            _same_command(rendering, m.group(1), commands, path)
        apps.append(AppPlan(m.group(1), mode, spiffe_id, name, doc, path))
    if not apps:
        raise DemoError("rendering: no scone/<app>/session.yaml")
    return tuple(apps)


def _same_command(rendering: Rendering, app: str, commands: list[str], path: str) -> None:
    """The operators' command line (outside CAS) must be the one the session runs."""
    text = rendering.get(f"scone/{app}/ghostunnel-command.txt")
    if not isinstance(text, str):
        return
    plain = [shlex.split(line)[1:] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    in_session = [shlex.split(c)[1:] for c in commands]
    if plain != in_session:
        raise DemoError(
            f"scone/{app}/ghostunnel-command.txt: {plain!r}: differs from the commands of {path} "
            f"({in_session!r}); operators and CAS would run different tunnels"
        )


def _template(rendering: Mapping[str, object], marker: str, what: str) -> str:
    found = [d for p, d in rendering.items() if isinstance(d, str) and marker in d and "template" in p]
    if len(found) != 1:
        raise DemoError(
            f"rendering: {len(found)} SVIDStore {what} templates (containing {marker!r}); need one"
        )
    return str(found[0])


def _overlay_trust(overlay: artifacts.Overlay) -> tuple[tuple[str, ...], bool]:
    """Istio's SAN-check trust domains and whether the injected SDS container serves every bundle."""
    commands = overlay.sidecar_sds_commands.get("spire")
    if not commands:
        raise DemoError(
            f"{overlay.path}: spec.values.sidecarInjectorWebhook.templates.spire: no meshbridge-sds container"
        )
    return overlay.san_trust_domains, any("--rootca-all-bundles" in c for c in commands)


def build_plan(rendering: Rendering, pod: Pod, others: Sequence[Pod] = ()) -> DemoPlan:
    """The demo's plan: ``pod`` is the apps' target; ``others`` are further example pods (a sidecar each
    when a ClusterSPIFFEID registers them; pods nothing registers are left out)."""
    overlays, entries = artifacts.overlays(rendering), artifacts.register_entries(rendering)
    if not overlays:
        raise DemoError("rendering: no IstioOperator overlay")
    td = _trust_domain(overlays[0])
    _strict(rendering)
    san_tds, rootca_all = _overlay_trust(overlays[0])
    federated = [
        d for p, d in rendering.items() if isinstance(d, str) and "template" in p and "federated" in p
    ]
    fed_name = artifacts.session_name_of(federated[0]) if len(federated) == 1 else None
    svid_rendering = {p: d for p, d in rendering.items() if "federated" not in p}
    bundle_marker = next(
        (m for m in _BUNDLE_MARKERS if any(isinstance(d, str) and m in d for d in svid_rendering.values())),
        PLACEHOLDER_TRUST_BUNDLE,
    )
    crds, policies = artifacts.cluster_spiffe_ids(rendering), artifacts.authorization_policies(rendering)
    mesh, apps = _mesh_side(crds, policies, td, pod), _apps(rendering, entries)
    uses_federated = fed_name is not None and any(
        source == fed_name for a in apps for _, source in artifacts.session_imports(a.session)
    )
    return DemoPlan(
        trust_domain=td,
        pod=pod,
        mesh=mesh,
        apps=apps,
        svid_template=_template(svid_rendering, PLACEHOLDER_SVID, "SVID session"),
        bundle_template=_template(svid_rendering, bundle_marker, "bundle session"),
        others=tuple(
            _mesh_side(crds, policies, td, p)
            for p in others
            if artifacts.selecting(crds, p.namespace, p.labels)
        ),
        san_trust_domains=san_tds,
        rootca_all_bundles=rootca_all,
        federated_template=str(federated[0]) if uses_federated else None,
        app_federates_with=tuple(dict.fromkeys(td for e in entries for td in e.federates_with)),
    )


def describe(path: str, doc: object = None) -> str:
    """One line on what a rendered artifact is for (by its place in the output tree and its content)."""
    if re.search(r"scone/.*session\.ya?ml$", path) and isinstance(doc, dict):
        if _network_shield(doc):
            return "CAS session (network shield): TLS inside the enclave with the SVID imported from CAS"
        return "CAS session (confidential Ghostunnel): cert files injected after attestation"
    rules: Sequence[tuple[str, str]] = (
        (r"README\.md$", "what to apply, in order, with the exact commands"),
        (
            r"istio/.*(overlay|operator|install).*",
            "istioctl install -f: Istio on SPIRE (trust domain, SDS socket)",
        ),
        (r"istio/.*peer.*", "mesh-wide STRICT mTLS (PeerAuthentication)"),
        (
            r"istio/.*(authz|authorization|polic).*",
            "AuthorizationPolicy: only the declared external SPIFFE IDs",
        ),
        (
            r"spire/.*federated.?trust.?domain.*",
            "ClusterFederatedTrustDomain: the mesh's SPIRE fetches the apps' trust bundle",
        ),
        (r"spire/.*cluster.?spiffe.*", "ClusterSPIFFEID: mesh SVIDs (+ DNS names for name-checking clients)"),
        (
            r"spire/.*\.json$",
            "spire-server entry create -data: external apps' entries with SVIDStore selectors",
        ),
        (r"spire/.*\.sh$", "script registering the external apps (needs the CAS session hashes)"),
        (r"spire/.*\.(hcl|conf)$", "SPIRE agent SVIDStore plugin block (posts SVIDs into CAS)"),
        (r".*federated.*template", "SVIDStore template: federated bundles session"),
        (r".*bundle.*template", "SVIDStore template: trust bundle session (spire-ca)"),
        (r".*svid.*template", "SVIDStore template: the app's SVID session, exports pinned by hash"),
        (r"scone/.*session\.ya?ml$", "CAS session: scone session create (runs the app with its TLS)"),
        (r"scone/.*ghostunnel.*", "Ghostunnel client command line (outside CAS)"),
    )
    for pattern, text in rules:
        if re.search(pattern, path, re.IGNORECASE):
            return text
    return "rendered artifact"
