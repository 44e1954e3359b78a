"""A grpclib ``Server`` whose ``close()`` also closes the connections it accepted.

grpclib's ``Server.close()`` stops listening and cancels running handlers, but the accepted connections
(asyncio transports) stay open until each client hangs up, and Python 3.11's ``asyncio.Server`` has no
``close_clients()``. A server stopped in-process (the library API, tests) would leave them behind: a
client could keep talking to a half-stopped server, and the transports are only reclaimed by the garbage
collector. Both of our servers (SDS and the embedded Workload API) use this class so stopping means
stopped.
"""

from __future__ import annotations

from asyncio import BaseTransport
from typing import Any

from grpclib.protocol import H2Protocol
from grpclib.server import Server as _GrpclibServer

__all__ = ["Server"]


class Server(_GrpclibServer):
    """``grpclib.server.Server`` that tracks its connections and closes them on :meth:`close`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transports: set[BaseTransport] = set()

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        made, lost = protocol.connection_made, protocol.connection_lost
        mine: list[BaseTransport] = []

        def connection_made(transport: BaseTransport) -> None:
            mine.append(transport)
            self._transports.add(transport)
            made(transport)

        def connection_lost(exc: BaseException | None) -> None:
            self._transports.difference_update(mine)
            lost(exc)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol

    def close(self) -> None:
        super().close()
        for transport in list(self._transports):
            transport.close()
