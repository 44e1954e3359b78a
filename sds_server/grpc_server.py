"""Our grpclib ``Server``: the one place grpclib's internals are touched, for both of our servers.

grpclib 0.4.x (pinned by ``tests/sds_server/test_grpc_server.py``, which fails if these internals move)
leaves several gaps a server facing untrusted local clients must close:

* **Closing closes.** ``Server.close()`` stops listening and cancels handlers, but accepted connections
  stay open until each client hangs up (Python 3.11's ``asyncio.Server`` has no ``close_clients()``).
  We track the transports and close them.
* **Backlog.** ``Server.start(sock=...)`` calls ``listen()`` again with ``backlog=100`` whatever the
  socket was prepared with (measured: 277 of 500 quick connects refused). :meth:`Server.start` passes
  :attr:`Limits.backlog` on every path.
* **Message cap.** grpclib reads a message's 5-byte length prefix, then buffers that many bytes, acking
  flow control as it goes — a 64 MiB request is buffered whole. We check the announced length *before*
  the body is read and answer ``RESOURCE_EXHAUSTED`` like grpc-go (default 4 MiB receive limit,
  ``grpc.MaxRecvMsgSize``; message text from grpc-go ``rpc_util.go``: "grpc: received message larger
  than max (N vs. M)"). Unread bytes stay bounded by grpclib's HTTP/2 flow-control windows (4 MiB per
  connection), so nothing announced beyond the cap is ever buffered.
* **Idle connections.** A connection that opens no stream within :attr:`Limits.idle_connection_seconds`
  is closed (grpc-go's ``ConnectionTimeout`` covers the handshake; we have none, so the first stream is
  the handshake).
* **Cutting off a stream** (:func:`cut_off`): RST_STREAM now, or abort the connection when its socket
  no longer drains (the peer stopped reading), so a stuck client costs no one else anything.
* **Caller credentials** (:func:`peer_socket`, :func:`peer_transport`): grpclib's ``Peer`` keeps the
  connection's transport private (``Peer._transport``); these are the only readers of it. If grpclib
  renames it they return ``None`` and both servers fail closed (no caller is served unattested).
  :func:`peer_credentials` / :func:`peer_uid` read ``SO_PEERCRED`` from that socket.

And, not grpclib's but the same concern for both servers, :func:`bind_unix_socket`: a listening Unix
socket created with its mode (and owner) *before* ``listen()``, a stale socket file replaced, a live
server's socket or any other file never touched; and :class:`PerUidCap`, the open calls per caller UID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket as _socket
import stat
import struct
from asyncio import BaseTransport
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from socket import socket
from typing import Any

import h2.errors
import h2.exceptions
import structlog
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.protocol import H2Protocol
from grpclib.server import Server as _GrpclibServer
from grpclib.server import Stream

from sds_server.codec import ServerProtoCodec

__all__ = [
    "Limits",
    "PeerCredentials",
    "PerUidCap",
    "Server",
    "UnixSocketError",
    "bind_unix_socket",
    "cut_off",
    "peer_credentials",
    "peer_socket",
    "peer_transport",
    "peer_uid",
]

log = structlog.get_logger(__name__)

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Transport limits of one server; ``SdsLimits`` and ``WorkloadApiLimits`` extend it with their own."""

    # grpc-go's default receive limit (grpc.MaxRecvMsgSize): an SDS or Workload API request is a few
    # hundred bytes.
    max_message_bytes: int = 4 * MiB
    # A connection that opens no stream in this time is closed (nothing legitimate connects and waits).
    idle_connection_seconds: float = 10.0
    backlog: int = 1024

    def not_positive(self, *more: str) -> list[str]:
        """A ``<field>: <value!r>: must be positive`` line per transport limit (or ``more`` field) not > 0."""
        labels = ("max_message_bytes", "idle_connection_seconds", "backlog", *more)
        return [f"{f}: {getattr(self, f)!r}: must be positive" for f in labels if getattr(self, f) <= 0]


