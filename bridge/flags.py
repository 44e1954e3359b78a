"""The single-purpose generators behind ``meshbridge istio|spire|scone …``: parameters in, documents out.

For operators without a bridge spec. Each generator takes its :mod:`bridge.params` object (built by
``bridge.cli`` from the flags, or by a test), validates every field with the same rules as the spec
(:mod:`bridge.names`, ``sds_server.spiffe_id``) and reports every problem at once as a :class:`FlagError`
(``--flag: 'value': rule``, named by the flag the value came from); renderer refusals are mapped to it too.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass

import istio
import scone
from bridge import names
from bridge.errors import SpecError
from bridge.model import SVIDSTORE_PLUGINS, TOLERATIONS, GhostunnelSettings
from bridge.params import (
    IstioOverlayParams,
    IstioPolicyParams,
    SconeAppParams,
    SconeGhostunnelParams,
    SconeNetworkShieldParams,
    SpireEntriesParams,
    SpireSvidstoreParams,
)
from bridge.render import SESSION_TEMPLATES, ghostunnel_tunnels
from bridge.spec import DEFAULT_SDS_IMAGE, DEFAULT_WORKLOAD_API_SOCKET
from sds_server.errors import SpiffeIdError
from sds_server.spiffe_id import SpiffeId, TrustDomain

__all__ = [
    "DEFAULT_SDS_IMAGE",
    "DEFAULT_WORKLOAD_API_SOCKET",
    "PLUGINS",
    "TOLERATIONS",
    "FlagError",
    "Output",
    "istio_overlay",
    "istio_policy",
    "scone_ghostunnel",
    "scone_network_shield",
    "spire_entries",
    "spire_svidstore",
]

PLUGINS: tuple[str, ...] = SVIDSTORE_PLUGINS


class FlagError(SpecError):
    """Command-line flags of a single-purpose command are invalid (every problem listed)."""


@dataclass(frozen=True, slots=True)
class Output:
    """What a command prints: Kubernetes-style documents (``-o yaml|json``) or text, plus warnings."""

    documents: list[dict[str, object]] | str
    warnings: tuple[str, ...] = ()


class _Flags:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, flag: str, value: str, rule: Callable[[str], str | None]) -> str:
        problem = rule(value)
        if problem is not None:
            self.problems.append(f"{flag}: {value!r}: {problem}")
        return value

    def spiffe_id(self, flag: str, value: str, parse: Callable[[str], object] = SpiffeId.parse) -> str:
        """``value`` as ``parse`` (``SpiffeId.parse`` or ``TrustDomain.parse``) normalises it."""
        try:
            return str(parse(value))
        except SpiffeIdError as exc:
            self.problems.append(f"{flag}: {exc}")
            return value

    def done(self) -> None:
        if self.problems:
            raise FlagError(self.problems)


def _rendered(call: Callable[[], Output]) -> Output:
    try:
        return call()
    except (istio.IstioError, scone.SconeError) as exc:
        raise FlagError(str(exc).splitlines()) from exc


def _labels(f: _Flags, items: tuple[str, ...], default_name: str) -> tuple[tuple[str, str], ...]:
    if not items:
        return (("app", default_name),)
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            f.problems.append(f"--label: {item!r}: must be KEY=VALUE")
            continue
        f.check("--label", key, names.label_key)
        f.check("--label", value, names.label_value)
        out.append((key, value))
    return tuple(sorted(out))


def istio_overlay(params: IstioOverlayParams) -> Output:
    f = _Flags()
    td = f.spiffe_id("--trust-domain", params.trust_domain, TrustDomain.parse)
    f.check("--sds-image", params.sds_image, names.image_reference)
    f.check("--istio-namespace", params.istio_namespace, names.dns1123_label)
    if params.revision is not None:
        f.check("--revision", params.revision, names.dns1123_label)
    f.check("--workload-api-socket", params.workload_api_socket, names.absolute_path)
    f.done()
    mount, socket_name = posixpath.split(params.workload_api_socket)
    overlay = istio.OverlayParams(
        trust_domain=td,
        sds_image=params.sds_image,
        root_namespace=params.istio_namespace,
        revision=params.revision,
        gateways=(istio.Gateway(),) if params.ingress_gateway else (),
        workload_api_mount=mount or "/",
        workload_api_socket_name=socket_name,
    )
    return _rendered(lambda: Output([istio.render_istio_operator(overlay)]))


def istio_policy(params: IstioPolicyParams) -> Output:
    f = _Flags()
    f.check("--service", params.service, names.dns1035_label)
    f.check("--namespace", params.namespace, names.dns1123_label)
    f.check("--istio-namespace", params.istio_namespace, names.dns1123_label)
    labels = _labels(f, params.labels, params.service)
    allowed = tuple(f.spiffe_id("--allow", v) for v in params.allow)
    principals = tuple(f.spiffe_id("--allow-principal", v) for v in params.allow_principals)
    namespaces = tuple(f.check("--allow-namespace", v, names.dns1123_label) for v in params.allow_namespaces)
    f.done()
    service = istio.MeshService(
        name=params.service,
        namespace=params.namespace,
        service_account=params.service,
        port=1,
        pod_labels=labels,
    )
    policy = istio.AuthorizationParams(
        service=service, allowed_spiffe_ids=allowed, mesh_principals=principals, mesh_namespaces=namespaces
    )

    def build() -> Output:
        docs = (
            [istio.render_peer_authentication(params.istio_namespace)] if params.peer_authentication else []
        )
        return Output([*docs, istio.render_authorization_policy(policy)])

    return _rendered(build)


def spire_entries(params: SpireEntriesParams) -> Output:
    f = _Flags()
    spiffe_id = f.spiffe_id("--spiffe-id", params.spiffe_id)
    parent = f.spiffe_id("--parent-id", params.parent_id)
    if params.cas_session is not None:
        f.check("--cas-session", params.cas_session, names.scone_session_name)
        if params.selectors:
            f.problems.append(
                "--selector: only for entries whose SVID is not stored into CAS (no --cas-session)"
            )
    elif not params.selectors:
        f.problems.append("--cas-session: required (or --selector for a Workload API entry)")
    selectors = []
    for item in params.selectors:
        kind, sep, value = item.partition(":")
        if not sep or not kind or not value or " " in item:
            f.problems.append(f"--selector: {item!r}: must be TYPE:VALUE without spaces (e.g. unix:uid:1000)")
        selectors.append(istio.Selector(kind, value))
    f.check("--ttl", params.ttl, names.duration)
    needs_hash = params.cas_session is not None and not params.script
    if needs_hash and params.session_hash is None:
        f.problems.append(
            "--session-hash: required for JSON/YAML entries with --cas-session: post the app's session with "
            "'scone session create' first (or use --script, which takes the hash when it runs)"
        )
    f.done()
    entry = istio.ExternalAppEntry(
        spiffe_id=spiffe_id,
        parent_id=parent,
        cas_session=params.cas_session,
        selectors=tuple(selectors),
        x509_svid_ttl=int(names.duration_seconds(params.ttl)),
    )
    entries = istio.EntriesParams(entries=(entry,), plugin=params.plugin)
    if params.script:
        return _rendered(lambda: Output(istio.render_entries_script(entries, prog="register-entries.sh")))
    hashes = {}
    if params.cas_session is not None and params.session_hash is not None:  # required here: checked above
        hashes[params.cas_session] = params.session_hash
    return _rendered(lambda: Output([istio.render_entries_json(entries, hashes)]))


def spire_svidstore(params: SpireSvidstoreParams) -> Output:
    f = _Flags()
    for flag, value in (
        ("--client-cert", params.client_cert),
        ("--client-key", params.client_key),
        ("--trust-anchor", params.trust_anchor),
        ("--templates-dir", params.templates_dir),
        ("--predecessor-dir", params.predecessor_dir),
    ):
        f.check(flag, value, names.absolute_path)
    f.check("--bundle-session", params.bundle_session, names.scone_session_name)
    f.check("--federated-bundles-session", params.federated_bundles_session, names.scone_session_name)
    f.done()
    sessions = scone.SvidStoreSessions(
        plugin=params.plugin,
        bundle_session=params.bundle_session,
        federated_bundles_session=params.federated_bundles_session,
    )

    def build() -> Output:
        if params.template is not None:
            return Output(SESSION_TEMPLATES[params.template.replace("-", "_")](sessions))
        hcl = scone.render_svidstore_hcl(
            scone.SvidStoreConfig(
                cas_address=params.cas,
                cas_client_certificate=params.client_cert,
                cas_client_key=params.client_key,
                trust_anchor_certificate=params.trust_anchor,
                sessions=sessions,
                cas_predecessor_dir=params.predecessor_dir,
                template_dir=params.templates_dir,
            )
        )
        return Output(hcl.text, tuple(str(w) for w in hcl.warnings))

    return _rendered(build)


def _targets(f: _Flags, params: SconeAppParams) -> tuple[scone.MeshTarget, ...]:
    f.check("--cluster-domain", params.cluster_domain, names.dns1123_subdomain)
    td = (
        f.spiffe_id("--trust-domain", params.trust_domain, TrustDomain.parse) if params.trust_domain else None
    )
    out = []
    for item in params.targets:
        address, _, spiffe_id = item.partition("=")
        host, sep, port_text = address.rpartition(":")
        name, dot, namespace = host.partition(".")
        if not sep or not dot or not port_text.isdigit():
            f.problems.append(f"--target: {item!r}: must be SVC.NAMESPACE:PORT[=SPIFFE_ID]")
            continue
        f.check("--target", name, names.dns1035_label)
        f.check("--target", namespace, names.dns1123_label)
        port = int(port_text)
        if names.port(port) is not None:
            f.problems.append(f"--target: {item!r}: port must be between 1 and 65535")
        if spiffe_id:
            spiffe_id = f.spiffe_id("--target", spiffe_id)
        elif td is None:
            f.problems.append(f"--target: {item!r}: give =SPIFFE_ID or --trust-domain")
        else:
            spiffe_id = f"spiffe://{td}/ns/{namespace}/sa/{name}"
        out.append(
            scone.MeshTarget(
                name=name,
                namespace=namespace,
                port=port,
                spiffe_id=spiffe_id,
                cluster_domain=params.cluster_domain,
            )
        )
    return tuple(out)


def _common(f: _Flags, params: SconeAppParams) -> tuple[scone.Attestation, scone.SvidStoreSessions]:
    f.check("--session", params.session, names.scone_session_name)
    for value in params.mrenclaves:
        f.check("--mrenclave", value, names.mrenclave)
    f.check("--pwd", params.pwd, names.absolute_path)
    f.check("--bundle-session", params.bundle_session, names.scone_session_name)
    return (
        scone.Attestation(tolerate=tuple(dict.fromkeys(params.tolerate))),
        scone.SvidStoreSessions(plugin=params.plugin, bundle_session=params.bundle_session),
    )


def scone_network_shield(params: SconeNetworkShieldParams) -> Output:
    f = _Flags()
    attestation, sessions = _common(f, params.app)
    targets = _targets(f, params.app)
    f.check("--service", params.service, names.scone_name)
    f.done()
    app = scone.NetworkShieldApp(
        session_name=params.app.session,
        service_name=params.service,
        command=params.command,
        mrenclaves=tuple(m.lower() for m in params.app.mrenclaves),
        targets=targets,
        pwd=params.app.pwd,
        attestation=attestation,
        svidstore=sessions,
        server_auth=params.server_auth,
    )

    def build() -> Output:
        rendered = scone.render_network_shield_session(app)
        return Output([rendered.session], tuple(str(w) for w in rendered.warnings))

    return _rendered(build)


def scone_ghostunnel(params: SconeGhostunnelParams) -> Output:
    f = _Flags()
    attestation, sessions = _common(f, params.app)
    targets = _targets(f, params.app)
    if params.listen_ports and len(params.listen_ports) != len(params.app.targets):
        f.problems.append("--listen-port: give one per --target, in the same order (or none)")
    f.check("--timed-reload", params.timed_reload, names.duration)
    f.check("--cert-dir", params.cert_dir, names.absolute_path)
    f.check("--binary", params.binary, names.absolute_path)
    f.done()
    settings = GhostunnelSettings(
        binary=params.binary,
        cert_source=params.cert_source,
        workload_api_addr=params.workload_api_addr,
        workload_api_selectors=(),
        cert_dir=params.cert_dir,
        timed_reload=params.timed_reload,
        status_port=params.status_port,
    )
    listen = params.listen_ports or tuple(t.port for t in targets)
    tunnels = ghostunnel_tunnels(settings, zip(targets, listen, strict=True))
    app = scone.GhostunnelApp(
        session_name=params.app.session,
        mrenclaves=tuple(m.lower() for m in params.app.mrenclaves),
        tunnels=tunnels,
        binary=params.binary,
        pwd=params.app.pwd,
        attestation=attestation,
        svidstore=sessions,
    )

    def build() -> Output:
        if params.command_line:
            lines = [scone.ghostunnel_command_line(t, params.binary) for t in tunnels]
            warnings = [str(w) for t in tunnels for w in scone.ghostunnel_warnings(t)]
            return Output("\n".join(lines) + "\n", tuple(warnings))
        rendered = scone.render_ghostunnel_session(app)
        return Output([rendered.session], tuple(str(w) for w in rendered.warnings))

    return _rendered(build)
