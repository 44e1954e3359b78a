"""The embedded SPIFFE Workload API server (``SpiffeWorkloadAPI``), served with grpclib on Unix sockets.

**Why grpclib, not grpcio.** The Workload API must know *who* calls: the kernel tells us through
``SO_PEERCRED`` on the accepted Unix connection. grpcio's Python server hides the connection —
``context.peer()`` is just ``"unix:"`` on a Unix socket and no API reaches the file descriptor — so a
grpcio server cannot tell callers apart. grpclib runs on asyncio transports: in a handler,
``stream.peer`` is a :class:`grpclib.protocol.Peer` that holds the connection's asyncio transport
(grpclib 0.4.9: ``Peer._transport``; its public ``addr()`` only returns ``peername``, which is empty for
Unix clients), and ``transport.get_extra_info("socket")`` is the accepted socket, on which we call
``getsockopt(SO_PEERCRED)``. That one private attribute is read in
:func:`sds_server.grpc_server.peer_transport` only (shared with the SDS server); if grpclib ever renames
it, every call fails closed with ``Unavailable`` instead of serving an unattested caller. The same
transport is closed when the caller changed uid/gid since it connected (as SPIRE drops such a
connection), so the client reconnects and is attested as the process it now is.
The messages are :mod:`sds_server.workload_proto` (py-spiffe's ``workload.proto``, same wire format, in a
private descriptor pool: importing any ``spiffe`` module would load grpcio); the grpclib ``__mapping__`` is
written by hand in :class:`_Servicer` (the proto has no package: paths are ``/SpiffeWorkloadAPI/<rpc>``).

**Spec behaviour** (spiffe/spiffe ``standards/SPIFFE_Workload_API.md``, ``SPIFFE_Workload_Endpoint.md``):

* every call must carry metadata ``workload.spiffe.io: true``, else ``InvalidArgument`` (Endpoint §5);
* a caller matching no entry gets ``PermissionDenied`` — for streams at stream start (API §5.2.1, §5.2.2,
  §6.2.1, §6.2.2); if a reload removes its last entry, the open stream ends with ``PermissionDenied``.
  ``ValidateJWTSVID`` is the exception: it needs only the trust bundle and, as with SPIRE's agent, answers
  any caller (``tests/spire/test_differential.py`` compares both, README lists what still differs);
* each stream message is the complete current set (API §4.3); a new one is pushed whenever an SVID
  rotates or a bundle changes, and unchanged content is never re-sent;
* SVID hints are unique within a response (API §5.2.1): a later SVID repeating a hint is left out;
* bundles are keyed by the trust domain's SPIFFE ID (``spiffe://example.org``).

**Limits** (:class:`WorkloadApiLimits`; the socket is 0777, so any local user is a caller). Each call
is admitted before a byte of its request body is read: the security header is checked, then the caller
attested (``SO_PEERCRED``), then its UID's open calls counted (at most ``max_streams_per_uid``, else
``ResourceExhausted``), and only then is the request received and decoded. The transport is the SDS
server's (:class:`sds_server.grpc_server.Server`): a message announced larger than 4 MiB is refused from
its 5-byte length prefix with ``ResourceExhausted`` before its body is buffered, the listen backlog asked
for applies, and a connection that opens no stream within ``idle_connection_seconds`` is closed.

**Lifecycle.** Each SVID is re-minted at half its lifetime and pushed on every open stream; the CA
rotates at half its lifetime (bundle carries old and new until the old expires). :meth:`reload` swaps the
config and pushes what changed; :meth:`rotate_svids` re-mints everything at once. :func:`serve` wires the
signals: SIGTERM/SIGINT stop gracefully (a second one exits at once), SIGHUP reloads the config file,
SIGUSR1 forces a re-mint.

**Log events** (structlog; all under ``workload_api.``, a test keeps this list whole):
``workload_api.listening`` / ``workload_api.started`` / ``workload_api.stopping`` /
``workload_api.stopped`` / ``workload_api.exit_now`` (lifecycle), ``workload_api.svids.issued`` (info,
one per batch: count, reason, spiffe_ids), ``workload_api.svid.minted`` / ``workload_api.svid.rotated``
(debug, one per SVID: spiffe_id, serial, expires, reason), ``workload_api.rotated`` (after SIGUSR1),
``workload_api.maintain_failed`` / ``workload_api.maintain_crashed``, ``workload_api.ca.loaded`` /
``workload_api.ca.rotated`` / ``workload_api.ca.pruned`` / ``workload_api.ca.state.discarded``,
``workload_api.config.reloaded`` / ``workload_api.config.reload_failed`` /
``workload_api.config.reload_skipped`` / ``workload_api.config.sockets_unchanged``, ``workload_api.call``
/ ``workload_api.push`` (debug), ``workload_api.denied`` (rpc, reason, socket),
``workload_api.attest.caller_changed`` / ``workload_api.attest.caller_exited`` /
``workload_api.attest.exe_unreadable`` / ``workload_api.attest.status_unreadable``,
``workload_api.jwt_svid.issued`` / ``workload_api.jwt_svid.invalid``. The socket module shared with the
SDS server logs ``socket.stale_replaced``.

**Concurrency.** Everything runs on one asyncio loop. The served state is one immutable
:class:`_Snapshot`, swapped whole; each swap sets the previous ``asyncio.Event`` so open streams wake,
rebuild their response and send it if it changed. Key material is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from sds_server import workload_proto as pb
from sds_server.errors import SpiffeIdError
from sds_server.grpc_server import (
    Limits,
    PerUidCap,
    Server,
    UnixSocketError,
    bind_unix_socket,
    peer_socket,
    peer_transport,
)
from sds_server.lifecycle import until_signalled
from sds_server.spiffe_id import SpiffeId, TrustDomain
from sds_server.workload_api.attestor import UnixAttestor
from sds_server.workload_api.ca import Clock, LocalCa, Upstream, X509Svid
from sds_server.workload_api.config import Config, Entry, SocketConfig, check_sockets, load_config
from sds_server.workload_api.errors import (
    CaError,
    CallerChangedError,
    ConfigError,
    JwtSvidError,
    SocketError,
    WorkloadApiError,
)
from sds_server.workload_api.jwt import jwks_document, validate_jwt_svid

__all__ = ["WorkloadApiLimits", "WorkloadApiServer", "serve"]

log = structlog.get_logger(__name__)

SECURITY_HEADER = "workload.spiffe.io"
SERVICE = "/SpiffeWorkloadAPI/"
_MAX_SLEEP = 3600.0
_EMPTY_JWKS = jwks_document(())


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Everything the server hands out at one point in time."""

    version: int
    config: Config
    svids: Mapping[Entry, X509Svid]
    bundle_der: bytes
    jwks: bytes
    federated_der: Mapping[TrustDomain, bytes]

    @property
    def uses_sha256(self) -> bool:
        """Whether any entry selects on the executable's hash (else attestation skips hashing)."""
        return any(sel.startswith("unix:sha256:") for e in self.config.entries for sel in e.selectors)


