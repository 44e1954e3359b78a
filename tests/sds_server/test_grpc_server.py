"""Our grpclib server: closing closes accepted connections (plain grpclib leaves them open), the backlog
asked for applies (grpclib's start() re-listens with 100), connections that open no stream are closed, and
the grpclib internals it touches are where it expects them."""

from __future__ import annotations

import ast
import asyncio
import inspect
import socket
from collections.abc import Callable
from pathlib import Path

import grpclib
import grpclib.protocol
import grpclib.server
import grpclib.stream
import pytest

import sds_server
from sds_server.errors import SdsConfigError
from sds_server.grpc_server import Limits, Server
from sds_server.limits import SdsLimits
from sds_server.workload_api.errors import ConfigError
from sds_server.workload_api.server import WorkloadApiLimits

# RFC 9113 §3.4: the client connection preface, then an empty SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


async def _peer_sees_eof(path: Path, limits: Limits | None = None, *, close: bool = False) -> Server | None:
    """Open a connection that never opens a stream (``close``: then close the server); the server if the
    connection then ends (the peer reads EOF), ``None`` if it stays open."""
    server = Server([], limits=limits)  # grpclib binds the running loop at construction
    await server.start(path=str(path))
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(_H2_PREFACE)
        await writer.drain()
        await asyncio.wait_for(reader.read(64), 5)  # the server's HTTP/2 SETTINGS: connection accepted
        if close:
            server.close()
            await server.wait_closed()
        try:
            while await asyncio.wait_for(reader.read(4096), 3):
                pass
        except TimeoutError:
            return None
        return server
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()


def test_close_closes_accepted_connections(short_dir: Path) -> None:
    assert asyncio.run(_peer_sees_eof(short_dir / "ours.sock", close=True))


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


def test_connection_that_opens_no_stream_is_closed(short_dir: Path) -> None:
    server = asyncio.run(_peer_sees_eof(short_dir / "idle.sock", Limits(idle_connection_seconds=0.3)))
    assert server is not None, "the idle connection stayed open"
    assert server.idle_closed == 1


def _source(obj: object) -> str:
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


# (the internal, what in sds_server/grpc_server.py relies on it, a check that it is still there)
_INTERNALS: list[tuple[str, str, Callable[[], bool]]] = [
    ("grpclib.server.Server._protocol_factory", "Server._protocol_factory (connection tracking, caps)",
     lambda: callable(getattr(grpclib.server.Server, "_protocol_factory", None))),
    ("grpclib.server.Server.start(backlog=100)", "Server.start passes Limits.backlog",
     lambda: inspect.signature(grpclib.server.Server.start).parameters["backlog"].default == 100),
    ("grpclib.protocol.H2Protocol.handler", "Server._protocol_factory wraps handler.accept",
     lambda: "self.handler = handler" in _source(grpclib.protocol.H2Protocol)),
    ("grpclib.server.Handler.accept", "Server._protocol_factory counts streams and caps messages",
     lambda: "def accept" in _source(grpclib.server.Handler)),
    ("grpclib.stream.recv_message -> recv_data(message_len)", "Server._capped (message cap before the body)",
     lambda: "recv_data(message_len)" in _source(grpclib.stream.recv_message)),
    ("grpclib.protocol.Peer._transport", "peer_transport / peer_socket (SO_PEERCRED)",
     lambda: "self._transport = transport" in _source(grpclib.protocol.Peer)),
    ("grpclib.protocol.Connection.write_ready", "cut_off (abort when the peer stopped reading)",
     lambda: "write_ready" in _source(grpclib.protocol.Connection)),
    ("grpclib.protocol.Stream.reset_nowait", "cut_off (RST_STREAM CANCEL)",
     lambda: callable(getattr(grpclib.protocol.Stream, "reset_nowait", None))),
    ("grpclib.server.Stream._cancel_done / ._stream", "cut_off (no trailers after a cut)",
     lambda: "_cancel_done" in _source(grpclib.server.Stream)
     and "self._stream = stream" in _source(grpclib.server.Stream)),
]  # fmt: skip


def test_grpclib_is_in_the_tested_range() -> None:
    version = tuple(int(p) for p in grpclib.__version__.split(".")[:3])
    assert (0, 4, 7) <= version < (0, 5), (
        f"grpclib {grpclib.__version__} is outside the tested range >=0.4.7,<0.5 (pyproject.toml); "
        "sds_server/grpc_server.py reaches into its internals: re-check them before widening the pin"
    )


@pytest.mark.parametrize(("internal", "user", "present"), _INTERNALS, ids=[i[0] for i in _INTERNALS])
def test_grpclib_internals_we_touch_are_where_we_expect(
    internal: str, user: str, present: Callable[[], bool]
) -> None:
    """``sds_server/grpc_server.py`` — and only it — relies on these grpclib 0.4.x internals."""
    assert present(), (
        f"grpclib {grpclib.__version__} moved an internal: {internal} (used by {user} in "
        "sds_server/grpc_server.py); adapt that module and this table, or pin grpclib back"
    )


def _private_names_reached(source: str) -> set[str]:
    """Attribute names reached in code (``x._name``, ``getattr(x, "_name")``), not in docstrings."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr":
            arg = node.args[1] if len(node.args) > 1 else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
    return names


def test_grpclib_internals_are_reached_only_in_grpc_server() -> None:
    internals = {"_protocol_factory", "_transport", "_cancel_done", "_stream", "write_ready", "reset_nowait"}
    package = Path(sds_server.__file__).parent
    reaching = {
        str(f.relative_to(package))
        for f in package.rglob("*.py")
        if _private_names_reached(f.read_text()) & internals
    }
    assert reaching == {"grpc_server.py"}


def test_limits_name_every_non_positive_value_at_once() -> None:
    """Transport limits are declared once (grpc_server.Limits) and checked with each server's own."""
    with pytest.raises(SdsConfigError) as sds:
        SdsLimits(backlog=0, max_names_per_stream=-1)
    assert sds.value.problems == [
        "backlog: 0: must be positive",
        "max_names_per_stream: -1: must be positive",
    ]
    with pytest.raises(ConfigError) as wl:
        WorkloadApiLimits(idle_connection_seconds=0.0)
    assert str(wl.value) == "limits: idle_connection_seconds: 0.0: must be positive"
