"""Rendering a bridge: one validated :class:`~bridge.model.Bridge` in, every artifact out, consistently.

``render(bridge, session_hashes=None) -> Rendering`` maps the bridge model onto the pure renderers of
:mod:`istio` and :mod:`scone` (their own small frozen inputs; SPIFFE IDs as ``str``) and collects the
documents under these relative paths (the layout ``meshbridge render -o DIR`` writes):

* ``README.md`` - what to apply, in order, with the exact commands;
* ``istio/istio-operator.yaml`` - ``IstioOperator`` overlay for ``istioctl install -f``;
* ``istio/peer-authentication.yaml`` - mesh-wide STRICT ``PeerAuthentication``;
* ``istio/authorization-policies.yaml`` - per mesh service, an ALLOW ``AuthorizationPolicy`` (when the
  spec lists its in-mesh callers) and/or a DENY one (in-mesh traffic untouched): with ``federation:``
  it refuses every identity of the apps' trust domain (``<td>/*``) except the service's declared
  callers (``notPrincipals``); it also names the declared apps of the mesh's trust domain that do not
  target the service (when no ALLOW policy already refuses them); a list: multi-document YAML;
* ``spire/cluster-spiffeids.yaml`` - one ``ClusterSPIFFEID`` per mesh service, then one per gateway
  the overlay puts on SPIRE (a list);
* ``spire/cluster-federated-trust-domains.yaml`` - with ``federation:``, the ``ClusterFederatedTrustDomain``
  through which the mesh's SPIRE fetches the apps' trust domain bundle;
* ``spire/register-entries.sh`` - ``spire-server entry create`` for the external apps (0755; takes the
  CAS session hashes as ``SESSION=HASH|@FILE|-`` arguments and refuses to run without them);
* ``spire/entries.json`` - the same for ``spire-server entry create -data``; present only when
  ``session_hashes`` covers every app whose SVID goes to CAS;
* ``spire/agent-svidstore.hcl`` - the agent's ``SVIDStore "<plugin>" { plugin_data {...} }`` block;
* ``spire/svidstore-templates/{svid,bundle,federated-bundles}-session.template`` - the three session
  templates the plugin posts (text with the plugin's ``<\\...>`` placeholders, named as the HCL says);
* ``scone/<app>/session.yaml`` - each external app's CAS session (network shield or Ghostunnel);
* ``scone/<app>/ghostunnel-command.txt`` - Ghostunnel mode: the client command line, one per target.

Structured documents are plain ``dict``/``list`` (dumped by :mod:`bridge.writer`); scripts, HCL,
templates and the README are ``str``. ``Rendering.warnings`` lists settings that work but weaken
security (server authentication off, ``debug-mode`` tolerated, the tutorial SVIDStore plugin).

A renderer refusing an input the spec loader accepted is reported as :class:`~bridge.errors.SpecError`
naming the app or service, so callers see one error type for "this spec cannot be rendered".
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping

import istio
import scone
from bridge.errors import SpecError
from bridge.model import Bridge, ExternalApp, GhostunnelSettings, MeshService
from bridge.readme import render_readme
from bridge.rendering import Document, Rendering
from bridge.spec_scone import DEFAULT_GHOSTUNNEL_WORKLOAD_API

__all__ = [
    "AUTHORIZATION_POLICIES",
    "CLUSTER_FEDERATED_TRUST_DOMAINS",
    "CLUSTER_SPIFFEIDS",
    "ENTRIES_JSON",
    "ENTRIES_SCRIPT",
    "ISTIO_OPERATOR",
    "PEER_AUTHENTICATION",
    "README",
    "SVIDSTORE_HCL",
    "SVIDSTORE_TEMPLATES",
    "Rendering",
    "ghostunnel_command_path",
    "render",
    "session_path",
]

README = "README.md"
ISTIO_OPERATOR = "istio/istio-operator.yaml"
PEER_AUTHENTICATION = "istio/peer-authentication.yaml"
AUTHORIZATION_POLICIES = "istio/authorization-policies.yaml"
CLUSTER_SPIFFEIDS = "spire/cluster-spiffeids.yaml"
CLUSTER_FEDERATED_TRUST_DOMAINS = "spire/cluster-federated-trust-domains.yaml"
ENTRIES_JSON = "spire/entries.json"
ENTRIES_SCRIPT = "spire/register-entries.sh"
SVIDSTORE_HCL = "spire/agent-svidstore.hcl"
SVIDSTORE_TEMPLATES = {k: f"spire/svidstore-templates/{file}" for k, file in scone.TEMPLATE_FILES.items()}
"""The three SVIDStore session templates, named as ``spire/agent-svidstore.hcl`` refers to them."""
SESSION_TEMPLATES: Mapping[str, Callable[[scone.SvidStoreSessions], str]] = {
    "svid": scone.render_svid_session_template,
    "bundle": scone.render_bundle_session_template,
    "federated_bundles": scone.render_federated_bundles_session_template,
}
"""The renderer of each of :data:`SVIDSTORE_TEMPLATES`."""


def session_path(app_name: str) -> str:
    return f"scone/{app_name}/session.yaml"


def ghostunnel_command_path(app_name: str) -> str:
    return f"scone/{app_name}/ghostunnel-command.txt"


# --- mapping the bridge model onto the renderers' inputs -------------------------------------------


def istio_service(service: MeshService) -> istio.MeshService:
    return istio.MeshService(
        name=service.name,
        namespace=service.namespace,
        service_account=service.service_account,
        port=service.port,
        pod_labels=service.labels,
    )


def peer_trust_domains(bridge: Bridge) -> tuple[istio.PeerTrustDomain, ...]:
    fed = bridge.federation
    if fed is None:
        return ()
    return (
        istio.PeerTrustDomain(
            trust_domain=fed.trust_domain,
            bundle_endpoint_url=fed.bundle_endpoint_url,
            profile=fed.profile,
            endpoint_spiffe_id=fed.endpoint_spiffe_id,
        ),
    )


def overlay_params(bridge: Bridge) -> istio.OverlayParams:
    mount, socket_name = posixpath.split(bridge.mesh.sds.workload_api_socket)
    return istio.OverlayParams(
        trust_domain=bridge.trust_domain,
        sds_image=bridge.mesh.sds.image,
        root_namespace=bridge.mesh.istio_namespace,
        revision=bridge.mesh.revision,
        profile=bridge.mesh.profile,
        gateways=tuple(
            istio.Gateway(name=g.name, labels=g.labels, namespace=g.namespace, kind=g.kind)
            for g in bridge.mesh.gateways
        ),
        workload_api_mount=mount or "/",
        workload_api_socket_name=socket_name,
        peer_trust_domains=peer_trust_domains(bridge),
    )


def authorization_params(bridge: Bridge, service: MeshService) -> istio.AuthorizationParams:
    return istio.AuthorizationParams(
        service=istio_service(service),
        allowed_spiffe_ids=tuple(a.spiffe_id for a in bridge.callers_of(service)),
        mesh_principals=service.mesh_principals,
        mesh_namespaces=service.mesh_namespaces,
    )


def foreign_trust_domains(bridge: Bridge) -> tuple[str, ...]:
    """Trust domains of external apps besides the mesh's: refused by every mesh service's DENY policy
    except for the apps the spec admits to it."""
    return (bridge.federation.trust_domain,) if bridge.federation is not None else ()


def cluster_spiffe_id_params(bridge: Bridge, service: MeshService) -> istio.ClusterSpiffeIdParams:
    return istio.ClusterSpiffeIdParams(
        service=istio_service(service),
        dns_names=bridge.carries_dns_names(service),
        class_name=bridge.spire.class_name,
        cluster_domain=bridge.mesh.cluster_domain,
        federates_with=bridge.federates_with(service),
    )


def app_entry(bridge: Bridge, app: ExternalApp) -> istio.ExternalAppEntry:
    selectors: tuple[istio.Selector, ...] = ()
    if app.ghostunnel is not None and not app.stores_svid_in_cas:
        selectors = tuple(istio.Selector(t, v) for t, v in app.ghostunnel.workload_api_selectors)
    return istio.ExternalAppEntry(
        spiffe_id=app.spiffe_id,
        parent_id=app.parent_id,
        cas_session=app.scone.qualified_session_name if app.stores_svid_in_cas else None,
        selectors=selectors,
        x509_svid_ttl=bridge.spire.svid_ttl,
        # an app in its own trust domain federates with the mesh's: the SVIDStore plugin then posts
        # the mesh's bundle in the federated-bundles session, which the app's session imports
        federates_with=(bridge.trust_domain,) if bridge.in_federation(app) else (),
    )


def entries_params(bridge: Bridge) -> istio.EntriesParams:
    return istio.EntriesParams(
        entries=tuple(app_entry(bridge, a) for a in bridge.apps),
        plugin=bridge.spire.svidstore_plugin,
    )


def svidstore_sessions(bridge: Bridge, app: ExternalApp | None = None) -> scone.SvidStoreSessions:
    """The SVIDStore session names; for ``app``, also where its session finds the mesh's CA."""
    return scone.SvidStoreSessions(
        plugin=bridge.spire.svidstore_plugin,
        bundle_session=bridge.spire.bundle_session_name,
        federated_bundles_session=bridge.spire.federated_bundles_session_name,
        mesh_bundle_federated=app is not None and bridge.in_federation(app),
    )