@dataclass(frozen=True, slots=True)
class WorkloadApiLimits(Limits):
    """Caps of the embedded Workload API: the SDS server's transport caps (see "Limits" above), and this."""

    # Open calls (streams and unary) per caller UID. In single-machine mode every workload may share one
    # UID; a workload holds about three streams (X.509 SVIDs, bundles, JWT bundles).
    max_streams_per_uid: int = 2048

    def __post_init__(self) -> None:
        problems = self.not_positive("max_streams_per_uid")
        if problems:
            raise ConfigError(problems, "limits")


# ---- the streamed views: a cheap fingerprint of what a caller sees, and the message itself ------------
def _federated(snap: _Snapshot, entries: list[Entry]) -> dict[TrustDomain, bytes]:
    """Bundles of the foreign trust domains the caller's entries federate with."""
    tds = sorted({td for e in entries for td in e.federates_with})
    return {td: snap.federated_der[td] for td in tds if td in snap.federated_der}


def _unique(entries: list[Entry], *, per_spiffe_id: bool = False) -> Iterator[Entry]:
    """API §5.2.1: hints are unique within a response; the first one wins (and, if asked, the first entry
    of each SPIFFE ID)."""
    hints: set[str] = set()
    seen: set[SpiffeId] = set()
    for entry in entries:
        if (per_spiffe_id and entry.spiffe_id in seen) or (entry.hint and entry.hint in hints):
            continue
        seen.add(entry.spiffe_id)
        hints.add(entry.hint)
        yield entry


