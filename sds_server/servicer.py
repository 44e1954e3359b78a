"""``envoy.service.secret.v3.SecretDiscoveryService`` over grpclib: StreamSecrets, DeltaSecrets, FetchSecrets.

xDS rules implemented (Envoy docs, "xDS REST and gRPC protocol"):

* **Versions** — a resource's version is the sha256 of its encoded ``Secret``; a SotW response's
  ``version_info`` is the sha256 over the (name, version) pairs the client holds after applying it.
  Same content → same version → nothing re-sent.
* **Nonces** — a fresh nonce per response, a per-stream counter ("ACK and NACK semantics": a nonce only
  has to identify a response within its stream). The shared response bytes are encoded once per
  version; the nonce is a second tiny ``DiscoveryResponse`` encoding appended to them (concatenated
  protobuf encodings parse as their merge — protobuf encoding guide, "Last One Wins").
* **ACK / NACK** — a request whose ``response_nonce`` is the latest nonce is an ACK, or a NACK when
  ``error_detail`` is set. A NACK is logged with Envoy's message and counted; the rejected version of
  each resource is remembered and never sent again on that stream (no NACK loop) — a *newer* version is.
* **Stale nonce** — a SotW request answering an older nonce is ignored ("When a nonce is stale").
* **Resource names** — SDS is not a wildcard type: a stream gets exactly the names it asks for, name
  changes are honoured at once; a name we cannot serve yet is *held* (no response, never an empty
  secret) so Envoy's listener warming waits for it ("Resource warming").
* **Pushes** — on a new snapshot only streams subscribed to a name whose content changed are woken,
  and they receive only the changed resources (SDS is not a "state of the world" type: only Listener
  and Cluster must be sent whole, "Resource types ... grouped into responses").

Concurrency: everything here runs on the server's asyncio loop. One coroutine per stream reads
requests; pushes run as short tasks; a per-stream ``asyncio.Lock`` orders request handling and pushes.
No thread per stream.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpclib.const
import structlog
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Stream

from sds_server.metrics import Metrics
from sds_server.secrets import SECRET_TYPE_URL, pack_secret_bytes
from sds_server.snapshot import Resource, SecretSnapshot, combined_pairs_version, combined_version

log = structlog.get_logger(__name__)

SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
_CACHE_ENTRIES = 512


@dataclass(slots=True)
class _Sent:
    nonce: str
    previous: dict[str, str | None]
    versions: dict[str, str]
    version_info: str


@dataclass(slots=True, eq=False)
class _Stream:
    """Per-stream xDS state. ``known`` = what the client holds (optimistically, until NACKed)."""

    api: str
    send: Callable[[bytes], Any]
    names: frozenset[str] = frozenset()
    ordered: tuple[str, ...] = ()  # ``names`` sorted once per subscription change, not per push
    known: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    last: _Sent | None = None
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    node_id: str = ""
    responses: int = 0
    synced: str = ""  # snapshot version last planned against (an ACK then needs no new plan)
    log: Any = None  # structlog logger bound to api/node once per stream (hot path: no bind per event)
    debug: bool = False  # whether ``log`` emits debug events (hot path: no debug arguments built otherwise)
    sent_counter: Any = None
    ack_counter: Any = None
    nack_counter: Any = None

    def plan(self, snap: SecretSnapshot) -> tuple[list[Resource], list[str]]:
        """Resources to send (changed, not rejected) and names to report removed (delta only)."""
        changed: list[Resource] = []
        removed: list[str] = []
        for name in self.ordered:
            res = snap.get(name)
            if res is None:
                if name in self.known:
                    removed.append(name)
                continue
            if self.known.get(name) == res.version or self.rejected.get(name) == res.version:
                continue
            changed.append(res)
        return changed, removed


def _logs_debug(logger: Any) -> bool:
    """Whether ``logger`` emits debug events (structlog's filtering loggers tell; others: assume yes)."""
    is_enabled_for = getattr(logger, "is_enabled_for", None)
    return True if is_enabled_for is None else bool(is_enabled_for(logging.DEBUG))


class SecretDiscoveryServicer:
    """The SDS service. Feed it snapshots with :meth:`update` (on the loop); grpclib calls the RPCs."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._snapshot: SecretSnapshot | None = None
        self._by_name: dict[str, set[_Stream]] = {}
        self._streams: set[_Stream] = set()
        self._cache: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._versions: dict[tuple[tuple[str, str], ...], str] = {}
        self.encodings = 0  # how many response encodings were built (bench/tests: shared-bytes proof)

    # ---- snapshot side -------------------------------------------------------------------------
    @property
    def snapshot(self) -> SecretSnapshot | None:
        return self._snapshot

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def update(self, snapshot: SecretSnapshot) -> None:
        """Swap in ``snapshot`` and push to streams subscribed to a name whose content changed."""
        changed = snapshot.changed_names(self._snapshot)
        self._snapshot = snapshot
        if not changed:
            return
        affected: set[_Stream] = set()
        for name in changed:
            affected |= self._by_name.get(name, set())
        log.info(
            "sds.snapshot", version=snapshot.version[:16], changed=sorted(changed), streams=len(affected)
        )
        loop = asyncio.get_running_loop()
        for st in affected:
            task = loop.create_task(self._push(st))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _push(self, st: _Stream) -> None:
        try:
            async with st.lock:
                await self._sync(st)
        except (GRPCError, ConnectionError, asyncio.CancelledError, OSError) as exc:
            st.log.debug("sds.push.failed", error=type(exc).__name__)
        except Exception as exc:  # grpclib raises protocol-level errors of several types on a dead stream
            st.log.debug("sds.push.failed", error=type(exc).__name__)

    async def close(self) -> None:
        """Cancel in-flight pushes (server shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- subscription index --------------------------------------------------------------------
    def _subscribe(self, st: _Stream, names: Iterable[str]) -> None:
        new = frozenset(names)
        for gone in st.names - new:
            self._by_name.get(gone, set()).discard(st)
            st.known.pop(gone, None)
            st.rejected.pop(gone, None)
        for added in new - st.names:
            self._by_name.setdefault(added, set()).add(st)
        st.names = new
        st.ordered = tuple(sorted(new))

    def _forget(self, st: _Stream) -> None:
        self._subscribe(st, ())
        self._streams.discard(st)

    # ---- encoding (once per version, shared by streams) ---------------------------------------
    def _encoded(self, key: tuple[object, ...], build: Callable[[], bytes]) -> bytes:
        data = self._cache.get(key)
        if data is None:
            data = build()
            self.encodings += 1
            self._cache[key] = data
            if len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return data

    def _sotw_bytes(self, changed: list[Resource], version_info: str) -> bytes:
        key = ("sotw", version_info, *((r.name, r.version) for r in changed))

        def build() -> bytes:
            msg = DiscoveryResponse(
                version_info=version_info,
                type_url=SECRET_TYPE_URL,
                resources=[pack_secret_bytes(r.secret) for r in changed],
            )
            data: bytes = msg.SerializeToString()
            return data

        return self._encoded(key, build)

    def _delta_bytes(self, changed: list[Resource], removed: list[str], system_version: str) -> bytes:
        key = ("delta", system_version, tuple(removed), *((r.name, r.version) for r in changed))

        def build() -> bytes:
            msg = DeltaDiscoveryResponse(
                system_version_info=system_version,
                type_url=SECRET_TYPE_URL,
                resources=[
                    discovery_pb2.Resource(
                        name=r.name, version=r.version, resource=pack_secret_bytes(r.secret)
                    )
                    for r in changed
                ],
                removed_resources=removed,
            )
            data: bytes = msg.SerializeToString()
            return data

        return self._encoded(key, build)

    def _held_version(self, st: _Stream) -> str:
        """SotW ``version_info``: hash of the (name, version) pairs the client holds (cached)."""
        key = tuple((n, st.known[n]) for n in st.ordered if n in st.known)
        version = self._versions.get(key)
        if version is None:
            if len(self._versions) > _CACHE_ENTRIES:
                self._versions.clear()
            version = self._versions[key] = combined_pairs_version(key)
        return version

    # ---- the per-stream state machine ---------------------------------------------------------
    async def _sync(self, st: _Stream) -> None:
        snap = self._snapshot
        if snap is None or not st.names:
            return
        changed, removed = st.plan(snap)
        st.synced = snap.version
        if st.api == "sotw":
            removed = []  # SotW: absence is not deletion for SDS; Envoy keeps what it has
        if not changed and not removed:
            return
        previous: dict[str, str | None] = {r.name: st.known.get(r.name) for r in changed}
        for name in removed:
            previous[name] = st.known.pop(name, None)
        for r in changed:
            st.known[r.name] = r.version
        nonce = str(next(st.counter))
        if st.api == "sotw":
            version_info = self._held_version(st)
            shared = self._sotw_bytes(changed, version_info)
            data = shared + DiscoveryResponse(nonce=nonce).SerializeToString()
        else:
            version_info = snap.version
            shared = self._delta_bytes(changed, removed, version_info)
            data = shared + DeltaDiscoveryResponse(nonce=nonce).SerializeToString()
        st.last = _Sent(nonce, previous, {r.name: r.version for r in changed}, version_info)
        await st.send(data)
        st.responses += 1
        st.sent_counter.inc()
        if st.debug:
            st.log.debug(
                "sds.push",
                names=[r.name for r in changed],
                removed=removed,
                version=version_info[:16],
                nonce=nonce,
            )

    def _answer(self, st: _Stream, nonce: str, error: Any | None, version_info: str) -> bool:
        """Handle ``response_nonce`` / ``error_detail``. False when the request is stale."""
        if not nonce:
            return True
        last = st.last
        if last is None or nonce != last.nonce:
            self._metrics.stale_requests.inc()
            st.log.debug("sds.request.stale", nonce=nonce)
            return False
        if error is not None:
            st.synced = ""
            for name, old in last.previous.items():
                if name not in last.versions:
                    continue  # a removal: not repeated (the client keeps or drops it as it decided)
                st.rejected[name] = last.versions[name]
                if old is None:
                    st.known.pop(name, None)
                else:
                    st.known[name] = old
            st.nack_counter.inc()
            st.log.warning(
                "sds.nack",
                names=sorted(last.versions),
                rejected_version=last.version_info[:16],
                kept_version=version_info[:16],
                nonce=nonce,
                code=int(error.code),
                message=str(error.message),
            )
        else:
            st.ack_counter.inc()
            if st.debug:
                st.log.debug("sds.ack", version=version_info[:16], nonce=nonce)
        return True

    @staticmethod
    def _check_type(type_url: str) -> None:
        if type_url and type_url != SECRET_TYPE_URL:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"type_url: {type_url!r}: this service only serves {SECRET_TYPE_URL}"
            )

    # ---- RPCs ----------------------------------------------------------------------------------
    async def StreamSecrets(self, stream: Stream[DiscoveryRequest, Any]) -> None:
        await self._run(stream, self._new_stream("sotw", stream), self._on_sotw)

    async def DeltaSecrets(self, stream: Stream[DeltaDiscoveryRequest, Any]) -> None:
        await self._run(stream, self._new_stream("delta", stream), self._on_delta)

    def _new_stream(self, api: str, stream: Stream[Any, Any]) -> _Stream:
        m = self._metrics
        logger = log.bind(api=api)
        return _Stream(
            api=api,
            send=stream.send_message,
            log=logger,
            debug=_logs_debug(logger),
            sent_counter=m.responses_sent.labels(api),
            ack_counter=m.acks.labels(api),
            nack_counter=m.nacks.labels(api),
        )

    async def _run(
        self, stream: Stream[Any, Any], st: _Stream, on_request: Callable[[_Stream, Any], bool]
    ) -> None:
        self._streams.add(st)
        self._metrics.streams_open.labels(st.api).inc()
        try:
            while True:
                req = await stream.recv_message()
                if req is None:
                    break
                async with st.lock:
                    if on_request(st, req):
                        await self._sync(st)
        finally:
            self._forget(st)
            self._metrics.streams_open.labels(st.api).dec()
            st.log.debug("sds.stream.closed", responses=st.responses)

    def _on_sotw(self, st: _Stream, req: DiscoveryRequest) -> bool:
        self._check_type(req.type_url)
        if not st.node_id and req.node.id:
            st.node_id = req.node.id
            st.log = st.log.bind(node=st.node_id)
            st.log.debug("sds.stream.opened", names=list(req.resource_names))
        error = req.error_detail if req.HasField("error_detail") else None
        if not self._answer(st, req.response_nonce, error, req.version_info):
            return False
        names = frozenset(req.resource_names)
        if names == st.names:
            snap = self._snapshot
            # A plain ACK with nothing new since our last plan: no work (the common case at scale).
            return error is not None or snap is None or st.synced != snap.version
        self._subscribe(st, names)
        if not req.response_nonce and req.version_info and self._snapshot is not None:
            # Reconnected client: if it already holds exactly what we would send, send nothing.
            held = [r for r in (self._snapshot.get(n) for n in sorted(names)) if r is not None]
            if held and combined_version(held) == req.version_info:
                st.known.update({r.name: r.version for r in held})
        return True

    def _on_delta(self, st: _Stream, req: DeltaDiscoveryRequest) -> bool:
        self._check_type(req.type_url)
        if not st.node_id and req.node.id:
            st.node_id = req.node.id
            st.log = st.log.bind(node=st.node_id)
            st.log.debug("sds.stream.opened")
        error = req.error_detail if req.HasField("error_detail") else None
        answered = self._answer(st, req.response_nonce, error, "")
        # Delta subscription changes are never dropped, even on a stale nonce (they are not ACKs).
        names = (set(st.names) | set(req.resource_names_subscribe)) - set(req.resource_names_unsubscribe)
        if frozenset(names) != st.names:
            self._subscribe(st, names)
        for name, version in req.initial_resource_versions.items():
            if name in st.names:
                st.known[name] = version
        return answered or bool(req.resource_names_subscribe or req.resource_names_unsubscribe)

    async def FetchSecrets(self, stream: Stream[DiscoveryRequest, Any]) -> None:
        req = await stream.recv_message()
        if req is None:
            return
        self._check_type(req.type_url)
        snap = self._snapshot
        names = sorted(set(req.resource_names))
        found = [] if snap is None else [r for r in (snap.get(n) for n in names) if r is not None]
        if not found:
            raise GRPCError(Status.UNAVAILABLE, f"resource_names: {names!r}: no such secret is available yet")
        version_info = combined_version(found)
        nonce = DiscoveryResponse(nonce=version_info[:16]).SerializeToString()
        data = self._sotw_bytes(found, version_info) + nonce
        await stream.send_message(data)
        self._metrics.responses_sent.labels("fetch").inc()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        card = grpclib.const.Cardinality
        return {
            f"/{SERVICE}/StreamSecrets": grpclib.const.Handler(
                self.StreamSecrets, card.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
            ),
            f"/{SERVICE}/DeltaSecrets": grpclib.const.Handler(
                self.DeltaSecrets, card.STREAM_STREAM, DeltaDiscoveryRequest, DeltaDiscoveryResponse
            ),
            f"/{SERVICE}/FetchSecrets": grpclib.const.Handler(
                self.FetchSecrets, card.UNARY_UNARY, DiscoveryRequest, DiscoveryResponse
            ),
        }