def svidstore_config(bridge: Bridge) -> scone.SvidStoreConfig:
    s = bridge.spire
    return scone.SvidStoreConfig(
        cas_address=s.cas_connection,
        cas_client_certificate=s.cas_client_certificate,
        cas_client_key=s.cas_client_key,
        trust_anchor_certificate=s.trust_anchor_certificate,
        sessions=svidstore_sessions(bridge),
        cas_predecessor_dir=s.cas_predecessor_dir,
        template_dir=s.templates_dir,
    )


def mesh_target(bridge: Bridge, service: MeshService) -> scone.MeshTarget:
    return scone.MeshTarget(
        name=service.name,
        namespace=service.namespace,
        port=service.port,
        spiffe_id=service.spiffe_id,
        cluster_domain=bridge.mesh.cluster_domain,
    )


def network_shield_app(bridge: Bridge, app: ExternalApp) -> scone.NetworkShieldApp:
    return scone.NetworkShieldApp(
        session_name=app.scone.qualified_session_name,
        service_name=app.scone.service_name,
        command=app.scone.command,
        mrenclaves=app.scone.mrenclaves,
        targets=tuple(mesh_target(bridge, t.service) for t in app.targets),
        pwd=app.scone.pwd,
        attestation=attestation(app),
        svidstore=svidstore_sessions(bridge, app),
        server_auth=app.server_auth,
    )


