"""``meshbridge render``, ``check``, ``apply``, ``diff`` and the single-purpose generators (``istio``, …).

Thin: each command parses flags, calls the same library functions the tests call (``load_spec``,
``render``, ``check``, the :mod:`istio`/:mod:`scone` renderers) and prints. Documents go to stdout
(``-o yaml|json``; several Kubernetes objects in JSON are wrapped in a ``v1`` ``List`` so that
``kubectl apply -f -`` takes them), warnings to stderr as ``warning: …``. Invalid input raises
:class:`~bridge.errors.BridgeError` subclasses, mapped once by ``bridge.cli.main``: one ``error: …`` line
per problem, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bridge import flags
from bridge.check import check
from bridge.errors import SpecError
from bridge.render import render
from bridge.rendering import Document
from bridge.spec import load_spec
from bridge.writer import dumps, write_tree

EXIT_USAGE = 2

if TYPE_CHECKING:
    from bridge import apply as applying
    from bridge.kube import Cluster

    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _read_spec_arg(value: str) -> str | Path:
    if value == "-":
        return sys.stdin.read()
    return Path(value)


def _parse_hashes(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    problems = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            problems.append(f"--session-hash: {item!r}: must be SESSION=HASH (e.g. ns/app=<64 hex digits>)")
        else:
            out[name] = value
    if problems:
        raise SpecError(problems)
    return out


def cmd_render(args: argparse.Namespace) -> int:
    bridge = load_spec(_read_spec_arg(args.file))
    rendering = render(bridge, session_hashes=_parse_hashes(args.session_hash))
    written = write_tree(Path(args.output), rendering)
    _warn(rendering.warnings)
    print(f"{args.output}: wrote {len(written)} files; next: read {Path(args.output) / 'README.md'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    bridge = load_spec(_read_spec_arg(args.file))
    report = check(bridge)
    _warn(report.warnings)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.problems:
        return EXIT_USAGE
    print(
        f"ok: {len(bridge.services)} mesh service(s), {len(bridge.apps)} external app(s), "
        f"{report.documents} documents consistent"
    )
    return 0


def _load_plan(args: argparse.Namespace) -> applying.Plan:
    """The spec's objects to apply; the spec's bytes are hashed into the ``meshbridge.io/spec-hash`` label."""
    from bridge import apply as applying  # noqa: PLC0415 - only apply/diff load the kubernetes client

    source = _read_spec_arg(args.file)
    bridge = load_spec(source)
    raw = source.read_bytes() if isinstance(source, Path) else source.encode()
    return applying.plan(render(bridge), trust_domain=bridge.trust_domain, source=raw)


def _connect(args: argparse.Namespace) -> Cluster:
    from bridge.kube import Cluster  # noqa: PLC0415 - only apply/diff load the kubernetes client

    return Cluster.connect(kubeconfig=args.kubeconfig, context=args.context, timeout=args.request_timeout)


def cmd_apply(args: argparse.Namespace) -> int:
    plan = _load_plan(args)
    for line in plan.not_applied:
        print(line)
    from bridge import apply as applying  # noqa: PLC0415 - only apply/diff load the kubernetes client

    dry_run = args.dry_run == "server"
    with _connect(args) as cluster:
        changes = applying.apply(cluster, plan, dry_run=dry_run, prune=args.prune, force=args.force_conflicts)
    suffix = " (server dry run)" if dry_run else ""
    for change in changes:
        print(f"{change}{suffix}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    plan = _load_plan(args)
    from bridge import apply as applying  # noqa: PLC0415 - only apply/diff load the kubernetes client

    with _connect(args) as cluster:
        differences = applying.diff(cluster, plan, prune=args.prune)
    for difference in differences:
        sys.stdout.write(difference.text)
    return 1 if differences else 0


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", required=True, help="bridge spec (YAML), '-' for stdin")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: the current context)")
    p.add_argument(
        "--request-timeout", type=float, default=10.0, metavar="SECONDS", help="per API request (10)"
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="also delete objects meshbridge applied earlier for this bridge that the spec no longer renders",
    )


def _register_cluster(sub: Sub) -> None:
    p = sub.add_parser(
        "apply",
        help="server-side apply the spec's Kubernetes objects (not the IstioOperator: istioctl install -f)",
    )
    _cluster_flags(p)
    p.add_argument(
        "--dry-run",
        nargs="?",
        const="server",
        choices=("none", "server"),
        default="none",
        help="'server': the API server validates and admits everything, persists nothing",
    )
    p.add_argument(
        "--force-conflicts", action="store_true", help="take over fields another field manager owns"
    )
    p.set_defaults(func=cmd_apply)
    p = sub.add_parser(
        "diff", help="what 'apply' would change, as a unified diff (exit 1 when there are differences)"
    )
    _cluster_flags(p)
    p.set_defaults(func=cmd_diff)


def _print_docs(docs: list[dict[str, object]], fmt: str) -> None:
    doc: Document = docs if len(docs) != 1 else docs[0]
    if fmt == "json" and len(docs) > 1:
        doc = {"apiVersion": "v1", "kind": "List", "items": list(docs)}
    sys.stdout.write(dumps(doc, fmt))


def _runner(build: Callable[[argparse.Namespace], flags.Output]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        out = build(args)
        _warn(out.warnings)
        if isinstance(out.documents, str):
            sys.stdout.write(out.documents)
        else:
            _print_docs(out.documents, args.output)
        return 0

    return run


def _fmt(p: argparse.ArgumentParser, default: str = "yaml") -> None:
    p.add_argument("-o", "--output", choices=("yaml", "json"), default=default, help=f"format ({default})")


def _register_istio(sub: Sub) -> None:
    istio = sub.add_parser("istio", help="Istio documents without a spec")
    isub = istio.add_subparsers(dest="istio_command", metavar="WHAT", required=True)
    p = isub.add_parser(
        "overlay", help="the IstioOperator overlay putting the mesh on SPIRE (istioctl install -f -)"
    )
    p.add_argument("--trust-domain", required=True)
    p.add_argument(
        "--sds-image", default=flags.DEFAULT_SDS_IMAGE, help="image running 'meshbridge sds serve'"
    )
    p.add_argument("--istio-namespace", default="istio-system")
    p.add_argument("--revision")
    p.add_argument(
        "--workload-api-socket",
        default=flags.DEFAULT_WORKLOAD_API_SOCKET,
        help="SPIRE agent socket as the SPIFFE CSI driver mounts it in the SDS container",
    )
    p.add_argument("--no-ingress-gateway", action="store_true", help="render no gateway component")
    _fmt(p)
    p.set_defaults(func=_runner(flags.istio_overlay))
    p = isub.add_parser(
        "policy", help="STRICT PeerAuthentication + ALLOW AuthorizationPolicy for one service"
    )
    p.add_argument("--service", required=True, help="Kubernetes Service name")
    p.add_argument("--namespace", default="default")
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pod label selecting the service's pods (repeatable; default app=<service>)",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        required=True,
        metavar="SPIFFE_ID",
        help="external SPIFFE ID admitted (repeatable)",
    )
    p.add_argument(
        "--allow-namespace",
        action="append",
        default=[],
        metavar="NS",
        help="in-mesh namespace still admitted (repeatable)",
    )
    p.add_argument(
        "--allow-principal",
        action="append",
        default=[],
        metavar="SPIFFE_ID",
        help="in-mesh SPIFFE ID still admitted (repeatable)",
    )
    p.add_argument("--istio-namespace", default="istio-system", help="root namespace (PeerAuthentication)")
    p.add_argument("--no-peer-authentication", action="store_true", help="only the AuthorizationPolicy")
    _fmt(p)
    p.set_defaults(func=_runner(flags.istio_policy))


def _register_spire(sub: Sub) -> None:
    spire = sub.add_parser("spire", help="SPIRE registration and SVIDStore configuration without a spec")
    ssub = spire.add_subparsers(dest="spire_command", metavar="WHAT", required=True)
    p = ssub.add_parser("entries", help="registration entry of one external app (spire-server entry create)")
    p.add_argument("--spiffe-id", required=True)
    p.add_argument("--parent-id", required=True, help="SPIFFE ID of the agent running the SVIDStore plugin")
    p.add_argument("--cas-session", help="the app's CAS session <ns>/<name> (SVID stored into CAS)")
    p.add_argument("--session-hash", help="hash 'scone session create' printed (needed for JSON/YAML)")
    p.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="TYPE:VALUE",
        help="Workload API selector (when the SVID is not stored into CAS)",
    )
    p.add_argument("--plugin", choices=flags.PLUGINS, default=flags.PLUGINS[0])
    p.add_argument("--ttl", default="1h", help="X509-SVID TTL (duration)")
    p.add_argument("--script", action="store_true", help="print the entry create script instead of JSON")
    _fmt(p, default="json")
    p.set_defaults(func=_runner(flags.spire_entries))
    p = ssub.add_parser("svidstore", help="the agent's SVIDStore HCL block, or one of its session templates")
    p.add_argument("--cas", required=True, help="https://host:port of CAS")
    p.add_argument("--client-cert", required=True, help="CAS client certificate file (on the agent's host)")
    p.add_argument("--client-key", required=True, help="CAS client key file (on the agent's host)")
    p.add_argument("--trust-anchor", required=True, help="CAS identity certificate file")
    p.add_argument("--plugin", choices=flags.PLUGINS, default=flags.PLUGINS[0])
    # Persistent: the plugin cannot recover lost predecessor hashes, and /run is wiped at boot.
    p.add_argument("--templates-dir", default="/var/lib/spire/svidstore/templates")
    p.add_argument("--predecessor-dir", default="/var/lib/spire/svidstore/predecessors")
    p.add_argument("--bundle-session", default="spire-bundle")
    p.add_argument("--federated-bundles-session", default="spire-federated-bundles")
    p.add_argument(
        "--template",
        choices=("svid", "bundle", "federated-bundles"),
        help="print this session template instead of the HCL block",
    )
    p.set_defaults(func=_runner(flags.spire_svidstore), output="yaml")


def _register_scone(sub: Sub) -> None:
    scone = sub.add_parser("scone", help="SCONE CAS sessions without a spec")
    csub = scone.add_subparsers(dest="scone_command", metavar="WHAT", required=True)
    for name, helptext in (
        ("network-shield", "CAS session of an app whose TLS to the mesh is added by the network shield"),
        ("ghostunnel", "CAS session (or command line) of a confidential Ghostunnel in client mode"),
    ):
        p = csub.add_parser(name, help=helptext)
        p.add_argument("--session", required=True, help="CAS session name <namespace>/<name>")
        p.add_argument("--mrenclave", action="append", default=[], required=True, help="repeatable")
        p.add_argument(
            "--target",
            action="append",
            default=[],
            required=True,
            metavar="SVC.NS:PORT[=SPIFFE_ID]",
            help="mesh service (repeatable); SPIFFE ID defaults to Istio's .../ns/NS/sa/SVC",
        )
        p.add_argument("--trust-domain", help="for targets without an explicit SPIFFE ID")
        p.add_argument("--cluster-domain", default="cluster.local")
        p.add_argument("--tolerate", action="append", default=[], choices=flags.TOLERATIONS)
        p.add_argument("--pwd", default="/")
        p.add_argument("--bundle-session", default="spire-bundle")
        p.add_argument("--plugin", choices=flags.PLUGINS, default=flags.PLUGINS[0])
        _fmt(p)
        if name == "network-shield":
            p.add_argument("--service", required=True, help="SCONE service name")
            p.add_argument("--command", required=True, help="the app's command inside the enclave")
            p.add_argument(
                "--no-server-auth",
                action="store_true",
                help="INSECURE: do not authenticate the mesh service (the thesis's setting)",
            )
            p.set_defaults(func=_runner(flags.scone_network_shield))
        else:
            p.add_argument(
                "--listen-port",
                action="append",
                type=int,
                default=[],
                help="local plain port per target, in order (default: the target's port)",
            )
            p.add_argument("--cert-source", choices=("files", "workload-api"), default="files")
            p.add_argument("--workload-api-addr", default="unix:///run/spire/sockets/agent.sock")
            p.add_argument("--cert-dir", default="/run/meshbridge/tls")
            p.add_argument("--timed-reload", default="1m")
            p.add_argument("--status-port", type=int, default=6060)
            p.add_argument("--binary", default="/usr/bin/ghostunnel")
            p.add_argument(
                "--command-line",
                action="store_true",
                help="print the plain command line(s) for running Ghostunnel outside CAS",
            )
            p.set_defaults(func=_runner(flags.scone_ghostunnel))


def register(subparsers: Sub) -> None:
    """Add ``render``, ``check``, ``apply``, ``diff``, ``istio``, ``spire``, ``scone`` to ``meshbridge``."""
    p = subparsers.add_parser("render", help="write every artifact of a bridge spec into a directory")
    p.add_argument("-f", "--file", required=True, help="bridge spec (YAML), '-' for stdin")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="output directory (replaced atomically; never half-written)",
    )
    p.add_argument(
        "--session-hash",
        action="append",
        default=[],
        metavar="SESSION=HASH",
        help="CAS session hash from 'scone session create' (repeatable): adds spire/entries.json",
    )
    p.set_defaults(func=cmd_render)
    p = subparsers.add_parser("check", help="validate a bridge spec and cross-check its artifacts")
    p.add_argument("-f", "--file", required=True, help="bridge spec (YAML), '-' for stdin")
    p.set_defaults(func=cmd_check)
    _register_cluster(subparsers)
    _register_istio(subparsers)
    _register_spire(subparsers)
    _register_scone(subparsers)


__all__ = ["cmd_apply", "cmd_check", "cmd_diff", "cmd_render", "register"]
