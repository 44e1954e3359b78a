"""The single-purpose generators behind ``meshbridge istio|spire|scone …``: flags in, documents out.

For operators without a bridge spec. Every flag is validated with the same rules as the spec
(:mod:`bridge.names`, ``sds_server.spiffe_id``); every problem is reported at once as a
:class:`FlagError` (``--flag: value: rule``); renderer refusals are mapped to it too.
"""

from __future__ import annotations

import argparse
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

import istio
import scone
from bridge import names
from bridge.errors import SpecError
from bridge.model import SVIDSTORE_PLUGINS, TOLERATIONS
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

    def spiffe_id(self, flag: str, value: str) -> str:
        try:
            return str(SpiffeId.parse(value))
        except SpiffeIdError as exc:
            self.problems.append(f"{flag}: {exc}")
            return value

    def trust_domain(self, flag: str, value: str) -> str:
        try:
            return TrustDomain.parse(value).name
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


def _labels(f: _Flags, items: list[str], default_name: str) -> tuple[tuple[str, str], ...]:
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


def istio_overlay(args: argparse.Namespace) -> Output:
    f = _Flags()
    td = f.trust_domain("--trust-domain", args.trust_domain)
    f.check("--sds-image", args.sds_image, names.image_reference)
    f.check("--istio-namespace", args.istio_namespace, names.dns1123_label)
    if args.revision is not None:
        f.check("--revision", args.revision, names.dns1123_label)
    f.check("--workload-api-socket", args.workload_api_socket, names.absolute_path)
    f.done()
    mount, socket_name = posixpath.split(args.workload_api_socket)
    params = istio.OverlayParams(
        trust_domain=td,
        sds_image=args.sds_image,
        root_namespace=args.istio_namespace,
        revision=args.revision,
        gateways=() if args.no_ingress_gateway else (istio.Gateway(),),
        workload_api_mount=mount or "/",
        workload_api_socket_name=socket_name,
    )
    return _rendered(lambda: Output([istio.render_istio_operator(params)]))


def istio_policy(args: argparse.Namespace) -> Output:
    f = _Flags()
    f.check("--service", args.service, names.dns1035_label)
    f.check("--namespace", args.namespace, names.dns1123_label)
    f.check("--istio-namespace", args.istio_namespace, names.dns1123_label)
    labels = _labels(f, args.label, args.service)
    allowed = tuple(f.spiffe_id("--allow", v) for v in args.allow)
    principals = tuple(f.spiffe_id("--allow-principal", v) for v in args.allow_principal)
    namespaces = tuple(f.check("--allow-namespace", v, names.dns1123_label) for v in args.allow_namespace)
    f.done()
    service = istio.MeshService(
        name=args.service, namespace=args.namespace, service_account=args.service, port=1, pod_labels=labels
    )
    params = istio.AuthorizationParams(
        service=service, allowed_spiffe_ids=allowed, mesh_principals=principals, mesh_namespaces=namespaces
    )

    def build() -> Output:
        docs = [] if args.no_peer_authentication else [istio.render_peer_authentication(args.istio_namespace)]
        return Output([*docs, istio.render_authorization_policy(params)])

    return _rendered(build)


def spire_entries(args: argparse.Namespace) -> Output:
    f = _Flags()
    spiffe_id = f.spiffe_id("--spiffe-id", args.spiffe_id)
    parent = f.spiffe_id("--parent-id", args.parent_id)
    if args.cas_session is not None:
        f.check("--cas-session", args.cas_session, names.scone_session_name)
        if args.selector:
            f.problems.append(
                "--selector: only for entries whose SVID is not stored into CAS (no --cas-session)"
            )
    elif not args.selector:
        f.problems.append("--cas-session: required (or --selector for a Workload API entry)")
    selectors = []
    for item in args.selector:
        kind, sep, value = item.partition(":")
        if not sep or not kind or not value or " " in item:
            f.problems.append(f"--selector: {item!r}: must be TYPE:VALUE without spaces (e.g. unix:uid:1000)")
        selectors.append(istio.Selector(kind, value))
    ttl = 0
    if names.duration(f.check("--ttl", args.ttl, names.duration)) is None:
        ttl = int(names.duration_seconds(args.ttl))
    needs_hash = args.cas_session is not None and not args.script
    if needs_hash and args.session_hash is None:
        f.problems.append(
            "--session-hash: required for JSON/YAML entries with --cas-session: post the app's session with "
            "'scone session create' first (or use --script, which takes the hash when it runs)"
        )
    f.done()
    entry = istio.ExternalAppEntry(
        spiffe_id=spiffe_id,
        parent_id=parent,
        cas_session=args.cas_session,
        selectors=tuple(selectors),
        x509_svid_ttl=ttl,
    )
    params = istio.EntriesParams(entries=(entry,), plugin=args.plugin)
    if args.script:
        return _rendered(lambda: Output(istio.render_entries_script(params, prog="register-entries.sh")))
    hashes = {args.cas_session: args.session_hash} if args.cas_session is not None else {}
    return _rendered(lambda: Output([istio.render_entries_json(params, hashes)]))