def _x509_fingerprint(snap: _Snapshot, entries: list[Entry]) -> object:
    return (
        tuple((e, snap.svids[e].serial) for e in entries),
        snap.bundle_der,
        tuple(_federated(snap, entries).items()),
    )


def _x509_response(snap: _Snapshot, entries: list[Entry]) -> Any:
    resp = pb.X509SVIDResponse()
    for entry in _unique(entries):
        svid = snap.svids[entry]
        resp.svids.add(
            spiffe_id=str(entry.spiffe_id),
            x509_svid=svid.chain_der(),
            x509_svid_key=svid.key_der(),
            bundle=snap.bundle_der,
            hint=entry.hint,
        )
    for td, der in _federated(snap, entries).items():
        resp.federated_bundles[td.id] = der
    return resp


def _bundles_fingerprint(snap: _Snapshot, entries: list[Entry]) -> object:
    return (snap.bundle_der, tuple(_federated(snap, entries).items()))


def _bundles_response(snap: _Snapshot, entries: list[Entry]) -> Any:
    resp = pb.X509BundlesResponse()
    resp.bundles[snap.config.trust_domain.id] = snap.bundle_der
    for td, der in _federated(snap, entries).items():
        resp.bundles[td.id] = der
    return resp


def _jwt_fingerprint(snap: _Snapshot, entries: list[Entry]) -> object:
    return snap.jwks, tuple(_federated(snap, entries))


def _jwt_bundles_response(snap: _Snapshot, entries: list[Entry]) -> Any:
    resp = pb.JWTBundlesResponse(bundles={snap.config.trust_domain.id: snap.jwks})
    # Federated trust domains come as X.509 PEM bundles only, so they carry no JWT keys; SPIRE's agent
    # still lists each one the caller federates with, as an empty JWKS (spiffe/spire v1.13
    # pkg/agent/endpoints/workload/handler.go, composeJWTBundlesResponse), and so do we.
    for td in _federated(snap, entries):
        resp.bundles[td.id] = _EMPTY_JWKS
    return resp


def _build_ca(config: Config, clock: Clock) -> LocalCa:
    upstream = None
    if config.ca.upstream is not None:
        upstream = Upstream.load(config.ca.upstream.cert, config.ca.upstream.key)
    return LocalCa(
        config.trust_domain,
        key_type=config.ca.key_type,
        ttl=config.ca.ttl,
        upstream=upstream,
        data_dir=config.data_dir,
        clock=clock,
    )