def attestation(app: ExternalApp) -> scone.Attestation:
    return scone.Attestation(tolerate=app.scone.tolerations, ignore_advisories=app.scone.ignore_advisories)


def ghostunnel_tunnels(
    gt: GhostunnelSettings, targets: Iterable[tuple[scone.MeshTarget, int]]
) -> tuple[scone.GhostunnelTunnel, ...]:
    """One Ghostunnel per ``(target, local listen port)``, fed the SVID files CAS injects into
    ``gt.cert_dir`` (or the Workload API)."""
    d = gt.cert_dir
    files = scone.CertFiles(cert=f"{d}/svid.pem", key=f"{d}/svid-key.pem", cacert=f"{d}/bundle.pem")
    addr = gt.workload_api_addr if gt.workload_api_addr is not None else DEFAULT_GHOSTUNNEL_WORKLOAD_API
    return tuple(
        scone.GhostunnelTunnel(
            target=target,
            listen_port=port,
            cert_source=gt.cert_source,
            files=files,
            workload_api_addr=addr,
            timed_reload=gt.timed_reload,
            # one status listener per tunnel: the first gets statusPort, the next ones count up
            status_port=gt.status_port + i,
        )
        for i, (target, port) in enumerate(targets)
    )


def ghostunnel_app(bridge: Bridge, app: ExternalApp) -> scone.GhostunnelApp:
    gt = app.ghostunnel
    if gt is None:  # pragma: no cover - the loader guarantees it for mode 'ghostunnel'
        raise SpecError([f"{app.name}: mode 'ghostunnel' without ghostunnel settings"])
    targets = [(mesh_target(bridge, t.service), t.listen_port or t.service.port) for t in app.targets]
    return scone.GhostunnelApp(
        session_name=app.scone.qualified_session_name,
        mrenclaves=app.scone.mrenclaves,
        tunnels=ghostunnel_tunnels(gt, targets),
        binary=gt.binary,
        pwd=app.scone.pwd,
        attestation=attestation(app),
        svidstore=svidstore_sessions(bridge, app),
    )


