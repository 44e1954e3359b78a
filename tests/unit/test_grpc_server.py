"""Closing our grpclib server closes the connections it accepted (plain grpclib leaves them open: with
it this test times out waiting for EOF)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sds_server.grpc_server import Server

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