class PerUidCap:
    """Calls open per caller UID, at most ``cap`` each: both servers admit a call through :meth:`admit`
    (or :meth:`hold`) before its request is read, and :meth:`release` it when it ends.

    ``what`` names the calls in the ``RESOURCE_EXHAUSTED`` message: ``uid 1000: 5 <what> open: at most 5``.
    The SDS servicer calls admit/release itself: a ``hold`` block kept open for a stream's whole life costs
    a generator frame per stream (+0.6 KB per stream in ``bench/sds_fanout.py``).
    """

    def __init__(self, cap: int, what: str) -> None:
        self.cap = cap
        self._what = what
        self._open: dict[int, int] = {}

    def admit(self, uid: int, refused: Callable[[int, int], object]) -> None:
        """Count one open call of ``uid``; at the cap, ``refused(uid, count)`` and refuse it."""
        count = self._open.get(uid, 0)
        if count >= self.cap:
            refused(uid, count)
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, f"uid {uid}: {count} {self._what} open: at most {self.cap}"
            )
        self._open[uid] = count + 1

    def release(self, uid: int) -> None:
        left = self._open.pop(uid) - 1
        if left:
            self._open[uid] = left

    @contextlib.contextmanager
    def hold(self, uid: int, refused: Callable[[int, int], object]) -> Iterator[None]:
        """:meth:`admit` for the block, :meth:`release` after it."""
        self.admit(uid, refused)
        try:
            yield
        finally:
            self.release(uid)


class _Connection:
    __slots__ = ("idle_timer", "streams", "transport")

    def __init__(self) -> None:
        self.streams = 0
        self.transport: BaseTransport | None = None
        self.idle_timer: asyncio.TimerHandle | None = None

    def stop_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None


class Server(_GrpclibServer):
    """``grpclib.server.Server`` with :class:`Limits`, connection tracking and a real ``close()``."""

    def __init__(self, *args: Any, limits: Limits | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("codec", ServerProtoCodec())  # undecodable requests answered as grpc-go does
        super().__init__(*args, **kwargs)
        self.limits = limits or Limits()
        self._transports: set[BaseTransport] = set()
        self.idle_closed = 0  # connections closed for opening no stream (tests, status)
        self.oversized = 0  # messages refused for their announced length

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        made, lost = protocol.connection_made, protocol.connection_lost
        handler = protocol.handler
        accept = handler.accept
        conn = _Connection()
        limits = self.limits

        def close_if_idle() -> None:
            conn.idle_timer = None
            if conn.streams == 0 and conn.transport is not None and not conn.transport.is_closing():
                self.idle_closed += 1
                log.info("grpc.connection.idle_closed", seconds=limits.idle_connection_seconds)
                conn.transport.close()

        def connection_made(transport: BaseTransport) -> None:
            conn.transport = transport
            self._transports.add(transport)
            conn.idle_timer = asyncio.get_running_loop().call_later(
                limits.idle_connection_seconds, close_if_idle
            )
            made(transport)

        def connection_lost(exc: BaseException | None) -> None:
            if conn.transport is not None:
                self._transports.discard(conn.transport)
            conn.stop_idle_timer()
            lost(exc)

        def accepting(stream: Any, headers: Any, release_stream: Callable[[], Any]) -> None:
            conn.streams += 1
            conn.stop_idle_timer()
            stream.recv_data = self._capped(stream.recv_data)
            accept(stream, headers, release_stream)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        handler.accept = accepting  # type: ignore[method-assign]
        return protocol

    def _capped(self, recv_data: Callable[[int], Awaitable[bytes]]) -> Callable[[int], Awaitable[bytes]]:
        """``recv_data`` refusing (counted, logged) a read larger than :attr:`Limits.max_message_bytes`.

        ``grpclib.stream.recv_message`` reads the 5-byte prefix, then calls ``recv_data(length)`` with the
        announced length: refusing that call is refusing the body before a byte of it is buffered.
        """
        limit = self.limits.max_message_bytes

        async def recv(size: int) -> bytes:
            if size > limit:
                message = f"grpc: received message larger than max ({size} vs. {limit})"
                self.oversized += 1
                log.warning("grpc.message.too_large", message=message)
                raise GRPCError(Status.RESOURCE_EXHAUSTED, message)
            return await recv_data(size)

        return recv

    async def start(self, *args: Any, **kwargs: Any) -> None:
        """grpclib's ``start``, with ``backlog`` = :attr:`Limits.backlog` unless given."""
        kwargs.setdefault("backlog", self.limits.backlog)
        await super().start(*args, **kwargs)

    def close(self) -> None:
        super().close()
        for transport in list(self._transports):
            transport.close()


def peer_transport(stream_or_peer: Any) -> BaseTransport | None:
    """The asyncio transport of the connection behind a grpclib server ``Stream`` or ``Peer``.

    grpclib's ``Peer`` keeps its transport private; this is the only way to it (``None`` if it moved).
    """
    peer = stream_or_peer.peer if isinstance(stream_or_peer, Stream) else stream_or_peer
    transport: BaseTransport | None = getattr(peer, "_transport", None)
    return transport


def peer_socket(stream_or_peer: Any) -> socket | None:
    """The connection's socket of a grpclib server ``Stream`` or ``Peer`` (for ``SO_PEERCRED``)."""
    transport = peer_transport(stream_or_peer)
    sock: socket | None = transport.get_extra_info("socket") if transport is not None else None
    return sock


_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """What the kernel recorded at ``connect()`` about the process at the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket) -> PeerCredentials:
    """``SO_PEERCRED`` of a connected Unix socket (Linux)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size))
    return PeerCredentials(pid, uid, gid)


