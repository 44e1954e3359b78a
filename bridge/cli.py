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
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TextIO, TypeVar

import structlog

from bridge import commands
from bridge import demo as demo_command
from bridge.errors import BridgeError, SpecError
from bridge.params import (
    ApplyParams,
    CheckParams,
    ClusterParams,
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


class _Flags:
    """Adds flags to ``parser``, each for the field of ``cls`` of the same name (its ``dest``), shaped by
    the field: required without a default, else the field's default (a flag left out means what a test
    leaving the field out means); a ``bool`` is a switch (``--no-<name>`` when it defaults to true); a
    tuple is a repeatable flag named in the singular; a ``Literal`` gives the choices, ``int``/``float``
    the type."""

    def __init__(self, parser: argparse.ArgumentParser, cls: type[DataclassInstance]) -> None:
        self._parser = parser
        self._hints = typing.get_type_hints(cls)
        self._defaults = {f.name: f.default for f in dataclasses.fields(cls)}

    def __call__(
        self, name: str, text: str | None = None, *, short: str | None = None, metavar: str | None = None
    ) -> None:
        hint, default = self._hints[name], self._defaults[name]
        flag = name
        options: dict[str, Any] = {"dest": name, "help": text}
        if hint is bool:
            flag = f"no_{name}" if default else name
            options["action"] = "store_false" if default else "store_true"
        else:
            if default is dataclasses.MISSING:
                options["required"] = True
            else:
                options["default"] = default
            if typing.get_origin(hint) is tuple:
                flag, hint = name.removesuffix("s"), typing.get_args(hint)[0]
                options.update(action="append", default=[])
            if hint in (int, float):
                options["type"] = hint
            choices = _literal_values(hint)
            if choices:
                options["choices"] = choices
            else:
                options["metavar"] = metavar or flag.upper()
        self._parser.add_argument(*([short] if short else []), f"--{flag.replace('_', '-')}", **options)


def _literal_values(hint: object) -> tuple[object, ...]:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) type; ``()`` for other types."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return tuple(v for arg in typing.get_args(hint) for v in _literal_values(arg))


_FORMAT = "format (%(default)s)"  # argparse fills in the field's default


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


def _command(
    p: argparse.ArgumentParser,
    cls: type[D],
    run: Callable[[D], int],
    **convert: Callable[[argparse.Namespace], object],
) -> None:
    p.set_defaults(func=_Typed(_reads(cls, **convert), run))


