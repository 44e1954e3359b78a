"""``meshbridge``: one command line, thin.

Each subsystem registers its own subcommands (``register(subparsers)``) and sets ``func`` on its parser:
a callable taking the parsed namespace and returning the exit code. This module only parses arguments,
configures logging once (structlog: console on a TTY, JSON otherwise) and maps package errors to one
``error: <message>`` line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import structlog

from bridge import commands as bridge_commands
from bridge import demo as demo_command
from bridge.errors import BridgeError
from istio.errors import IstioError
from scone.errors import SconeError
from sds_server import command as sds_command
from sds_server.errors import SdsError
from sds_server.workload_api import command as workload_api_command
from sds_server.workload_api.errors import WorkloadApiError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


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
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
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
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    registrars: Sequence[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = (
        workload_api_command.register,
        sds_command.register,
        bridge_commands.register,
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
