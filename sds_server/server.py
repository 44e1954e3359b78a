"""The SDS server: grpclib on a Unix socket, fed by a secret source; lifecycle and caller checks.

``build_server(cfg)`` returns an unstarted :class:`SdsServer`; ``await server.start()`` binds the socket
(created with the configured mode/owner *before* it listens), starts the source and the metrics
endpoint; ``await server.stop()`` drains: health ``NOT_SERVING`` → close the listener and the
streams → stop the source → remove the socket. :func:`serve` wires that to ``ready`` / ``stop``
events and :func:`run` to SIGTERM/SIGINT through :mod:`sds_server.lifecycle` (first signal drains, a
second exits at once, still removing the socket).

Caller checks: the socket's mode and owner are the kernel's gate (``--socket-owner 1337`` + 0600:
only istio-proxy and root connect). ``allowed_uids`` adds a per-request ``SO_PEERCRED`` check
(defence in depth); refused calls get ``PERMISSION_DENIED``.

Health: ``grpc.health.v1`` (grpclib.health) on the same socket, ``SERVING`` once a default SVID is
held, for the overall service ``""`` and ``envoy.service.secret.v3.SecretDiscoveryService``; the
service ``meshbridge.sds.SvidRotation`` turns ``NOT_SERVING`` (health *degraded*, the server keeps
serving) while ``svid.rotation_overdue`` holds. ``meshbridge.sds.v1.Admin/Status`` on the same socket
answers the per-stream status (:mod:`sds_server.status`; ``meshbridge sds status``).

Time: the source withholds expired SVIDs and holds not-yet-valid ones (:mod:`sds_server.source`); here,
``svid.rotation_overdue``: the default SVID is past ``rotation_overdue_fraction`` (60 %) of its
lifetime and no new one arrived (SPIRE renews at 50 %) — logged at error, the ``svid_rotation_overdue``
gauge is 1 and health is degraded, well before anything expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health

from sds_server.errors import SdsConfigError, WorkloadApiCallError
from sds_server.file_credentials import FileCredentials
from sds_server.grpc_server import Server, UnixSocketError, bind_unix_socket, peer_socket, peer_uid
from sds_server.lifecycle import run_until_signalled
from sds_server.limits import SdsLimits
from sds_server.metrics import Metrics
from sds_server.servicer import SecretDiscoveryServicer
from sds_server.snapshot import ResourceNames, SecretSnapshot
from sds_server.source import RetryPolicy, SecretSource, WorkloadApiSource
from sds_server.status import ROTATION_HEALTH_SERVICE, AdminService
from sds_server.workload_client import parse_address

log = structlog.get_logger(__name__)

_UNIX_PATH_MAX = 107


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``meshbridge sds serve`` takes. ``workload_api=None``: the source is handed to
    :func:`build_server` (tests: :mod:`sds_server.testing`)."""

    listen: Path
    workload_api: str | None = None
    socket_mode: int = 0o600
    socket_owner: int | None = None
    allowed_uids: frozenset[int] | None = None
    metrics_address: tuple[str, int] | None = None
    names: ResourceNames = field(default_factory=ResourceNames)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    drain_seconds: float = 2.0
    limits: SdsLimits = field(default_factory=SdsLimits)
    file_credentials_dirs: tuple[Path, ...] = ()
    file_poll_seconds: float = 1.0
    system_roots: Path | None = None  # file-root:system; None = the OS trust store istio-agent would use

    def __post_init__(self) -> None:
        if len(os.fsencode(self.listen)) > _UNIX_PATH_MAX:
            raise SdsConfigError(
                f"listen: {str(self.listen)!r}: a Unix socket path is limited to {_UNIX_PATH_MAX} bytes"
            )
        if not 0 <= self.socket_mode <= 0o777:
            raise SdsConfigError(f"socket_mode: {oct(self.socket_mode)!r}: must be between 0o000 and 0o777")
        if self.workload_api is not None:
            # The client's own parser: an address it could never connect to (a relative path, an
            # authority) is a configuration error up front rather than a retry loop.
            try:
                parse_address(self.workload_api)
            except WorkloadApiCallError as exc:
                raise SdsConfigError(
                    f"workload_api: {self.workload_api!r}: expected unix:///absolute/path/agent.sock "
                    "(the SPIFFE_ENDPOINT_SOCKET form) or an absolute socket path"
                ) from exc


