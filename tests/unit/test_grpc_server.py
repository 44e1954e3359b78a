"""Our grpclib server: closing closes accepted connections (plain grpclib leaves them open), the backlog
asked for applies (grpclib's start() re-listens with 100), connections that open no stream are closed, and
the grpclib internals it touches are where it expects them."""

from __future__ import annotations

import asyncio
import inspect
import socket
from pathlib import Path

import grpclib
import grpclib.protocol
import grpclib.server
import grpclib.stream

from sds_server.grpc_server import Limits, Server

# RFC 9113 §3.4: the client connection preface, then an empty SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def _peer_sees_eof_after_close(path: Path) -> bool:
    server = Server([])  # grpclib binds the running loop at construction
    await server.start(path=str(path))
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(_H2_PREFACE)
        await writer.drain()
        await asyncio.wait_for(reader.read(64), 5)  # the server's HTTP/2 SETTINGS: connection accepted
        server.close()
        await server.wait_closed()
        try:
            while await asyncio.wait_for(reader.read(4096), 1):
                pass
        except TimeoutError:
            return False
        return True
    finally:
        writer.close()
        await writer.wait_closed()


def test_close_closes_accepted_connections(short_dir: Path) -> None:
    assert asyncio.run(_peer_sees_eof_after_close(short_dir / "ours.sock"))


async def _connects_while_loop_is_blocked(path: Path, backlog: int | None, n: int) -> int:
    """How many of ``n`` connects the kernel queues while the loop accepts none (they wait in the backlog)."""
    prepared = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    prepared.bind(str(path))
    prepared.listen(1)  # grpclib's start() listens again: the backlog it passes is the one that applies
    server = Server([], limits=Limits(backlog=backlog) if backlog else None)
    await server.start(sock=prepared)
    clients = []
    ok = 0
    try:
        for _ in range(n):  # no await in this loop: nothing is accepted meanwhile
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            clients.append(c)
            try:
                c.connect(str(path))
                ok += 1
            except (BlockingIOError, ConnectionRefusedError):
                pass
    finally:
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()
    return ok


def test_listen_backlog_asked_for_applies(short_dir: Path) -> None:
    assert asyncio.run(_connects_while_loop_is_blocked(short_dir / "a.sock", 512, 400)) == 400
    # grpclib alone would have re-listened with 100
    assert asyncio.run(_connects_while_loop_is_blocked(short_dir / "b.sock", 100, 400)) < 400


async def _idle_connection_closed(path: Path) -> bool:
    server = Server([], limits=Limits(idle_connection_seconds=0.3))
    await server.start(path=str(path))
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(_H2_PREFACE)  # a connection, but never a stream
        await writer.drain()
        try:
            while await asyncio.wait_for(reader.read(4096), 3):
                pass
        except TimeoutError:
            return False
        return server.idle_closed == 1
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()


def test_connection_that_opens_no_stream_is_closed(short_dir: Path) -> None:
    assert asyncio.run(_idle_connection_closed(short_dir / "idle.sock"))


def test_grpclib_internals_we_touch_are_where_we_expect() -> None:
    """``sds_server/grpc_server.py`` relies on these grpclib 0.4.x internals; fail loudly if they move."""
    assert grpclib.__version__.startswith("0.4."), grpclib.__version__
    assert inspect.signature(grpclib.server.Server.start).parameters["backlog"].default == 100
    assert "recv_data(message_len)" in inspect.getsource(grpclib.stream.recv_message)
    assert "def accept" in inspect.getsource(grpclib.server.Handler)
    assert "self.handler = handler" in inspect.getsource(grpclib.protocol.H2Protocol)
    assert "self._transport = transport" in inspect.getsource(grpclib.protocol.Peer)
    assert "write_ready" in inspect.getsource(grpclib.protocol.Connection)
    assert "_cancel_done" in inspect.getsource(grpclib.server.Stream)
