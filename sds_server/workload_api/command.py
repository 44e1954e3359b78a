"""``meshbridge workload-api serve``: run the embedded SPIFFE Workload API.

``--socket PATH`` (socket named ``default``) or ``--socket NAME=PATH`` may be given several times and
replaces the config's ``sockets:``; ``--socket-mode`` sets the mode of every socket given on the command
line (default 0777: world-connectable like SPIRE's agent socket, attestation decides). Config problems
raise :class:`ConfigError` (the CLI prints ``error: …`` and exits 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path

from sds_server.cli_common import positive_int
from sds_server.lifecycle import run_until_signalled
from sds_server.workload_api.config import (
    DEFAULT_SOCKET_MODE,
    Config,
    SocketConfig,
    check_sockets,
    load_config,
    parse_socket_mode,
)
from sds_server.workload_api.errors import ConfigError

DEFAULT_SOCKET_NAME = "default"


def parse_socket_args(values: list[str], mode: int) -> tuple[SocketConfig, ...]:
    """``PATH`` or ``NAME=PATH`` arguments to socket configs (errors collected, with the flag's index)."""
    problems: list[str] = []
    out: list[SocketConfig] = []
    for i, value in enumerate(values):
        name, sep, path = value.partition("=")
        if not sep:
            name, path = DEFAULT_SOCKET_NAME, value
        if not name or not path:
            problems.append(f"--socket[{i}]: {value!r}: expected PATH or NAME=PATH")
            continue
        if any(s.name == name for s in out):
            problems.append(f"--socket[{i}]: {value!r}: socket name {name!r} given twice")
            continue
        out.append(SocketConfig(name, Path(path).expanduser().absolute(), mode))
    if problems:
        raise ConfigError(problems, "command line")
    return tuple(out)


def effective_config(args: argparse.Namespace) -> Config:
    """The config file with the command line's socket options applied."""
    mode = DEFAULT_SOCKET_MODE
    if args.socket_mode is not None:
        mode = parse_socket_mode(args.socket_mode, path="--socket-mode", source="command line")
    cli_sockets = parse_socket_args(args.socket, mode) if args.socket else None
    config = load_config(args.config, sockets=cli_sockets)
    if cli_sockets is None and args.socket_mode is not None:
        config = dataclasses.replace(
            config, sockets=tuple(dataclasses.replace(s, mode=mode) for s in config.sockets)
        )
    check_sockets(config)
    return config


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: a positive number of seconds")
    return seconds


def _serve(args: argparse.Namespace) -> int:
    # imported here: keeps `meshbridge --help` light
    from sds_server.workload_api.server import WorkloadApiLimits, serve  # noqa: PLC0415

    config = effective_config(args)
    loader = functools.partial(load_config, args.config, sockets=config.sockets)
    limits = WorkloadApiLimits(
        max_streams_per_uid=args.max_streams_per_uid, idle_connection_seconds=args.idle_connection_seconds
    )
    return run_until_signalled(
        lambda stop: serve(config, stop=stop, loader=loader, limits=limits),
        event="workload_api.stopping",
        again_event="workload_api.exit_now",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``workload-api serve`` to ``meshbridge``."""
    parser = subparsers.add_parser(
        "workload-api",
        help="embedded SPIFFE Workload API (local CA) for one machine",
        description="An embedded SPIFFE Workload API with a local CA, for demos, development and CI. "
        "In production point the SDS server at a SPIRE agent instead.",
    )
    sub = parser.add_subparsers(dest="workload_api_command", metavar="ACTION", required=True)
    serve_p = sub.add_parser(
        "serve",
        help="serve the Workload API on Unix sockets",
        description="Serve SpiffeWorkloadAPI on Unix sockets. SIGHUP reloads the config, SIGUSR1 re-mints "
        "every SVID, SIGTERM/SIGINT stop gracefully.",
    )
    serve_p.add_argument("--config", required=True, metavar="FILE", help="YAML config file")
    serve_p.add_argument(
        "--socket",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="Unix socket to serve (repeatable; replaces the config's sockets; bare PATH is named "
        f"{DEFAULT_SOCKET_NAME!r}; entries may select 'socket:NAME')",
    )
    serve_p.add_argument(
        "--socket-mode",
        default=None,
        metavar="MODE",
        help="octal file mode of the sockets (default 0777: attestation, not permissions, decides)",
    )
    serve_p.add_argument(
        "--max-streams-per-uid",
        type=positive_int,
        default=2048,
        metavar="N",
        help="open calls (streams and unary) per caller UID; more are refused with ResourceExhausted "
        "(default 2048)",
    )
    serve_p.add_argument(
        "--idle-connection-seconds",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="close a connection that opens no stream within SECONDS (default 10)",
    )
    serve_p.set_defaults(func=_serve)
