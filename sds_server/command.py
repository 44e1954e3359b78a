"""``meshbridge sds serve|status|probe``: the SDS server from the command line (thin: parse, call).

``status`` and ``probe`` talk to a running server over its socket (:mod:`sds_server.status`); ``probe``
exits 0 when the server answers the ``grpc.health.v1`` check ``SERVING`` and 1 otherwise, with one
line saying why — a startup/liveness probe for an image without a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from sds_server.cli_common import positive_int
from sds_server.errors import SdsConfigError
from sds_server.limits import UNKNOWN_NAMES_POLICIES, SdsLimits
from sds_server.server import ServerConfig, run
from sds_server.snapshot import ResourceNames
from sds_server.status import fetch_status, probe, render_text


def _mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: an octal mode such as 0600") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{value!r}: an octal mode between 000 and 777")
    return mode


def _uid(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: a numeric UID")
    return int(value)


def parse_host_port(value: str) -> tuple[str, int]:
    """``127.0.0.1:9102`` → ``("127.0.0.1", 9102)``; raise :class:`SdsConfigError` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SdsConfigError(f"--metrics: {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9102")
    return host, int(port)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` the parsed ``sds serve`` options describe."""
    return ServerConfig(
        listen=Path(args.listen),
        workload_api=args.workload_api,
        socket_mode=args.socket_mode,
        socket_owner=args.socket_owner,
        allowed_uids=frozenset(args.allow_uid) if args.allow_uid else None,
        metrics_address=parse_host_port(args.metrics) if args.metrics else None,
        names=ResourceNames(
            default=args.default_name,
            rootca=args.rootca_name,
            all=args.all_name,
            rootca_all_bundles=args.rootca_all_bundles,
            default_spiffe_id=args.default_spiffe_id,
            default_hint=args.default_hint,
        ),
        limits=SdsLimits(
            unknown_names=args.unknown_names,
            max_names_per_stream=args.max_names_per_stream,
            max_streams_per_uid=args.max_streams_per_uid,
            send_timeout_seconds=args.send_timeout,
        ),
        file_credentials_dirs=tuple(Path(d) for d in args.file_credentials_dir or ()),
    )


def _serve(args: argparse.Namespace) -> int:
    return run(config_from_args(args))


def _status(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(fetch_status(Path(args.listen), args.timeout))
    except Exception as exc:  # any failure to reach the server is the answer, said in one line
        raise SdsConfigError(
            f"--listen: {args.listen!r}: no SDS status: {type(exc).__name__}: {exc}"
        ) from exc
    print(json.dumps(report, indent=2, sort_keys=True) if args.output == "json" else render_text(report))
    return 0


def _probe(args: argparse.Namespace) -> int:
    ok, message = asyncio.run(probe(Path(args.listen), args.service, args.timeout))
    print(("ok: " if ok else "not serving: ") + message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


_DEFAULTS = SdsLimits()


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: seconds, e.g. 10 or 0.5") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be positive")
    return seconds


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sds serve|status|probe`` to ``meshbridge``."""
    sds = subparsers.add_parser("sds", help="Envoy SDS server backed by a SPIFFE Workload API")
    sub = sds.add_subparsers(dest="sds_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser(
        "serve",
        help="serve Envoy SDS (default, ROOTCA, ALL, SPIFFE IDs, trust domains) on a Unix socket",
        description="Serve Envoy's Secret Discovery Service from the SVIDs and bundles a SPIFFE "
        "Workload API (a SPIRE agent, or `meshbridge workload-api serve`) gives this process.",
    )
    p.add_argument(
        "--workload-api", required=True, metavar="ADDR", help="Workload API socket, unix:///path/agent.sock"
    )
    p.add_argument("--listen", required=True, metavar="PATH", help="SDS Unix socket to create")
    p.add_argument(
        "--socket-mode", type=_mode, default=0o600, metavar="MODE", help="socket mode, octal (default 0600)"
    )
    p.add_argument(
        "--socket-owner", type=_uid, default=None, metavar="UID", help="chown the socket to UID (e.g. 1337)"
    )
    p.add_argument(
        "--allow-uid",
        type=_uid,
        action="append",
        default=None,
        metavar="UID",
        help="only callers with this UID (SO_PEERCRED), repeatable; default: anyone the socket mode lets in",
    )
    p.add_argument("--metrics", default=None, metavar="HOST:PORT", help="Prometheus text on HOST:PORT")
    p.add_argument("--default-name", default="default", help="name of the default SVID (default: default)")
    p.add_argument("--rootca-name", default="ROOTCA", help="name of the own-trust-domain bundle (ROOTCA)")
    p.add_argument("--all-name", default="ALL", help="name of the all-bundles SPIFFE validator (ALL)")
    p.add_argument(
        "--rootca-all-bundles",
        action="store_true",
        help="ROOTCA carries every bundle as a SPIFFE validator (Istio federation; SPIRE "
        'default_bundle_name="null", default_all_bundles_name="ROOTCA")',
    )
    p.add_argument(
        "--default-spiffe-id",
        default=None,
        metavar="ID",
        help="serve this SVID as default (absent: no default); else the SVID hinted --default-hint, "
        "else the first",
    )
    p.add_argument(
        "--default-hint", default="default", metavar="HINT", help="Workload API hint of the default SVID"
    )
    p.add_argument(
        "--file-credentials-dir",
        action="append",
        default=None,
        metavar="DIR",
        help="serve istio-agent's file-cert:/file-root: names for files under DIR (repeatable); "
        "other paths are refused",
    )
    p.add_argument(
        "--unknown-names",
        choices=UNKNOWN_NAMES_POLICIES,
        default="hold",
        help="unknown resource names: hold (wait, warn) or error (InvalidArgument, like SPIRE)",
    )
    p.add_argument("--max-names-per-stream", type=positive_int, default=_DEFAULTS.max_names_per_stream)
    p.add_argument("--max-streams-per-uid", type=positive_int, default=_DEFAULTS.max_streams_per_uid)
    p.add_argument(
        "--send-timeout",
        type=_seconds,
        default=_DEFAULTS.send_timeout_seconds,
        metavar="SECONDS",
        help="cut off a client that does not read a push within SECONDS (default 10)",
    )
    p.set_defaults(func=_serve)

    st = sub.add_parser("status", help="per-stream status of a running SDS server (its socket)")
    st.add_argument("--listen", required=True, metavar="PATH", help="the SDS server's Unix socket")
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")
    st.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS")
    st.set_defaults(func=_status)

    pr = sub.add_parser(
        "probe", help="exit 0 when the SDS server on PATH answers its health check SERVING, else 1"
    )
    pr.add_argument("--listen", required=True, metavar="PATH", help="the SDS server's Unix socket")
    pr.add_argument("--service", default="", help="health service name (default: the whole server)")
    pr.add_argument("--timeout", type=_seconds, default=3.0, metavar="SECONDS")
    pr.set_defaults(func=_probe)