class _Servicer:
    """The ``SpiffeWorkloadAPI`` handlers for one socket (its name becomes the ``socket:`` selector)."""

    def __init__(self, server: WorkloadApiServer, socket_name: str) -> None:
        self._server = server
        self._socket_name = socket_name

    def __mapping__(self) -> dict[str, Handler]:
        return {
            SERVICE + "FetchX509SVID": Handler(
                self.fetch_x509_svid, Cardinality.UNARY_STREAM, pb.X509SVIDRequest, pb.X509SVIDResponse
            ),
            SERVICE + "FetchX509Bundles": Handler(
                self.fetch_x509_bundles,
                Cardinality.UNARY_STREAM,
                pb.X509BundlesRequest,
                pb.X509BundlesResponse,
            ),
            SERVICE + "FetchJWTSVID": Handler(
                self.fetch_jwt_svid, Cardinality.UNARY_UNARY, pb.JWTSVIDRequest, pb.JWTSVIDResponse
            ),
            SERVICE + "FetchJWTBundles": Handler(
                self.fetch_jwt_bundles, Cardinality.UNARY_STREAM, pb.JWTBundlesRequest, pb.JWTBundlesResponse
            ),
            SERVICE + "ValidateJWTSVID": Handler(
                self.validate_jwt_svid,
                Cardinality.UNARY_UNARY,
                pb.ValidateJWTSVIDRequest,
                pb.ValidateJWTSVIDResponse,
            ),
        }

    @contextlib.asynccontextmanager
    async def _call(self, stream: Stream[Any, Any], rpc: str) -> AsyncIterator[frozenset[str]]:
        """Admit a call before its request is read; yield its selectors.

        The security header is checked, then the caller attested from the kernel, then its UID's open calls
        counted. Nothing of the request body has been received when this runs: a caller without the header,
        or one that cannot be attested, never gets a byte of its request decoded.
        """
        header = stream.metadata.get(SECURITY_HEADER) if stream.metadata is not None else None
        if header != "true":
            self._denied(rpc, "missing security header")
            raise GRPCError(Status.INVALID_ARGUMENT, "security header missing from request")
        sock = peer_socket(stream)
        if sock is None:  # fail closed
            raise GRPCError(Status.UNAVAILABLE, "cannot identify the caller's connection")
        try:
            creds, selectors = self._server.attestor.attest_connection(
                sock, self._socket_name, with_sha256=self._server.snapshot.uses_sha256
            )
        except OSError as exc:
            raise GRPCError(Status.UNAVAILABLE, "cannot read the caller's credentials") from exc
        except CallerChangedError as exc:  # SPIRE's words (pkg/agent/endpoints/peertracker.go)
            self._denied(rpc, "caller changed")
            transport = peer_transport(stream)
            if transport is not None:  # drop the connection once this status is out, as SPIRE does
                asyncio.get_running_loop().call_later(0.1, transport.close)
            raise GRPCError(
                Status.UNAUTHENTICATED, f"could not verify existence of the original caller: {exc}"
            ) from exc
        log.debug("workload_api.call", rpc=rpc, pid=creds.pid, uid=creds.uid, socket=self._socket_name)

        def refused(uid: int, count: int) -> None:
            self._denied(rpc, "streams per UID", logging.WARNING, uid=uid, streams=count)

        with self._server.per_uid.hold(creds.uid, refused):
            yield selectors

    def _denied(self, rpc: str, reason: str, level: int = logging.INFO, **fields: object) -> None:
        log.log(level, "workload_api.denied", rpc=rpc, reason=reason, socket=self._socket_name, **fields)

    def _entries(self, snap: _Snapshot, selectors: frozenset[str], rpc: str) -> list[Entry]:
        entries = [e for e in snap.config.entries if e.matches(selectors)]
        if not entries:
            self._denied(rpc, "no matching entry")
            raise GRPCError(Status.PERMISSION_DENIED, "no identity issued")
        return entries

    async def _stream_updates(
        self,
        stream: Stream[Any, Any],
        rpc: str,
        build: Callable[[_Snapshot, list[Entry]], Any],
        fingerprint: Callable[[_Snapshot, list[Entry]], object],
    ) -> None:
        """Send the caller's current view, then a new message whenever its content changes (API §4.3)."""
        async with self._call(stream, rpc) as selectors:
            await stream.recv_message()
            last: object = None
            while True:
                changed = self._server.changed
                snap = self._server.snapshot
                entries = self._entries(snap, selectors, rpc)
                # Cheap content fingerprint first: unchanged content is never rebuilt nor re-sent.
                key = fingerprint(snap, entries)
                if key != last:
                    await stream.send_message(build(snap, entries))
                    log.debug("workload_api.push", rpc=rpc, socket=self._socket_name, version=snap.version)
                    last = key
                await changed.wait()

    async def fetch_x509_svid(self, stream: Stream[Any, Any]) -> None:
        await self._stream_updates(stream, "FetchX509SVID", _x509_response, _x509_fingerprint)

    async def fetch_x509_bundles(self, stream: Stream[Any, Any]) -> None:
        await self._stream_updates(stream, "FetchX509Bundles", _bundles_response, _bundles_fingerprint)

    async def fetch_jwt_bundles(self, stream: Stream[Any, Any]) -> None:
        await self._stream_updates(stream, "FetchJWTBundles", _jwt_bundles_response, _jwt_fingerprint)

    async def fetch_jwt_svid(self, stream: Stream[Any, Any]) -> None:
        async with self._call(stream, "FetchJWTSVID") as selectors:
            request = await stream.recv_message()
            assert request is not None
            audience = [a for a in request.audience if a]
            if not audience:
                raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
            wanted: SpiffeId | None = None
            if request.spiffe_id:
                # Checked before the entries, in SPIRE's words (spiffe/spire v1.13
                # pkg/agent/endpoints/workload/handler.go, FetchJWTSVID).
                try:
                    wanted = SpiffeId.parse(request.spiffe_id)
                except SpiffeIdError as exc:
                    raise GRPCError(Status.INVALID_ARGUMENT, f"invalid requested SPIFFE ID: {exc}") from exc
            snap = self._server.snapshot
            entries = self._entries(snap, selectors, "FetchJWTSVID")
            if wanted is not None:
                entries = [e for e in entries if e.spiffe_id == wanted]
                if not entries:
                    self._denied("FetchJWTSVID", "identity not entitled", spiffe_id=str(wanted))
                    raise GRPCError(Status.PERMISSION_DENIED, "no identity issued")  # as SPIRE says it
            resp = pb.JWTSVIDResponse()
            for entry in _unique(entries, per_spiffe_id=True):
                token = self._server.ca.mint_jwt_svid(entry.spiffe_id, audience, snap.config.jwt_svid_ttl)
                resp.svids.add(spiffe_id=str(entry.spiffe_id), svid=token, hint=entry.hint)
            log.info(
                "workload_api.jwt_svid.issued",
                spiffe_ids=[s.spiffe_id for s in resp.svids],
                audience=audience,
            )
            await stream.send_message(resp)

    async def validate_jwt_svid(self, stream: Stream[Any, Any]) -> None:
        # No entry is needed to validate: only the trust bundle is used, and SPIRE's agent validates for
        # any caller (handler.go ValidateJWTSVID attests but never asks for an identity).
        async with self._call(stream, "ValidateJWTSVID"):
            request = await stream.recv_message()
            assert request is not None
            if not request.audience:
                raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
            if not request.svid:
                raise GRPCError(Status.INVALID_ARGUMENT, "svid must be specified")
            keys = {self._server.config.trust_domain: dict(self._server.ca.jwt_authorities())}
            try:
                spiffe_id, claims = validate_jwt_svid(request.svid, request.audience, keys, now=_utcnow())
            except JwtSvidError as exc:
                log.info("workload_api.jwt_svid.invalid", reason=str(exc))
                raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from exc
            resp = pb.ValidateJWTSVIDResponse(spiffe_id=str(spiffe_id))
            resp.claims.update(claims)
            await stream.send_message(resp)


