"""meshbridge's SDS server: Envoy secrets (SDS v3 over grpclib) from any SPIFFE Workload API.

Library use::

    from sds_server import ServerConfig, run_in_thread
    cfg = ServerConfig(listen=Path("/tmp/x/sds.sock"), workload_api="unix:///tmp/x/api.sock")
    with run_in_thread(cfg) as s:
        s.wait_first_secret()

or ``await serve(cfg, ready=..., stop=...)``; the CLI is ``meshbridge sds serve``.
"""

from __future__ import annotations

from sds_server.errors import SdsConfigError, SdsError
from sds_server.metrics import Metrics
from sds_server.server import RunningServer, SdsServer, ServerConfig, build_server, run, run_in_thread, serve
from sds_server.servicer import SecretDiscoveryServicer
from sds_server.snapshot import Bundle, Resource, ResourceNames, SecretSnapshot, Svid
from sds_server.source import Fault, RetryPolicy, StaticSource, WorkloadApiSource

__all__ = [
    "Bundle",
    "Fault",
    "Metrics",
    "Resource",
    "ResourceNames",
    "RetryPolicy",
    "RunningServer",
    "SdsConfigError",
    "SdsError",
    "SdsServer",
    "SecretDiscoveryServicer",
    "SecretSnapshot",
    "ServerConfig",
    "StaticSource",
    "Svid",
    "WorkloadApiSource",
    "build_server",
    "run",
    "run_in_thread",
    "serve",
]
