"""meshbridge's SDS server: Envoy secrets (SDS v3 over grpclib) from any SPIFFE Workload API.

Library use::

    from sds_server import ServerConfig, serve
    cfg = ServerConfig(listen=Path("/tmp/x/sds.sock"), workload_api="unix:///tmp/x/api.sock")
    await serve(cfg, ready=ready, stop=stop)

the CLI is ``meshbridge sds serve``. Tests and benches run a server in a background thread, or feed it
by hand, with :mod:`sds_server.testing` (not re-exported here).
"""

from __future__ import annotations

from sds_server.errors import SdsConfigError, SdsError
from sds_server.metrics import Metrics
from sds_server.server import SdsServer, ServerConfig, build_server, run, serve
from sds_server.servicer import SecretDiscoveryServicer
from sds_server.snapshot import Bundle, Resource, ResourceNames, SecretSnapshot, Svid
from sds_server.source import RetryPolicy, WorkloadApiSource

__all__ = [
    "Bundle",
    "Metrics",
    "Resource",
    "ResourceNames",
    "RetryPolicy",
    "SdsConfigError",
    "SdsError",
    "SdsServer",
    "SecretDiscoveryServicer",
    "SecretSnapshot",
    "ServerConfig",
    "Svid",
    "WorkloadApiSource",
    "build_server",
    "run",
    "serve",
]