def _register_spec_commands(sub: Sub) -> None:
    render = sub.add_parser("render", help="write every artifact of a bridge spec into a directory")
    check = sub.add_parser("check", help="validate a bridge spec and cross-check its artifacts")
    apply = sub.add_parser(
        "apply",
        help="server-side apply the spec's Kubernetes objects (not the IstioOperator: istioctl install -f)",
    )
    diff = sub.add_parser(
        "diff", help="what 'apply' would change, as a unified diff (exit 1 when there are differences)"
    )
    for p in (render, check, apply, diff):
        _Flags(p, CheckParams)("file", "bridge spec (YAML), '-' for stdin", short="-f")
    _Flags(render, RenderParams)(
        "output", "output directory (replaced atomically; never half-written)", short="-o", metavar="DIR"
    )
    render.add_argument(
        "--session-hash",
        action="append",
        default=[],
        metavar="SESSION=HASH",
        help="CAS session hash from 'scone session create' (repeatable): adds spire/entries.json",
    )
    _command(
        render, RenderParams, commands.cmd_render, session_hashes=lambda a: _session_hashes(a.session_hash)
    )
    _command(check, CheckParams, commands.cmd_check)
    for p in (apply, diff):
        flag = _Flags(p, ClusterParams)
        flag("kubeconfig", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
        flag("context", "kubeconfig context (default: the current context)")
        flag("request_timeout", "per API request (10)", metavar="SECONDS")
        flag(
            "prune",
            "also delete objects meshbridge applied earlier for this bridge that the spec no longer renders",
        )
    apply.add_argument(
        "--dry-run",
        nargs="?",
        const="server",
        choices=("none", "server"),
        default="none",
        help="'server': the API server validates and admits everything, persists nothing",
    )
    _Flags(apply, ApplyParams)("force_conflicts", "take over fields another field manager owns")
    _command(apply, ApplyParams, commands.cmd_apply, dry_run=lambda a: a.dry_run == "server")
    _command(diff, DiffParams, commands.cmd_diff)


def _register_istio(sub: Sub) -> None:
    istio = sub.add_parser("istio", help="Istio documents without a spec")
    isub = istio.add_subparsers(dest="istio_command", metavar="WHAT", required=True)
    p = isub.add_parser(
        "overlay", help="the IstioOperator overlay putting the mesh on SPIRE (istioctl install -f -)"
    )
    flag = _Flags(p, IstioOverlayParams)
    flag("trust_domain")
    flag("sds_image", "image running 'meshbridge sds serve'")
    flag("istio_namespace")
    flag("revision")
    flag("workload_api_socket", "SPIRE agent socket as the SPIFFE CSI driver mounts it in the SDS container")
    flag("ingress_gateway", "render no gateway component")
    flag("output", _FORMAT, short="-o")
    _command(p, IstioOverlayParams, commands.cmd_istio_overlay)
    p = isub.add_parser(
        "policy", help="STRICT PeerAuthentication + ALLOW AuthorizationPolicy for one service"
    )
    flag = _Flags(p, IstioPolicyParams)
    flag("service", "Kubernetes Service name")
    flag("namespace")
    flag(
        "labels",
        "pod label selecting the service's pods (repeatable; default app=<service>)",
        metavar="KEY=VALUE",
    )
    flag("allow", "external SPIFFE ID admitted (repeatable)", metavar="SPIFFE_ID")
    flag("allow_namespaces", "in-mesh namespace still admitted (repeatable)", metavar="NS")
    flag("allow_principals", "in-mesh SPIFFE ID still admitted (repeatable)", metavar="SPIFFE_ID")
    flag("istio_namespace", "root namespace (PeerAuthentication)")
    flag("peer_authentication", "only the AuthorizationPolicy")
    flag("output", _FORMAT, short="-o")
    _command(p, IstioPolicyParams, commands.cmd_istio_policy)


def _register_spire(sub: Sub) -> None:
    spire = sub.add_parser("spire", help="SPIRE registration and SVIDStore configuration without a spec")
    ssub = spire.add_subparsers(dest="spire_command", metavar="WHAT", required=True)
    p = ssub.add_parser("entries", help="registration entry of one external app (spire-server entry create)")
    flag = _Flags(p, SpireEntriesParams)
    flag("spiffe_id")
    flag("parent_id", "SPIFFE ID of the agent running the SVIDStore plugin")
    flag("cas_session", "the app's CAS session <ns>/<name> (SVID stored into CAS)")
    flag("session_hash", "hash 'scone session create' printed (needed for JSON/YAML)")
    flag("selectors", "Workload API selector (when the SVID is not stored into CAS)", metavar="TYPE:VALUE")
    flag("plugin")
    flag("ttl", "X509-SVID TTL (duration)")
    flag("script", "print the entry create script instead of JSON")
    flag("output", _FORMAT, short="-o")
    _command(p, SpireEntriesParams, commands.cmd_spire_entries)
    p = ssub.add_parser("svidstore", help="the agent's SVIDStore HCL block, or one of its session templates")
    flag = _Flags(p, SpireSvidstoreParams)
    flag("cas", "https://host:port of CAS")
    flag("client_cert", "CAS client certificate file (on the agent's host)")
    flag("client_key", "CAS client key file (on the agent's host)")
    flag("trust_anchor", "CAS identity certificate file")
    for name in ("plugin", "templates_dir", "predecessor_dir", "bundle_session", "federated_bundles_session"):
        flag(name)
    flag("template", "print this session template instead of the HCL block")
    _command(p, SpireSvidstoreParams, commands.cmd_spire_svidstore)


def _register_scone(sub: Sub) -> None:
    scone = sub.add_parser("scone", help="SCONE CAS sessions without a spec")
    csub = scone.add_subparsers(dest="scone_command", metavar="WHAT", required=True)
    shield = csub.add_parser(
        "network-shield", help="CAS session of an app whose TLS to the mesh is added by the network shield"
    )
    tunnel = csub.add_parser(
        "ghostunnel", help="CAS session (or command line) of a confidential Ghostunnel in client mode"
    )
    for p in (shield, tunnel):
        flag = _Flags(p, SconeAppParams)
        flag("session", "CAS session name <namespace>/<name>")
        flag("mrenclaves", "repeatable")
        flag(
            "targets",
            "mesh service (repeatable); SPIFFE ID defaults to Istio's .../ns/NS/sa/SVC",
            metavar="SVC.NS:PORT[=SPIFFE_ID]",
        )
        flag("trust_domain", "for targets without an explicit SPIFFE ID")
        for name in ("cluster_domain", "tolerate", "pwd", "bundle_session", "plugin"):
            flag(name)
        flag("output", _FORMAT, short="-o")
    app = _reads(SconeAppParams)
    flag = _Flags(shield, SconeNetworkShieldParams)
    flag("service", "SCONE service name")
    flag("command", "the app's command inside the enclave")
    flag("server_auth", "INSECURE: do not authenticate the mesh service (the thesis's setting)")
    _command(shield, SconeNetworkShieldParams, commands.cmd_scone_network_shield, app=app)
    flag = _Flags(tunnel, SconeGhostunnelParams)
    flag("listen_ports", "local plain port per target, in order (default: the target's port)")
    for name in ("cert_source", "workload_api_addr", "cert_dir", "timed_reload", "status_port", "binary"):
        flag(name)
    flag("command_line", "print the plain command line(s) for running Ghostunnel outside CAS")
    _command(tunnel, SconeGhostunnelParams, commands.cmd_scone_ghostunnel, app=app)


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
        _register_spec_commands,
        _register_istio,
        _register_spire,
        _register_scone,
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
        return commands.EXIT_USAGE
    try:
        return func(args)
    except PACKAGE_ERRORS as exc:
        if args.debug:
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return commands.EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