__all__ = [
    "SdsServer",
    "ServerConfig",
    "build_server",
    "peer_uid",
    "run",
    "serve",
]


class SdsServer:
    """One SDS server instance. Not started until :meth:`start`."""

    def __init__(
        self, config: ServerConfig, source: SecretSource | None = None, *, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        if source is None:
            if config.workload_api is None:
                raise SdsConfigError("workload_api: None: a Workload API address (or a source) is required")
            source = WorkloadApiSource(config.workload_api, config.names, self.metrics, retry=config.retry)
        self.source = source
        self.files = FileCredentials(
            config.file_credentials_dirs,
            poll_seconds=config.file_poll_seconds,
            system_roots=config.system_roots,
        )
        self.servicer = SecretDiscoveryServicer(self.metrics, limits=config.limits, files=self.files)
        self.health = ServiceStatus()
        self.health.set(False)  # NOT_SERVING until a default SVID is held
        self.rotation_health = ServiceStatus()
        self.rotation_health.set(True)
        self._overdue_serial: int | None = None  # the default SVID's serial while it is overdue
        self._overdue_timer: asyncio.TimerHandle | None = None
        self._shadowed_logged: set[str] = set()
        self._files_task: asyncio.Task[None] | None = None
        self._grpc: Server | None = None
        self.metrics_port: int | None = None
        self._started = False
        self._first_secret = asyncio.Event()

    async def _check_caller(self, event: RecvRequest) -> None:
        allowed = self.config.allowed_uids
        if allowed is None:
            return
        sock = peer_socket(event.peer)
        uid = peer_uid(sock) if sock is not None else -1
        if uid not in allowed:
            self.metrics.denied_connections.inc()
            log.warning("sds.caller.denied", uid=uid, method=event.method_name)
            raise GRPCError(Status.PERMISSION_DENIED, f"caller uid {uid} is not allowed on this SDS socket")

    def _on_snapshot(self, snap: SecretSnapshot) -> None:
        """A snapshot from the source (on the loop): serve it."""
        for name in snap.shadowed:
            if name not in self._shadowed_logged:
                self._shadowed_logged.add(name)
                log.warning(
                    "sds.name.shadows_trust_domain",
                    name=name,
                    hint=f"a configured name wins: the bundle of trust domain {name!r} is served only as "
                    f"'spiffe://{name.removeprefix('spiffe://')}'",
                )
        self.servicer.update(snap)
        d = snap.default_svid
        self.health.set(d is not None)
        if d is not None:
            self._first_secret.set()
        self._watch_rotation(snap)

    def _watch_rotation(self, snap: SecretSnapshot) -> None:
        """Arm ``svid.rotation_overdue`` for the served default SVID (cleared when a new one arrives)."""
        d = snap.default_svid
        if self._overdue_timer is not None:
            self._overdue_timer.cancel()
            self._overdue_timer = None
        # Cleared only by a renewal: a new default SVID. A default that went away (expired, now withheld)
        # was not renewed: the overdue state stays (gauge 1, health degraded) and nothing says "cleared".
        if self.rotation_overdue and d is not None and d.serial != self._overdue_serial:
            self._overdue_serial = None
            self.metrics.rotation_overdue.set(0)
            self.rotation_health.set(True)
            log.info("svid.rotation_overdue.cleared", spiffe_id=d.spiffe_id, serial=format(d.serial, "x"))
        if d is None or self.rotation_overdue:
            return
        start = d.valid_from()
        due = start + (d.not_after - start) * self.config.limits.rotation_overdue_fraction
        delay = max(0.0, due.timestamp() - time.time())
        self._overdue_timer = asyncio.get_running_loop().call_later(delay, self._overdue, d.serial, due)

    @property
    def rotation_overdue(self) -> bool:
        """The default SVID passed its renewal point without a new one (cleared only by a renewal)."""
        return self._overdue_serial is not None

    def _overdue(self, serial: int, due: datetime) -> None:
        self._overdue_timer = None
        snap = self.servicer.snapshot
        d = snap.default_svid if snap is not None else None
        if d is None or d.serial != serial:
            return
        self._overdue_serial = serial
        self.metrics.rotation_overdue.set(1)
        self.rotation_health.set(False)
        log.error(
            "svid.rotation_overdue",
            spiffe_id=d.spiffe_id,
            serial=format(serial, "x"),
            renew_by=due.isoformat(),
            not_after=d.not_after.isoformat(),
            hint="the Workload API has not renewed the default SVID; check the SPIRE agent",
        )

    async def wait_first_secret(self) -> None:
        """Wait until a default SVID is held (health ``SERVING``)."""
        await self._first_secret.wait()

    def _bind(self) -> socket.socket:
        cfg = self.config
        try:
            return bind_unix_socket(
                cfg.listen, cfg.socket_mode, owner=cfg.socket_owner, backlog=cfg.limits.backlog
            )
        except UnixSocketError as exc:
            raise SdsConfigError(f"listen: {str(cfg.listen)!r}: {exc}") from exc

    async def _serve_metrics(self) -> None:
        if self.config.metrics_address is None:
            return
        host, port = self.config.metrics_address
        try:
            self.metrics_port = await self.metrics.serve(host, port)
        except OSError as exc:
            raise SdsConfigError(
                f"--metrics: {f'{host}:{port}'!r}: cannot listen there ({exc.strerror or exc})"
            ) from exc

    async def start(self) -> None:
        # Everything that can fail on bad input (metrics address, socket path) happens before anything is
        # left running; a failure undoes what was started, so no socket file, thread or port leaks.
        await self._serve_metrics()
        try:
            # grpclib's Server binds to the loop current at construction: build it here, on the serving loop.
            admin = AdminService(self)
            # OVERALL given explicitly: a degraded rotation must not turn the whole server NOT_SERVING.
            health = Health(
                {
                    OVERALL: [self.health],
                    self.servicer: [self.health],
                    ROTATION_HEALTH_SERVICE: [self.rotation_health],
                }
            )
            self._grpc = Server(
                [self.servicer, admin, health],
                limits=self.config.limits,
            )
            if self.config.allowed_uids is not None:
                listen(self._grpc, RecvRequest, self._check_caller)
            sock = self._bind()
            try:
                await self._grpc.start(sock=sock)
            except BaseException:
                sock.close()
                with contextlib.suppress(OSError):
                    self.config.listen.unlink()
                raise
        except BaseException:
            await self.metrics.close()
            raise
        self._started = True
        loop = asyncio.get_running_loop()
        self._files_task = loop.create_task(self.files.run())
        self.source.start(loop)
        self.source.subscribe(self._on_snapshot)  # after attach: a snapshot published earlier is delivered
        log.info(
            "sds.listening",
            socket=str(self.config.listen),
            mode=oct(self.config.socket_mode),
            owner=self.config.socket_owner,
            workload_api=self.config.workload_api,
            metrics_port=self.metrics_port,
        )

    async def stop(self) -> None:
        """Drain and stop; idempotent."""
        if not self._started or self._grpc is None:
            return
        self._started = False
        self.health.set(False)
        self._grpc.close()
        try:  # a second signal cancels the drain (sds_server.lifecycle): the socket is removed regardless
            try:
                await asyncio.wait_for(self._grpc.wait_closed(), self.config.drain_seconds)
            except TimeoutError:
                log.warning("sds.drain.timeout", seconds=self.config.drain_seconds)
            await self.servicer.close()
            if self._overdue_timer is not None:
                self._overdue_timer.cancel()
            if self._files_task is not None:
                self._files_task.cancel()
                await asyncio.gather(self._files_task, return_exceptions=True)
            await self.source.aclose()
            await self.metrics.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.config.listen.unlink()
        log.info("sds.stopped", socket=str(self.config.listen))


def build_server(
    config: ServerConfig, source: SecretSource | None = None, *, metrics: Metrics | None = None
) -> SdsServer:
    """An unstarted server for ``config`` (its source built from ``config`` unless given)."""
    return SdsServer(config, source, metrics=metrics)


async def serve(
    config: ServerConfig,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    server: SdsServer | None = None,
) -> None:
    """Run until ``stop`` is set (forever if ``None``); set ``ready`` once the socket listens."""
    srv = server or build_server(config)
    stop = stop or asyncio.Event()
    await srv.start()
    try:
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await srv.stop()


def run(config: ServerConfig) -> int:
    """Blocking entry point for the CLI: SIGTERM/SIGINT drain and return 0; a second signal cuts the drain
    short, still removes the socket and returns 1 (:mod:`sds_server.lifecycle`)."""
    return run_until_signalled(
        lambda stop: serve(config, stop=stop), event="sds.signal", again_event="sds.signal.again"
    )