def peer_uid(sock: socket) -> int:
    """The UID of the process at the other end of a Unix socket (``SO_PEERCRED``, Linux)."""
    return peer_credentials(sock).uid


class UnixSocketError(Exception):
    """A Unix socket cannot be bound; the message is the reason (callers prefix the path their way)."""


def bind_unix_socket(path: Path, mode: int, *, owner: int | None = None, backlog: int = 1024) -> socket:
    """A listening, non-blocking Unix socket at ``path``; ``mode`` (and ``owner``) set before ``listen()``.

    * A socket file nobody accepts on (``ECONNREFUSED``: left by a crashed server) is replaced, and
      ``socket.stale_replaced`` logged.
    * A socket a live server answers on is never taken over, nor one whose state cannot be told (a full
      accept queue answers ``EAGAIN``): :class:`UnixSocketError`.
    * Anything else at the path (a regular file, a directory) is never removed.
    * Mode and owner are applied between ``bind()`` and ``listen()``: until ``listen()`` nobody can
      connect, so the socket is never reachable with a wider mode than asked for.
    """
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UnixSocketError("exists and is not a socket; refusing to replace it")
        probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        probe.settimeout(2.0)  # a live server that is not accepting must not hang us
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            log.warning("socket.stale_replaced", path=str(path))
        except OSError as exc:  # EAGAIN (backlog full), EACCES, timeout: someone may well be serving
            raise UnixSocketError(
                f"cannot tell whether another server uses this socket ({exc.strerror or exc}); "
                "refusing to replace it"
            ) from exc
        else:
            raise UnixSocketError("in use by a live server; stop it or choose another path")
        finally:
            probe.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnixSocketError(f"cannot create its directory ({exc.strerror or exc})") from exc
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(str(path))
        bound = True
        os.chmod(path, mode)
        if owner is not None:
            os.chown(path, owner, -1)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if bound:
            with contextlib.suppress(OSError):
                path.unlink()
        raise UnixSocketError(f"cannot bind ({exc.strerror or exc})") from exc
    return sock


def cut_off(stream: Stream[Any, Any]) -> None:
    """End ``stream`` now without waiting on its peer.

    A stream whose peer stopped reading cannot be ended politely (trailers wait for the socket to
    drain). If the connection's writes are paused (its socket buffer is full: the peer stopped reading
    the whole connection) the transport is aborted; otherwise only this stream is reset (RST_STREAM
    CANCEL, not flow-controlled). Either way grpclib will not try to send trailers afterwards.
    """
    inner = stream._stream
    stream._cancel_done = True
    transport = inner._transport
    if transport.is_closing():
        return
    if not inner.connection.write_ready.is_set():
        transport.abort()
        return
    try:
        inner.reset_nowait(h2.errors.ErrorCodes.CANCEL)
    except (h2.exceptions.ProtocolError, AssertionError):
        transport.abort()