# --- rendering --------------------------------------------------------------------------------------


def _where_service(index: int, service: MeshService) -> str:
    return f"meshServices[{index}] ({service.key})"


@contextlib.contextmanager
def _refused(where: str) -> Iterator[None]:
    """A renderer refusing what the loader accepted becomes a :class:`SpecError` naming ``where``."""
    try:
        yield
    except (istio.IstioError, scone.SconeError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        raise SpecError([f"{where}: {line}" for line in lines]) from exc


def _render_istio(bridge: Bridge, docs: dict[str, Document]) -> None:
    with _refused("mesh"):
        docs[ISTIO_OPERATOR] = istio.render_istio_operator(overlay_params(bridge))
        docs[PEER_AUTHENTICATION] = istio.render_peer_authentication(bridge.mesh.istio_namespace)
    policies: list[dict[str, object]] = []
    crds: list[dict[str, object]] = []
    for index, service in enumerate(bridge.services):
        with _refused(_where_service(index, service)):
            params = authorization_params(bridge, service)
            if bridge.callers_of(service) and service.lists_mesh_callers:
                # the spec lists the in-mesh callers: one ALLOW policy admits them and the apps
                policies.append(istio.render_authorization_policy(params))
                mesh_td_others: tuple[str, ...] = ()  # the ALLOW policy already refuses them
            else:
                # no in-mesh callers declared (or no app calls it): an ALLOW policy would deny every
                # in-mesh caller the moment it is applied; the DENY policy below refuses the declared
                # apps of the mesh's trust domain that do not target the service, and leaves the mesh alone
                mesh_td_others = tuple(
                    a.spiffe_id
                    for a in bridge.apps
                    if a.spiffe_id not in params.allowed_spiffe_ids and not bridge.in_federation(a)
                )
            # With federation, every identity of the apps' trust domain except this service's declared
            # callers is refused here - also next to an ALLOW policy, whose source.namespaces rule Istio
            # matches as '.*/ns/<ns>/.*' in any trust domain
            deny = istio.render_external_deny_policy(
                params, mesh_td_others, foreign_trust_domains=foreign_trust_domains(bridge)
            )
            if deny is not None:
                policies.append(deny)
            crds.append(istio.render_cluster_spiffe_id(cluster_spiffe_id_params(bridge, service)))
    # The overlay puts every declared gateway on SPIRE too: without a matching entry its SDS server
    # gets no SVID and the gateway never becomes Ready (Istio's SPIRE guide), so it gets a ClusterSPIFFEID.
    for index, gateway in enumerate(overlay_params(bridge).gateways):
        with _refused(f"mesh.gateways[{index}] ({gateway.name})"):
            crds.append(
                istio.render_gateway_cluster_spiffe_id(
                    gateway, bridge.mesh.istio_namespace, bridge.spire.class_name
                )
            )
    docs[AUTHORIZATION_POLICIES] = policies
    docs[CLUSTER_SPIFFEIDS] = crds
    for peer in peer_trust_domains(bridge):
        with _refused("federation"):
            docs[CLUSTER_FEDERATED_TRUST_DOMAINS] = istio.render_cluster_federated_trust_domain(
                istio.FederatedTrustDomainParams(peer=peer, class_name=bridge.spire.class_name)
            )


def _render_spire(
    bridge: Bridge, docs: dict[str, Document], session_hashes: Mapping[str, str] | None
) -> list[str]:
    params = entries_params(bridge)
    with _refused("externalApps (SPIRE entries)"):
        docs[ENTRIES_SCRIPT] = istio.render_entries_script(params, prog="register-entries.sh")
        needed = {e.cas_session for e in params.entries if e.cas_session is not None}
        hashes = dict(session_hashes or {})
        if needed <= set(hashes):
            docs[ENTRIES_JSON] = istio.render_entries_json(params, hashes)
    unknown = sorted(set(session_hashes or {}) - {a.scone.qualified_session_name for a in bridge.apps})
    if unknown:
        raise SpecError([f"--session-hash: {u!r}: no external app has this CAS session" for u in unknown])
    sessions = svidstore_sessions(bridge)
    with _refused("spire"):
        hcl = scone.render_svidstore_hcl(svidstore_config(bridge))
        docs[SVIDSTORE_HCL] = hcl.text
        for kind, path in SVIDSTORE_TEMPLATES.items():
            docs[path] = SESSION_TEMPLATES[kind](sessions)
    return [f"spire: {w}" for w in hcl.warnings]


def _render_app(bridge: Bridge, index: int, app: ExternalApp, docs: dict[str, Document]) -> list[str]:
    where = f"externalApps[{index}] ({app.name})"
    with _refused(where):
        if app.mode == "network-shield":
            rendered = scone.render_network_shield_session(network_shield_app(bridge, app))
        else:
            gapp = ghostunnel_app(bridge, app)
            rendered = scone.render_ghostunnel_session(gapp)
            lines = [scone.ghostunnel_command_line(t, gapp.binary) for t in gapp.tunnels]
            docs[ghostunnel_command_path(app.name)] = "\n".join(lines) + "\n"
    docs[session_path(app.name)] = rendered.session
    return [f"{where}: {w}" for w in rendered.warnings]


def render(bridge: Bridge, *, session_hashes: Mapping[str, str] | None = None) -> Rendering:
    """Every artifact of ``bridge`` (layout in the module docstring).

    ``session_hashes`` maps CAS session names (``<casNamespace>/<sessionName>``) to the hashes
    ``scone session create`` printed; when it covers every app whose SVID goes to CAS,
    ``spire/entries.json`` is rendered too (the script takes the hashes at run time either way).
    """
    docs: dict[str, Document] = {}
    warnings: list[str] = []
    for index, service in enumerate(bridge.services):
        if bridge.needs_dns_names(service) and not bridge.carries_dns_names(service):
            callers = ", ".join(a.name for a in bridge.callers_of(service) if a.authenticates_by_dns_name)
            warnings.append(
                f"{_where_service(index, service)}: svidDnsNames: false, but {callers} authenticate it by "
                "DNS name: their TLS handshakes will fail ('meshbridge check' reports it)"
            )
    _render_istio(bridge, docs)
    warnings += _render_spire(bridge, docs, session_hashes)
    for index, app in enumerate(bridge.apps):
        warnings += _render_app(bridge, index, app, docs)
    docs[README] = render_readme(bridge, docs, warnings)
    ordered = {path: docs[path] for path in sorted(docs, key=lambda p: (p != README, p))}
    return Rendering(ordered, tuple(dict.fromkeys(warnings)))
