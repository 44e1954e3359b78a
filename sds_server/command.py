"""``meshbridge sds serve``: the SDS server from the command line (thin: parse, build config, run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sds_server.errors import SdsConfigError
from sds_server.server import ServerConfig, run
from sds_server.snapshot import ResourceNames


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
        ),
    )


def _serve(args: argparse.Namespace) -> int:
    return run(config_from_args(args))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sds serve`` to ``meshbridge``."""
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
    p.set_defaults(func=_serve)
