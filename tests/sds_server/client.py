"""A raw SDS client for protocol tests: grpclib streams speaking DiscoveryRequest/Response directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.rpc.status_pb2 import Status
from grpclib.client import Channel
from grpclib.const import Cardinality

from sds_server.secrets import SECRET_TYPE_URL

SERVICE = "/envoy.service.secret.v3.SecretDiscoveryService/"
NODE = {"id": "sidecar~127.0.0.1~test.default~default.svc.cluster.local", "cluster": "test"}
_Req = TypeVar("_Req", DiscoveryRequest, DeltaDiscoveryRequest)
_S = TypeVar("_S")


def secrets_of(resp: Any) -> dict[str, Secret]:
    out = {}
    for any_ in resp.resources:
        inner = any_.resource if hasattr(any_, "resource") and any_.HasField("resource") else any_
        s = Secret()
        assert inner.Unpack(s)
        out[s.name] = s
    return out


def sotw_request(
    names: list[str], *, version: str = "", nonce: str = "", node: str = NODE["id"], error: str | None = None
) -> DiscoveryRequest:
    """A StreamSecrets request from ``node``; with ``error`` a NACK (``error_detail``, code 3)."""
    req = DiscoveryRequest(
        resource_names=names, version_info=version, response_nonce=nonce, type_url=SECRET_TYPE_URL
    )
    return _from_node(req, node, error)


def _from_node(req: _Req, node: str, error: str | None) -> _Req:
    req.node.id = node
    if error is not None:
        req.error_detail.CopyFrom(Status(code=3, message=error))
    return req


class _Stream:
    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def recv(self, wait: float = 5.0) -> Any:
        resp = await asyncio.wait_for(self.stream.recv_message(), wait)
        assert resp is not None
        return resp

    async def nothing(self, wait: float = 0.4) -> None:
        try:
            resp = await asyncio.wait_for(self.stream.recv_message(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"expected no response, got {self._describe(resp)}")

    def _describe(self, resp: Any) -> str:
        return str(resp)


class Sotw(_Stream):
    last: DiscoveryResponse | None = None

    async def request(self, names: list[str], **kw: Any) -> None:
        """Send :func:`sotw_request` (``version``, ``nonce``, ``node``, ``error``)."""
        await self.stream.send_message(sotw_request(names, **kw))

    async def recv(self, wait: float = 5.0) -> DiscoveryResponse:
        self.last = await super().recv(wait)
        return self.last

    async def ack(self, names: list[str], resp: DiscoveryResponse | None = None) -> None:
        r = resp or self.last
        assert r is not None
        await self.request(names, version=r.version_info, nonce=r.nonce)

    def _describe(self, resp: DiscoveryResponse) -> str:
        return f"version {resp.version_info[:12]} {list(secrets_of(resp))}"


class Delta(_Stream):
    async def request(
        self,
        subscribe: Sequence[str] = (),
        unsubscribe: Sequence[str] = (),
        *,
        nonce: str = "",
        error: str | None = None,
        initial: dict[str, str] | None = None,
    ) -> None:
        req = DeltaDiscoveryRequest(
            type_url=SECRET_TYPE_URL,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        await self.stream.send_message(_from_node(req, NODE["id"], error))


@asynccontextmanager
async def channel(sock: Path) -> AsyncIterator[Channel]:
    ch = Channel(path=str(sock))
    try:
        yield ch
    finally:
        ch.close()


@asynccontextmanager
async def _open(
    ch: Channel, method: str, wrap: Callable[[Any], _S], req: Any, resp: Any
) -> AsyncIterator[_S]:
    async with ch.request(SERVICE + method, Cardinality.STREAM_STREAM, req, resp) as stream:
        yield wrap(stream)
        await stream.cancel()


def sotw(ch: Channel) -> AbstractAsyncContextManager[Sotw]:
    return _open(ch, "StreamSecrets", Sotw, DiscoveryRequest, DiscoveryResponse)


def delta(ch: Channel) -> AbstractAsyncContextManager[Delta]:
    return _open(ch, "DeltaSecrets", Delta, DeltaDiscoveryRequest, DeltaDiscoveryResponse)


async def fetch(ch: Channel, names: list[str]) -> DiscoveryResponse:
    async with ch.request(
        SERVICE + "FetchSecrets", Cardinality.UNARY_UNARY, DiscoveryRequest, DiscoveryResponse
    ) as stream:
        await stream.send_message(DiscoveryRequest(resource_names=names, type_url=SECRET_TYPE_URL), end=True)
        resp: DiscoveryResponse = await stream.recv_message()
        await stream.recv_trailing_metadata()
        return resp
