"""``meshbridge``: one command line, thin.

Each subsystem registers its own subcommands (``register(subparsers)``) and sets ``func`` on its parser:
a callable taking the parsed namespace and returning the exit code. The bridge's own commands (``render``,
``check``, ``apply``, ``diff``, ``istio``, ``spire``, ``scone``) are declared here, and only here is their
namespace read: each becomes its :mod:`bridge.params` object, which the command functions of
:mod:`bridge.commands` take (tests call them with the same objects, in-process); flags left out take the
dataclasses' defaults. This module also configures logging once (structlog: console on a TTY, JSON
otherwise) and maps package errors to one ``error: <message>`` line on stderr and exit code 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TextIO, TypeVar

import structlog

from bridge import commands
from bridge import demo as demo_command
from bridge.errors import BridgeError, SpecError
from bridge.model import CERT_SOURCES, SVIDSTORE_PLUGINS, TOLERATIONS
from bridge.params import (
    ApplyParams,
    CheckParams,
    DiffParams,
    IstioOverlayParams,
    IstioPolicyParams,
    RenderParams,
    SconeAppParams,
    SconeGhostunnelParams,
    SconeNetworkShieldParams,
    SpireEntriesParams,
    SpireSvidstoreParams,
)
from istio.errors import IstioError
from scone.errors import SconeError
from sds_server import command as sds_command
from sds_server.errors import SdsError
from sds_server.workload_api import command as workload_api_command
from sds_server.workload_api.errors import WorkloadApiError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
P = TypeVar("P")
D = TypeVar("D", bound="DataclassInstance")


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once for the process: ``console`` on a TTY, ``json`` otherwise."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


PACKAGE_ERRORS: tuple[type[Exception], ...] = (
    BridgeError,
    IstioError,
    SconeError,
    SdsError,
    WorkloadApiError,
)


# --- the bridge's commands: flags declared, then read once into their params object --------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Typed(Generic[P]):
    """``func`` of a bridge command: ``parse`` turns the namespace into the command's params (here, and
    nowhere else), ``run`` is the command function taking them. Tests check ``parse`` against the flags."""

    parse: Callable[[argparse.Namespace], P]
    run: Callable[[P], int]

    def __call__(self, args: argparse.Namespace) -> int:
        return self.run(self.parse(args))


def _default(cls: type[DataclassInstance], name: str) -> object:
    """The params dataclass's default: a flag left out means what a test leaving the field out means."""
    (found,) = (f.default for f in dataclasses.fields(cls) if f.name == name)
    return found


def _file(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--file", required=True, help="bridge spec (YAML), '-' for stdin")


def _fmt(p: argparse.ArgumentParser, cls: type[DataclassInstance]) -> None:
    default = _default(cls, "output")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default=default, help=f"format ({default})")


def _session_hashes(items: Sequence[str]) -> dict[str, str]:
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


def _reads(
    cls: type[D], **convert: Callable[[argparse.Namespace], object]
) -> Callable[[argparse.Namespace], D]:
    """Parse the namespace into ``cls``: each field is read from the flag of the same ``dest`` (a repeatable
    flag's list becomes a tuple), except the fields in ``convert``, which say how they are computed."""
    make: Callable[..., D] = cls

    def parse(a: argparse.Namespace) -> D:
        values = {
            f.name: convert[f.name](a) if f.name in convert else _frozen(getattr(a, f.name))
            for f in dataclasses.fields(cls)
        }
        return make(**values)

    return parse


