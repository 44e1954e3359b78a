"""The embedded SPIFFE Workload API: a local CA and a ``SpiffeWorkloadAPI`` server on Unix sockets.

For one machine (demos, development, CI); production points the SDS server at a SPIRE agent. Library use::

    from sds_server.workload_api import WorkloadApiServer, load_config

    server = WorkloadApiServer(load_config("workload-api.yaml"))
    await server.start()          # mint SVIDs, bind sockets, serve
    await server.rotate_svids()   # re-mint everything now and push
    await server.rotate_ca()      # new CA generation (bundle keeps the old one until it expires)
    await server.reload(load_config("workload-api.yaml"))
    await server.stop()

or ``await serve(config, ready=..., stop=...)``; the CLI is ``meshbridge workload-api serve``.
Modules: ``config`` (YAML contract), ``ca`` (local CA), ``jwt`` (JWT-SVIDs), ``attestor`` (SO_PEERCRED →
selectors; the single-machine socket-scoped mode), ``server`` (grpclib ``SpiffeWorkloadAPI``, rotation,
signals), ``command`` (CLI), ``errors``; sockets are bound by :mod:`sds_server.grpc_server`.
"""

from __future__ import annotations

from sds_server.workload_api.ca import LocalCa, Upstream, X509Svid
from sds_server.workload_api.config import Config, Entry, SocketConfig, load_config, parse_config
from sds_server.workload_api.errors import CaError, ConfigError, JwtSvidError, SocketError, WorkloadApiError
from sds_server.workload_api.server import WorkloadApiServer, serve

__all__ = [
    "CaError",
    "Config",
    "ConfigError",
    "Entry",
    "JwtSvidError",
    "LocalCa",
    "SocketConfig",
    "SocketError",
    "Upstream",
    "WorkloadApiError",
    "WorkloadApiServer",
    "X509Svid",
    "load_config",
    "parse_config",
    "serve",
]