class WorkloadApiServer:
    """The embedded Workload API: a :class:`LocalCa`, the entries, and one grpclib server per socket."""

    def __init__(
        self, config: Config, *, clock: Clock = _utcnow, limits: WorkloadApiLimits | None = None
    ) -> None:
        check_sockets(config)
        self._clock = clock
        self.limits = limits or WorkloadApiLimits()
        self.per_uid = PerUidCap(self.limits.max_streams_per_uid, "Workload API calls")
        self.ca = _build_ca(config, clock)
        self.attestor = UnixAttestor()
        self._snapshot = _Snapshot(0, config, {}, b"", b"", {})
        self._changed: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._listeners: list[tuple[SocketConfig, socket.socket, Server, int]] = []
        self._maintainer: asyncio.Task[None] | None = None

    # ---- state ------------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._snapshot.config

    @property
    def snapshot(self) -> _Snapshot:
        return self._snapshot

    @property
    def changed(self) -> asyncio.Event:
        """Set (and replaced) whenever a new snapshot is published."""
        assert self._changed is not None, "server not started"
        return self._changed

    @property
    def sockets(self) -> tuple[SocketConfig, ...]:
        return tuple(s for s, *_ in self._listeners)

    def _publish(self, config: Config, svids: Mapping[Entry, X509Svid]) -> None:
        federated = {
            f.trust_domain: b"".join(c.public_bytes(serialization.Encoding.DER) for c in f.certificates)
            for f in config.federation
        }
        snap = _Snapshot(
            self._snapshot.version + 1,
            config,
            dict(svids),
            self.ca.bundle_der(),
            jwks_document(self.ca.jwt_authorities()),
            federated,
        )
        self._snapshot = snap
        if self._changed is not None:
            old, self._changed = self._changed, asyncio.Event()
            old.set()
        if self._wake is not None:
            self._wake.set()

    def _svids_for(self, config: Config, *, force: bool, reason: str) -> dict[Entry, X509Svid]:
        now = self._clock()
        current = self._snapshot.svids
        out: dict[Entry, X509Svid] = {}
        minted: list[str] = []
        # Per SVID at debug (like SPIRE's agent) and one info line per batch: a JSON log line costs about a
        # third of a signature, and a forced rotation of N SVIDs would otherwise write N of them. The
        # logger is bound once per batch (not per SVID) and per-SVID fields are only built when enabled.
        batch_log = log.bind()
        enabled = getattr(batch_log, "is_enabled_for", None)  # structlog's filtering loggers have it
        per_svid = bool(enabled(logging.DEBUG)) if enabled is not None else True
        for entry in config.entries:
            old = current.get(entry)
            if old is None or force or old.rotate_at <= now:
                ttl = entry.ttl if entry.ttl is not None else config.svid_ttl
                svid = self.ca.mint_x509_svid(entry.spiffe_id, ttl, entry.dns_names)
                out[entry] = svid
                minted.append(str(entry.spiffe_id))
                if per_svid:
                    batch_log.debug(
                        "workload_api.svid.minted" if old is None else "workload_api.svid.rotated",
                        spiffe_id=minted[-1],
                        serial=f"{svid.serial:x}",
                        expires=svid.expires_at.isoformat(),
                        reason="new" if old is None else reason,
                    )
            else:
                out[entry] = old
        if minted:
            batch_log.info("workload_api.svids.issued", count=len(minted), reason=reason, spiffe_ids=minted)
        return out

    def _remint(self, reason: str) -> None:
        """Re-mint every SVID of the current config and publish them."""
        config = self._snapshot.config
        self._publish(config, self._svids_for(config, force=True, reason=reason))

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Mint every SVID, bind every socket (stale ones replaced) and start serving."""
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._remint("start")
        config = self._snapshot.config
        try:
            for sock_cfg in config.sockets:
                try:
                    sock = bind_unix_socket(sock_cfg.path, sock_cfg.mode, backlog=self.limits.backlog)
                except UnixSocketError as exc:
                    raise SocketError(f"socket {str(sock_cfg.path)!r}: {exc}") from exc
                server = Server([_Servicer(self, sock_cfg.name)], limits=self.limits)
                try:
                    await server.start(sock=sock)
                except BaseException:
                    sock.close()
                    raise
                self._listeners.append((sock_cfg, sock, server, os.stat(sock_cfg.path).st_ino))
                log.info(
                    "workload_api.listening",
                    socket=sock_cfg.name,
                    path=str(sock_cfg.path),
                    mode=f"{sock_cfg.mode:04o}",
                )
        except BaseException:
            await self.stop()
            raise
        self._maintainer = asyncio.create_task(self._maintain(), name="workload-api-maintain")
        log.info(
            "workload_api.started",
            trust_domain=config.trust_domain.name,
            entries=len(config.entries),
            sockets=[s.name for s in config.sockets],
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, end open streams, remove our socket files."""
        if self._maintainer is not None:
            self._maintainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintainer
            self._maintainer = None
        for _, _, server, _ in self._listeners:
            server.close()
        try:  # a second signal cancels the drain (sds_server.lifecycle): the sockets are removed regardless
            for _, _, server, _ in self._listeners:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), grace)
        finally:
            for sock_cfg, sock, _, inode in self._listeners:
                sock.close()
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(sock_cfg.path).st_ino == inode:  # never remove a successor's socket
                        sock_cfg.path.unlink()
            if self._listeners:
                log.info("workload_api.stopped", sockets=[s.name for s, *_ in self._listeners])
            self._listeners = []

    async def _maintain(self) -> None:
        """Rotate SVIDs at half their lifetime and the CA at half its own; push what changed."""
        assert self._wake is not None
        while True:
            snap = self._snapshot
            due = [self.ca.next_event_at(), *(s.rotate_at for s in snap.svids.values())]
            delay = min(_MAX_SLEEP, max(0.0, (min(due) - self._clock()).total_seconds()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            try:
                self._tick()
            except (WorkloadApiError, OSError) as exc:
                log.error("workload_api.maintain_failed", error=str(exc))  # noqa: TRY400 - no traceback
                await asyncio.sleep(1.0)
            except Exception:
                # A bug must not stop rotation for good: log it (traceback, no locals) and keep going.
                log.exception("workload_api.maintain_crashed")
                await asyncio.sleep(1.0)

    def _tick(self) -> None:
        before = self.ca.current
        bundle_changed = self.ca.maintain()
        rotated_ca = self.ca.current is not before
        config = self._snapshot.config
        svids = self._svids_for(config, force=rotated_ca, reason="ca_rotated" if rotated_ca else "half_life")
        if bundle_changed or any(svids[e] is not self._snapshot.svids.get(e) for e in svids):
            self._publish(config, svids)

    async def rotate_svids(self) -> None:
        """Re-mint every SVID now (new serials) and push them."""
        self._remint("forced")
        log.info("workload_api.rotated", svids=len(self.config.entries), version=self._snapshot.version)

    async def rotate_ca(self) -> None:
        """Start a new CA generation (old one stays in the bundle until expiry), re-mint and push."""
        self.ca.rotate()
        self._remint("ca_rotated")

    async def reload(self, config: Config) -> None:
        """Swap in a new config: new entries are minted, changed ones re-minted, bundles updated; push."""
        old = self._snapshot.config
        if config.trust_domain != old.trust_domain:
            raise CaError(
                f"trust_domain: {config.trust_domain.name!r}: cannot change from {old.trust_domain.name!r} "
                "while running; restart the server"
            )
        if config.sockets and set(config.sockets) != set(old.sockets):
            log.warning(
                "workload_api.config.sockets_unchanged",
                reason="sockets are bound at start; restart to change",
            )
        config = dataclasses.replace(config, sockets=old.sockets)
        check_sockets(config)
        if (config.ca, config.data_dir) != (old.ca, old.data_dir):
            self.ca = _build_ca(config, self._clock)
            svids = self._svids_for(config, force=True, reason="ca_changed")
        else:
            svids = self._svids_for(config, force=config.svid_ttl != old.svid_ttl, reason="reload")
        self._publish(config, svids)
        log.info(
            "workload_api.config.reloaded",
            entries=len(config.entries),
            federation=[f.trust_domain.name for f in config.federation],
        )


async def serve(
    config: Config,
    *,
    ready: asyncio.Event | threading.Event | None = None,
    stop: asyncio.Event | None = None,
    loader: Callable[[], Config] | None = None,
    limits: WorkloadApiLimits | None = None,
) -> None:
    """Run the server until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is not given).

    Signals (main thread only): SIGHUP reloads through ``loader`` (default: re-read ``config.source``),
    SIGUSR1 re-mints every SVID. Without ``stop``, SIGTERM/SIGINT stop it through
    :mod:`sds_server.lifecycle` (a second one exits at once, still removing the sockets).
    """
    if stop is None and threading.current_thread() is threading.main_thread():
        await until_signalled(
            lambda stop: serve(config, ready=ready, stop=stop, loader=loader, limits=limits),
            event="workload_api.stopping",
            again_event="workload_api.exit_now",
        )
        return
    loop = asyncio.get_running_loop()
    stop_event = stop if stop is not None else asyncio.Event()
    if loader is None and config.source is not None:
        loader = functools.partial(load_config, config.source)
    server = WorkloadApiServer(config, limits=limits)
    tasks: set[asyncio.Task[None]] = set()

    async def do_reload() -> None:
        if loader is None:
            log.warning("workload_api.config.reload_skipped", reason="no config file to reload")
            return
        try:
            await server.reload(loader())
        except WorkloadApiError as exc:
            log.error("workload_api.config.reload_failed", error=str(exc), keeping="running config")  # noqa: TRY400

    def spawn(coro: Callable[[], Any]) -> None:
        task = loop.create_task(coro())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        loop.add_signal_handler(signal.SIGHUP, spawn, do_reload)
        loop.add_signal_handler(signal.SIGUSR1, spawn, server.rotate_svids)
        installed += [signal.SIGHUP, signal.SIGUSR1]
    try:
        await server.start()
        if ready is not None:
            ready.set()
        await stop_event.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        for task in list(tasks):
            task.cancel()
        await server.stop()