def _frozen(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _register_spec_commands(sub: Sub) -> None:
    p = sub.add_parser("render", help="write every artifact of a bridge spec into a directory")
    _file(p)
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
    p.set_defaults(
        func=_Typed(
            _reads(RenderParams, session_hashes=lambda a: _session_hashes(a.session_hash)),
            commands.cmd_render,
        )
    )
    p = sub.add_parser("check", help="validate a bridge spec and cross-check its artifacts")
    _file(p)
    p.set_defaults(func=_Typed(_reads(CheckParams), commands.cmd_check))
    apply = sub.add_parser(
        "apply",
        help="server-side apply the spec's Kubernetes objects (not the IstioOperator: istioctl install -f)",
    )
    diff = sub.add_parser(
        "diff", help="what 'apply' would change, as a unified diff (exit 1 when there are differences)"
    )
    for p in (apply, diff):
        _file(p)
        p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
        p.add_argument("--context", help="kubeconfig context (default: the current context)")
        p.add_argument(
            "--request-timeout",
            type=float,
            default=_default(DiffParams, "request_timeout"),
            metavar="SECONDS",
            help="per API request (10)",
        )
        p.add_argument(
            "--prune",
            action="store_true",
            help="also delete objects meshbridge applied earlier for this bridge that the spec no longer "
            "renders",
        )
    apply.add_argument(
        "--dry-run",
        nargs="?",
        const="server",
        choices=("none", "server"),
        default="none",
        help="'server': the API server validates and admits everything, persists nothing",
    )
    apply.add_argument(
        "--force-conflicts", action="store_true", help="take over fields another field manager owns"
    )
    apply.set_defaults(
        func=_Typed(_reads(ApplyParams, dry_run=lambda a: a.dry_run == "server"), commands.cmd_apply)
    )
    diff.set_defaults(func=_Typed(_reads(DiffParams), commands.cmd_diff))


def _register_istio(sub: Sub) -> None:
    istio = sub.add_parser("istio", help="Istio documents without a spec")
    isub = istio.add_subparsers(dest="istio_command", metavar="WHAT", required=True)
    p = isub.add_parser(
        "overlay", help="the IstioOperator overlay putting the mesh on SPIRE (istioctl install -f -)"
    )
    p.add_argument("--trust-domain", required=True)
    p.add_argument(
        "--sds-image",
        default=_default(IstioOverlayParams, "sds_image"),
        help="image running 'meshbridge sds serve'",
    )
    p.add_argument("--istio-namespace", default=_default(IstioOverlayParams, "istio_namespace"))
    p.add_argument("--revision")
    p.add_argument(
        "--workload-api-socket",
        default=_default(IstioOverlayParams, "workload_api_socket"),
        help="SPIRE agent socket as the SPIFFE CSI driver mounts it in the SDS container",
    )
    p.add_argument("--no-ingress-gateway", action="store_true", help="render no gateway component")
    _fmt(p, IstioOverlayParams)
    p.set_defaults(
        func=_Typed(
            _reads(IstioOverlayParams, ingress_gateway=lambda a: not a.no_ingress_gateway),
            commands.cmd_istio_overlay,
        )
    )
    p = isub.add_parser(
        "policy", help="STRICT PeerAuthentication + ALLOW AuthorizationPolicy for one service"
    )
    p.add_argument("--service", required=True, help="Kubernetes Service name")
    p.add_argument("--namespace", default=_default(IstioPolicyParams, "namespace"))
    p.add_argument(
        "--label",
        dest="labels",
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
        dest="allow_namespaces",
        action="append",
        default=[],
        metavar="NS",
        help="in-mesh namespace still admitted (repeatable)",
    )
    p.add_argument(
        "--allow-principal",
        dest="allow_principals",
        action="append",
        default=[],
        metavar="SPIFFE_ID",
        help="in-mesh SPIFFE ID still admitted (repeatable)",
    )
    p.add_argument(
        "--istio-namespace",
        default=_default(IstioPolicyParams, "istio_namespace"),
        help="root namespace (PeerAuthentication)",
    )
    p.add_argument("--no-peer-authentication", action="store_true", help="only the AuthorizationPolicy")
    _fmt(p, IstioPolicyParams)
    p.set_defaults(
        func=_Typed(
            _reads(IstioPolicyParams, peer_authentication=lambda a: not a.no_peer_authentication),
            commands.cmd_istio_policy,
        )
    )


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
        dest="selectors",
        action="append",
        default=[],
        metavar="TYPE:VALUE",
        help="Workload API selector (when the SVID is not stored into CAS)",
    )
    p.add_argument("--plugin", choices=SVIDSTORE_PLUGINS, default=_default(SpireEntriesParams, "plugin"))
    p.add_argument("--ttl", default=_default(SpireEntriesParams, "ttl"), help="X509-SVID TTL (duration)")
    p.add_argument("--script", action="store_true", help="print the entry create script instead of JSON")
    _fmt(p, SpireEntriesParams)
    p.set_defaults(func=_Typed(_reads(SpireEntriesParams), commands.cmd_spire_entries))
    p = ssub.add_parser("svidstore", help="the agent's SVIDStore HCL block, or one of its session templates")
    p.add_argument("--cas", required=True, help="https://host:port of CAS")
    p.add_argument("--client-cert", required=True, help="CAS client certificate file (on the agent's host)")
    p.add_argument("--client-key", required=True, help="CAS client key file (on the agent's host)")
    p.add_argument("--trust-anchor", required=True, help="CAS identity certificate file")
    for name in ("plugin", "templates_dir", "predecessor_dir", "bundle_session", "federated_bundles_session"):
        choices = SVIDSTORE_PLUGINS if name == "plugin" else None
        default = _default(SpireSvidstoreParams, name)
        p.add_argument(f"--{name.replace('_', '-')}", choices=choices, default=default)
    p.add_argument(
        "--template",
        choices=("svid", "bundle", "federated-bundles"),
        help="print this session template instead of the HCL block",
    )
    p.set_defaults(func=_Typed(_reads(SpireSvidstoreParams), commands.cmd_spire_svidstore))


