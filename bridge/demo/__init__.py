"""``meshbridge demo``: httpbin behind a STRICT-mTLS Envoy sidecar fed by our SDS server, called by
external "enclave" apps — real Ghostunnel and a network-shield stand-in — all from the rendered
``examples/httpbin/bridge.yaml``, on loopback and Unix sockets in a temp dir.

Modules, one responsibility each: ``supervisor`` (processes, cleanup), ``plan`` (what to run, read from
the rendering), ``identities`` (Workload API config, SVID fetch), ``cas`` (SVIDStore + CAS stand-in),
``shield`` (network-shield stand-in), ``tunnel`` / ``tunnel_fallback`` (Ghostunnel command), ``setup``
(starting the peers), ``probe`` / ``checks`` / ``report`` (checks and output), ``run`` (the steps).
"""

from __future__ import annotations

import argparse

from bridge.demo.errors import DemoError
from bridge.demo.run import DemoOptions, main_from_args, run

__all__ = ["DemoError", "DemoOptions", "register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``meshbridge demo`` to the command line."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole bridge on this machine (httpbin, STRICT sidecar, Ghostunnel, network shield)",
        description="Render examples/httpbin/bridge.yaml, start the embedded Workload API, our SDS server, "
        "real Envoy as httpbin's STRICT sidecar, real Ghostunnel and an Envoy network-shield stand-in from "
        "the rendered sessions, and check who gets in. Exit 0 only if every check passed.",
    )
    p.add_argument(
        "-f", "--spec", default=None, help="bridge spec (default: examples/httpbin/bridge-federated.yaml)"
    )
    p.add_argument(
        "-o", "--out", default="demo-out", help="where the rendered artifacts go (default: ./demo-out)"
    )
    p.add_argument("--keep-running", action="store_true", help="leave everything up and print curl commands")
    p.add_argument(
        "--no-ghostunnel",
        action="store_true",
        help="use the Envoy client-tunnel fallback even if a Ghostunnel binary exists",
    )
    p.add_argument(
        "--workload-api",
        choices=("embedded", "spire"),
        default="embedded",
        help="where the SVIDs come from: the embedded Workload API (default), or a real spire-server + "
        "spire-agent per trust domain (needs root and the SPIRE binaries: make peers)",
    )
    p.set_defaults(func=main_from_args)