def spire_svidstore(args: argparse.Namespace) -> Output:
    f = _Flags()
    for flag, value in (
        ("--client-cert", args.client_cert),
        ("--client-key", args.client_key),
        ("--trust-anchor", args.trust_anchor),
        ("--templates-dir", args.templates_dir),
        ("--predecessor-dir", args.predecessor_dir),
    ):
        f.check(flag, value, names.absolute_path)
    f.check("--bundle-session", args.bundle_session, names.scone_session_name)
    f.check("--federated-bundles-session", args.federated_bundles_session, names.scone_session_name)
    f.done()
    sessions = scone.SvidStoreSessions(
        plugin=args.plugin,
        bundle_session=args.bundle_session,
        federated_bundles_session=args.federated_bundles_session,
    )

    def build() -> Output:
        if args.template == "svid":
            return Output(scone.render_svid_session_template(sessions))
        if args.template == "bundle":
            return Output(scone.render_bundle_session_template(sessions))
        if args.template == "federated-bundles":
            return Output(scone.render_federated_bundles_session_template(sessions))
        hcl = scone.render_svidstore_hcl(
            scone.SvidStoreConfig(
                cas_address=args.cas,
                cas_client_certificate=args.client_cert,
                cas_client_key=args.client_key,
                trust_anchor_certificate=args.trust_anchor,
                sessions=sessions,
                cas_predecessor_dir=args.predecessor_dir,
                template_dir=args.templates_dir,
            )
        )
        return Output(hcl.text, tuple(str(w) for w in hcl.warnings))

    return _rendered(build)


def _targets(f: _Flags, args: argparse.Namespace) -> tuple[scone.MeshTarget, ...]:
    f.check("--cluster-domain", args.cluster_domain, names.dns1123_subdomain)
    td = f.trust_domain("--trust-domain", args.trust_domain) if args.trust_domain else None
    out = []
    for item in args.target:
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
                cluster_domain=args.cluster_domain,
            )
        )
    return tuple(out)


def _common(f: _Flags, args: argparse.Namespace) -> tuple[scone.Attestation, scone.SvidStoreSessions]:
    f.check("--session", args.session, names.scone_session_name)
    for value in args.mrenclave:
        f.check("--mrenclave", value, names.mrenclave)
    f.check("--pwd", args.pwd, names.absolute_path)
    f.check("--bundle-session", args.bundle_session, names.scone_session_name)
    return (
        scone.Attestation(tolerate=tuple(dict.fromkeys(args.tolerate))),
        scone.SvidStoreSessions(plugin=args.plugin, bundle_session=args.bundle_session),
    )


def scone_network_shield(args: argparse.Namespace) -> Output:
    f = _Flags()
    attestation, sessions = _common(f, args)
    targets = _targets(f, args)
    f.check("--service", args.service, names.scone_name)
    f.done()
    app = scone.NetworkShieldApp(
        session_name=args.session,
        service_name=args.service,
        command=args.command,
        mrenclaves=tuple(m.lower() for m in args.mrenclave),
        targets=targets,
        pwd=args.pwd,
        attestation=attestation,
        svidstore=sessions,
        server_auth=not args.no_server_auth,
    )

    def build() -> Output:
        rendered = scone.render_network_shield_session(app)
        return Output([rendered.session], tuple(str(w) for w in rendered.warnings))

    return _rendered(build)


def scone_ghostunnel(args: argparse.Namespace) -> Output:
    f = _Flags()
    attestation, sessions = _common(f, args)
    targets = _targets(f, args)
    if args.listen_port and len(args.listen_port) != len(args.target):
        f.problems.append("--listen-port: give one per --target, in the same order (or none)")
    f.check("--timed-reload", args.timed_reload, names.duration)
    f.check("--cert-dir", args.cert_dir, names.absolute_path)
    f.check("--binary", args.binary, names.absolute_path)
    f.done()
    listen = args.listen_port or [t.port for t in targets]
    files = scone.CertFiles(
        cert=f"{args.cert_dir}/svid.pem",
        key=f"{args.cert_dir}/svid-key.pem",
        cacert=f"{args.cert_dir}/bundle.pem",
    )
    tunnels = tuple(
        scone.GhostunnelTunnel(
            target=t,
            listen_port=port,
            cert_source=args.cert_source,
            files=files,
            workload_api_addr=args.workload_api_addr,
            timed_reload=args.timed_reload,
            status_port=args.status_port + i,
        )
        for i, (t, port) in enumerate(zip(targets, listen, strict=True))
    )
    app = scone.GhostunnelApp(
        session_name=args.session,
        mrenclaves=tuple(m.lower() for m in args.mrenclave),
        tunnels=tunnels,
        binary=args.binary,
        pwd=args.pwd,
        attestation=attestation,
        svidstore=sessions,
    )

    def build() -> Output:
        if args.command_line:
            lines = [scone.ghostunnel_command_line(t, args.binary) for t in tunnels]
            warnings = [str(w) for t in tunnels for w in scone.ghostunnel_warnings(t)]
            return Output("\n".join(lines) + "\n", tuple(warnings))
        rendered = scone.render_ghostunnel_session(app)
        return Output([rendered.session], tuple(str(w) for w in rendered.warnings))

    return _rendered(build)