def _register_scone(sub: Sub) -> None:
    scone = sub.add_parser("scone", help="SCONE CAS sessions without a spec")
    csub = scone.add_subparsers(dest="scone_command", metavar="WHAT", required=True)
    app = _reads(SconeAppParams)
    for name, helptext in (
        ("network-shield", "CAS session of an app whose TLS to the mesh is added by the network shield"),
        ("ghostunnel", "CAS session (or command line) of a confidential Ghostunnel in client mode"),
    ):
        p = csub.add_parser(name, help=helptext)
        p.add_argument("--session", required=True, help="CAS session name <namespace>/<name>")
        p.add_argument(
            "--mrenclave",
            dest="mrenclaves",
            action="append",
            default=[],
            required=True,
            metavar="MRENCLAVE",
            help="repeatable",
        )
        p.add_argument(
            "--target",
            dest="targets",
            action="append",
            default=[],
            required=True,
            metavar="SVC.NS:PORT[=SPIFFE_ID]",
            help="mesh service (repeatable); SPIFFE ID defaults to Istio's .../ns/NS/sa/SVC",
        )
        p.add_argument("--trust-domain", help="for targets without an explicit SPIFFE ID")
        p.add_argument("--cluster-domain", default=_default(SconeAppParams, "cluster_domain"))
        p.add_argument("--tolerate", action="append", default=[], choices=TOLERATIONS)
        p.add_argument("--pwd", default=_default(SconeAppParams, "pwd"))
        p.add_argument("--bundle-session", default=_default(SconeAppParams, "bundle_session"))
        p.add_argument("--plugin", choices=SVIDSTORE_PLUGINS, default=_default(SconeAppParams, "plugin"))
        _fmt(p, SconeAppParams)
        if name == "network-shield":
            p.add_argument("--service", required=True, help="SCONE service name")
            p.add_argument("--command", required=True, help="the app's command inside the enclave")
            p.add_argument(
                "--no-server-auth",
                action="store_true",
                help="INSECURE: do not authenticate the mesh service (the thesis's setting)",
            )
            p.set_defaults(
                func=_Typed(
                    _reads(SconeNetworkShieldParams, app=app, server_auth=lambda a: not a.no_server_auth),
                    commands.cmd_scone_network_shield,
                )
            )
            continue
        p.add_argument(
            "--listen-port",
            dest="listen_ports",
            action="append",
            type=int,
            default=[],
            metavar="LISTEN_PORT",
            help="local plain port per target, in order (default: the target's port)",
        )
        p.add_argument(
            "--cert-source", choices=CERT_SOURCES, default=_default(SconeGhostunnelParams, "cert_source")
        )
        for flag in ("workload_api_addr", "cert_dir", "timed_reload", "status_port", "binary"):
            default = _default(SconeGhostunnelParams, flag)
            kind = int if flag == "status_port" else str
            p.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=default)
        p.add_argument(
            "--command-line",
            action="store_true",
            help="print the plain command line(s) for running Ghostunnel outside CAS",
        )
        p.set_defaults(func=_Typed(_reads(SconeGhostunnelParams, app=app), commands.cmd_scone_ghostunnel))


def _register_bridge(sub: Sub) -> None:
    """Add ``render``, ``check``, ``apply``, ``diff``, ``istio``, ``spire``, ``scone`` to ``meshbridge``."""
    _register_spec_commands(sub)
    _register_istio(sub)
    _register_spire(sub)
    _register_scone(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshbridge",
        description="SPIFFE identities from SPIRE (or an embedded Workload API) for Istio STRICT mTLS "
        "and SCONE confidential apps outside the mesh.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument(
        "--log-format", choices=("auto", "console", "json"), default="auto", help="log renderer"
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    registrars: Sequence[Callable[[Sub], None]] = (
        workload_api_command.register,
        sds_command.register,
        _register_bridge,
        demo_command.register,
    )
    for register in registrars:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return func(args)
    except PACKAGE_ERRORS as exc:
        if args.debug:
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
