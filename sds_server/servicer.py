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
* **Stale nonce** — a SotW request answering an older nonce is ignored ("When a nonce is stale"). A
  nonce on a stream's *first* request is not stale: it answers a response of a previous connection
  (go-control-plane ``sotw/server.go`` and Istio ``pilot/pkg/xds/ads.go`` ``ShouldRespond`` treat it as
  a reconnect); the request is handled as an initial one.
* **Resource names** — SDS is not a wildcard type: a stream gets exactly the names it asks for, name
  changes are honoured at once; a name we cannot serve yet is *held* (no response, never an empty
  secret) so Envoy's listener warming waits for it ("Resource warming").
* **Delta** — ``initial_resource_versions`` is honoured on a stream's first request only (xDS
  "Incremental xDS": it describes what the client holds *when the stream starts*). A re-subscribe to a
  name already subscribed is answered even when the client is up to date (the spec: the server must
  send it, the client may have dropped it). A subscribed name that does not exist is reported in
  ``removed_resources`` ("Knowing When a Requested Resource Does Not Exist", incremental variants) —
  once, and the resource is sent when it appears.
* **Unknown names** — held (no response) by default; counted in the ``sds_held_names`` gauge and
  warned about once per (stream, name) after ``held_warning_seconds``. With ``unknown_names="error"``
  a name that is neither configured, a file credential nor in the current snapshot ends the stream with
  ``INVALID_ARGUMENT`` (SPIRE ``sdsv3/handler.go`` ``buildResponse``: "workload is not authorized for
  the requested identities"). ``FetchSecrets``: no names = every resource; an unknown name =
  ``INVALID_ARGUMENT`` (SPIRE's behaviour).
* **Per-node validation** — a node whose metadata sets ``disable_spiffe_cert_validation`` (true or
  "true"; SPIRE ``isSPIFFECertValidationDisabled``) gets ``trusted_ca`` forms (snapshot ``plain``).
* **Limits** (:class:`~sds_server.limits.SdsLimits`) — names per stream and streams per caller UID are
  capped (``RESOURCE_EXHAUSTED``); a send that does not complete within ``send_timeout_seconds`` cuts
  that stream off (:func:`~sds_server.grpc_server.cut_off`) without holding anyone else up (pushes run
  per stream); the name index forgets a name when its last stream goes.
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
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpclib.const
import grpclib.exceptions
import h2.exceptions
import structlog
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from google.protobuf.message import Message
from grpclib import GRPCError
from grpclib.const import Status
from grpclib.server import Stream

from sds_server import file_credentials
from sds_server.file_credentials import FileCredentials
from sds_server.grpc_server import PerUidCap, cut_off, peer_socket, peer_uid
from sds_server.limits import SdsLimits
from sds_server.metrics import Metrics
from sds_server.secrets import SECRET_TYPE_URL, pack_secret_bytes
from sds_server.snapshot import Resource, SecretSnapshot, combined_pairs_version, combined_version

log = structlog.get_logger(__name__)

SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
_CACHE_ENTRIES = 512
DISABLE_SPIFFE_KEY = "disable_spiffe_cert_validation"  # SPIRE sdsv3 handler.go
# A dead or cut-off stream makes grpclib/h2 raise these from a send: expected, logged at debug.
_EXPECTED_PUSH_ERRORS = (
    GRPCError,
    ConnectionError,
    OSError,
    TimeoutError,
    grpclib.exceptions.StreamTerminatedError,
    grpclib.exceptions.ProtocolError,
    h2.exceptions.ProtocolError,
)


def node_disables_spiffe_validation(node: Any) -> bool:
    """SPIRE's per-node switch: metadata ``disable_spiffe_cert_validation`` as bool or "true"/"1"/..."""
    fields = node.metadata.fields
    if DISABLE_SPIFFE_KEY not in fields:
        return False
    value = fields[DISABLE_SPIFFE_KEY]
    kind = value.WhichOneof("kind")
    if kind == "string_value":  # Go strconv.ParseBool
        return value.string_value in ("1", "t", "T", "TRUE", "true", "True")
    return kind == "bool_value" and bool(value.bool_value)


@dataclass(frozen=True, slots=True)
class Nack:
    """The last NACK of a stream, for status."""

    names: tuple[str, ...]
    version: str
    message: str
    at: float  # wall clock

    def report(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "version": self.version[:16],
            "message": self.message,
            "at": self.at,
        }


@dataclass(slots=True)
class _Sent:
    nonce: str
    previous: dict[str, str | None]  # the sent names' versions before this response
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
    uid: int = -1
    plain: bool = False  # node disabled SPIFFE validation: trusted_ca forms
    first: bool = True  # no request handled yet
    grpc: Any = None  # the grpclib server Stream (to cut it off)
    task: asyncio.Task[None] | None = None  # the handler task reading this stream
    pushes: set[asyncio.Task[None]] = field(default_factory=set)  # in-flight pushes (cancelled when it ends)
    since: dict[str, float] = field(default_factory=dict)  # held name -> monotonic time subscribed
    warned: set[str] = field(default_factory=set)  # held names already warned about
    absent: set[str] = field(default_factory=set)  # delta: names reported as nonexistent
    held_timer: asyncio.TimerHandle | None = None
    last_nack: Nack | None = None
    opened: float = field(default_factory=time.time)


def _not_authorized(names: list[str]) -> GRPCError:
    """SPIRE's refusal of names it serves nothing for (``sdsv3/handler.go`` ``buildResponse``)."""
    return GRPCError(
        Status.INVALID_ARGUMENT, f"workload is not authorized for the requested identities {names!r}"
    )


def _logs_debug(logger: Any) -> bool:
    """Whether ``logger`` emits debug events (structlog's filtering loggers tell; others: assume yes)."""
    is_enabled_for = getattr(logger, "is_enabled_for", None)
    return True if is_enabled_for is None else bool(is_enabled_for(logging.DEBUG))


class SecretDiscoveryServicer:
    """The SDS service. Feed it snapshots with :meth:`update` (on the loop); grpclib calls the RPCs."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        limits: SdsLimits | None = None,
        files: FileCredentials | None = None,
    ) -> None:
        self._metrics = metrics
        self.limits = limits or SdsLimits()
        self._files = files
        if files is not None:
            files.on_change = self._push_names  # file credentials whose content changed
        self._per_uid = PerUidCap(self.limits.max_streams_per_uid, "SDS streams")
        self._snapshot: SecretSnapshot | None = None
        self._by_name: dict[str, set[_Stream]] = {}
        self._streams: set[_Stream] = set()
        self._cache: OrderedDict[tuple[object, ...], bytes] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._versions: dict[tuple[tuple[str, str], ...], str] = {}
        self.encodings = 0  # how many response encodings were built (bench/tests: shared-bytes proof)
        metrics.track_held(self.held_names)

    # ---- snapshot side -------------------------------------------------------------------------
    @property
    def snapshot(self) -> SecretSnapshot | None:
        return self._snapshot

    def update(self, snapshot: SecretSnapshot) -> None:
        """Swap in ``snapshot`` and push to streams subscribed to a name whose content changed."""
        changed = snapshot.changed_names(self._snapshot)
        self._snapshot = snapshot
        if not changed:
            return
        log.info("sds.snapshot", version=snapshot.version[:16], changed=sorted(changed))
        self._push_names(changed)

    def _push_names(self, names: Iterable[str]) -> None:
        """Push to the streams subscribed to any of ``names`` (on the loop)."""
        affected: set[_Stream] = set()
        for name in names:
            affected |= self._by_name.get(name, set())
        if not affected:
            return
        loop = asyncio.get_running_loop()
        for st in affected:
            task = loop.create_task(self._push(st))
            for tasks in (self._tasks, st.pushes):
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def _push(self, st: _Stream) -> None:
        try:
            async with st.lock:
                await self._sync(st)
        except asyncio.CancelledError:
            st.log.debug("sds.push.cancelled")
        except _EXPECTED_PUSH_ERRORS as exc:
            st.log.debug("sds.push.failed", error=type(exc).__name__)
        except Exception:
            st.log.exception("sds.push.failed")  # a bug, not a dead client: say it loudly

    # ---- resolution ----------------------------------------------------------------------------
    def _resolve(self, st: _Stream, name: str) -> Resource | None:
        if file_credentials.is_file_name(name):
            return None if self._files is None else self._files.get(name)
        snap = self._snapshot
        return None if snap is None else snap.get(name, plain=st.plain)

    def _known(self, name: str) -> bool:
        """Whether ``name`` is something this server serves (possibly not right now)."""
        snap = self._snapshot
        if snap is not None and name in (snap.names.default, snap.names.rootca, snap.names.all):
            return True
        if file_credentials.is_file_name(name):
            return self._files is not None and self._files.allowed(name)
        return snap is not None and (name in snap.resources or name in snap.plain)

    def held_names(self) -> int:
        """(stream, name) pairs subscribed but not servable now (scrape-time gauge; any thread)."""
        return sum(1 for st in list(self._streams) for name in st.ordered if self._resolve(st, name) is None)

    def plan(self, st: _Stream) -> tuple[list[Resource], list[str]]:
        """Resources to send (changed, not rejected) and names to report removed (delta only)."""
        changed: list[Resource] = []
        removed: list[str] = []
        delta = st.api == "delta"
        for name in st.ordered:
            res = self._resolve(st, name)
            if res is None:
                if name in st.known:
                    removed.append(name)
                    if delta:
                        st.absent.add(name)  # reported once; sent again when it reappears
                elif delta and name not in st.absent and self._absent_is_final(name):
                    st.absent.add(name)
                    removed.append(name)
                continue
            if delta:
                st.absent.discard(name)
            if st.known.get(name) == res.version or st.rejected.get(name) == res.version:
                continue
            changed.append(res)
        return changed, removed

    def _absent_is_final(self, name: str) -> bool:
        """Whether a missing name can be reported as nonexistent (not just: no snapshot yet)."""
        return file_credentials.is_file_name(name) or self._snapshot is not None

    async def close(self) -> None:
        """Cancel in-flight pushes and timers (server shutdown)."""
        for st in list(self._streams):
            if st.held_timer is not None:
                st.held_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- subscription index --------------------------------------------------------------------
    def _subscribe(self, st: _Stream, names: Iterable[str]) -> None:
        new = frozenset(names)
        files = self._files
        for gone in st.names - new:
            subscribers = self._by_name.get(gone)
            if subscribers is not None:
                subscribers.discard(st)
                if not subscribers:
                    del self._by_name[gone]  # the index shrinks with its streams
            st.known.pop(gone, None)
            st.rejected.pop(gone, None)
            st.since.pop(gone, None)
            st.warned.discard(gone)
            st.absent.discard(gone)
            if files is not None and file_credentials.is_file_name(gone):
                files.release(gone)
        added = new - st.names
        now = time.monotonic()
        for name in added:
            self._by_name.setdefault(name, set()).add(st)
            if files is not None and file_credentials.is_file_name(name):
                files.acquire(name)
            if self._resolve(st, name) is None:
                st.since[name] = now
        st.names = new
        st.ordered = tuple(sorted(new))
        if st.since and st.held_timer is None:
            self._arm_held_timer(st, self.limits.held_warning_seconds)

    def _arm_held_timer(self, st: _Stream, delay: float) -> None:
        st.held_timer = asyncio.get_running_loop().call_later(delay, self._warn_held, st)

    def _warn_held(self, st: _Stream) -> None:
        """One warning per (stream, name) held longer than ``held_warning_seconds``."""
        st.held_timer = None
        if st not in self._streams:
            return
        now = time.monotonic()
        wait = self.limits.held_warning_seconds
        next_due: float | None = None
        for name, since in list(st.since.items()):
            if self._resolve(st, name) is not None:
                del st.since[name]
                continue
            due = since + wait
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            del st.since[name]
            if name not in st.warned:
                st.warned.add(name)
                st.log.warning(
                    "sds.name.held",
                    name=name,
                    seconds=round(now - since, 1),
                    known=self._known(name),
                    hint="nothing to serve under this name: check --default-name/--rootca-name/"
                    "--all-name, the Workload API's SVIDs and bundles, or --file-credentials-dir",
                )
        if next_due is not None:
            self._arm_held_timer(st, max(0.05, next_due - now))

    def _check_names(self, names: frozenset[str], added: frozenset[str]) -> None:
        """Refuse more ``names`` than the per-stream cap; with ``unknown_names="error"``, also ``added``
        names this server does not serve (SPIRE's InvalidArgument)."""
        cap = self.limits.max_names_per_stream
        if len(names) > cap:
            self._metrics.refused.labels("names_per_stream").inc()
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED, f"resource_names: {len(names)} names: at most {cap} per stream"
            )
        if self.limits.unknown_names != "error" or self._snapshot is None:
            return
        unknown = sorted(n for n in added if not self._known(n))
        if unknown:
            self._metrics.refused.labels("unknown_names").inc()
            raise _not_authorized(unknown)

    def _forget(self, st: _Stream) -> None:
        if st.held_timer is not None:
            st.held_timer.cancel()
            st.held_timer = None
        # A push still waiting to be written (e.g. for flow-control window) when the stream ends — the
        # connection dropped — would otherwise wait out the send timeout and report a dead stream as a
        # client that stopped reading.
        current = asyncio.current_task()
        for task in list(st.pushes):
            if task is not current:
                task.cancel()
        self._subscribe(st, ())
        self._streams.discard(st)

    # ---- encoding (once per version, shared by streams) ---------------------------------------
    def _encoded(self, key: tuple[object, ...], build: Callable[[], Message]) -> bytes:
        data = self._cache.get(key)
        if data is None:
            data = build().SerializeToString()
            self.encodings += 1
            self._cache[key] = data
            if len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return data

    def _sotw_bytes(self, changed: list[Resource], version_info: str) -> bytes:
        key = ("sotw", version_info, *((r.name, r.version) for r in changed))
        return self._encoded(
            key,
            lambda: DiscoveryResponse(
                version_info=version_info,
                type_url=SECRET_TYPE_URL,
                resources=[pack_secret_bytes(r.secret) for r in changed],
            ),
        )

    def _delta_bytes(self, changed: list[Resource], removed: list[str], system_version: str) -> bytes:
        key = ("delta", system_version, tuple(removed), *((r.name, r.version) for r in changed))
        return self._encoded(
            key,
            lambda: DeltaDiscoveryResponse(
                system_version_info=system_version,
                type_url=SECRET_TYPE_URL,
                resources=[
                    discovery_pb2.Resource(
                        name=r.name, version=r.version, resource=pack_secret_bytes(r.secret)
                    )
                    for r in changed
                ],
                removed_resources=removed,
            ),
        )

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
        if not st.names or (snap is None and self._files is None):
            return
        changed, removed = self.plan(st)
        st.synced = snap.version if snap is not None else ""
        if st.api == "sotw":
            removed = []  # SotW: absence is not deletion for SDS; Envoy keeps what it has
        if not changed and not removed:
            return
        previous = {r.name: st.known.get(r.name) for r in changed}
        for name in removed:
            st.known.pop(name, None)
        for r in changed:
            st.known[r.name] = r.version
        nonce = str(next(st.counter))
        version_info = self._held_version(st)
        if st.api == "sotw":
            shared = self._sotw_bytes(changed, version_info)
            data = shared + DiscoveryResponse(nonce=nonce).SerializeToString()
        else:
            shared = self._delta_bytes(changed, removed, version_info)
            data = shared + DeltaDiscoveryResponse(nonce=nonce).SerializeToString()
        st.last = _Sent(nonce, previous, {r.name: r.version for r in changed}, version_info)
        try:
            async with asyncio.timeout(self.limits.send_timeout_seconds):
                await st.send(data)
        except TimeoutError:
            self._cut_off(st)
            raise
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

    def _cut_off(self, st: _Stream) -> None:
        """The client stopped reading: end its stream now (others are not held up by it)."""
        self._metrics.send_timeouts.inc()
        st.log.warning(
            "sds.stream.send_timeout",
            seconds=self.limits.send_timeout_seconds,
            uid=st.uid,
            hint="the client stopped reading; stream cut off",
        )
        if st.grpc is not None:
            cut_off(st.grpc)
        task = st.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

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
            # Sent resources are rolled back, removals are not (the client keeps or drops them as it decided).
            for name, version in last.versions.items():
                st.rejected[name] = version
                old = last.previous[name]
                if old is None:
                    st.known.pop(name, None)
                else:
                    st.known[name] = old
            st.nack_counter.inc()
            st.last_nack = Nack(
                tuple(sorted(last.versions)), last.version_info, str(error.message), time.time()
            )
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
        await self._run("sotw", stream, self._on_sotw)

    async def DeltaSecrets(self, stream: Stream[DeltaDiscoveryRequest, Any]) -> None:
        await self._run("delta", stream, self._on_delta)

    def _new_stream(self, api: str, stream: Stream[Any, Any]) -> _Stream:
        # its own function: a local of _run would live as long as the stream (the api-only logger
        # outlives its rebinding with the node ID otherwise: +0.4 KB per stream)
        m = self._metrics
        logger = log.bind(api=api)
        sock = peer_socket(stream)
        return _Stream(
            api=api,
            send=stream.send_message,
            log=logger,
            debug=_logs_debug(logger),
            sent_counter=m.responses_sent.labels(api),
            ack_counter=m.acks.labels(api),
            nack_counter=m.nacks.labels(api),
            uid=peer_uid(sock) if sock is not None else -1,
            grpc=stream,
            task=asyncio.current_task(),
        )

    async def _run(
        self, api: str, stream: Stream[Any, Any], on_request: Callable[[_Stream, Any], bool]
    ) -> None:
        m = self._metrics
        st = self._new_stream(api, stream)
        # admit/release and a plain recv loop, not a `with` block or `async for`: either keeps one more
        # frame alive per idle stream (+0.6 / +0.7 KB per stream in bench/sds_fanout.py)
        self._per_uid.admit(st.uid, self._refuse_stream)
        self._streams.add(st)
        m.streams_open.labels(api).inc()
        try:
            while (req := await stream.recv_message()) is not None:
                async with st.lock:
                    if on_request(st, req):
                        await self._sync(st)
        finally:
            self._forget(st)
            m.streams_open.labels(api).dec()
            self._per_uid.release(st.uid)
            st.log.debug("sds.stream.closed", responses=st.responses)

    def _refuse_stream(self, uid: int, count: int) -> None:
        self._metrics.refused.labels("streams_per_uid").inc()
        log.warning("sds.stream.refused", uid=uid, streams=count, reason="streams per UID")

    def _begin(self, st: _Stream, req: Any) -> tuple[bool, Any | None]:
        """Check the type, set the stream up on its first request; (first request?, ``error_detail``)."""
        self._check_type(req.type_url)
        first = st.first
        if first:
            st.first = False
            st.plain = node_disables_spiffe_validation(req.node)
            if req.node.id:
                st.node_id = req.node.id
                st.log = st.log.bind(node=st.node_id)
            st.log.debug("sds.stream.opened", plain=st.plain or None)
        return first, req.error_detail if req.HasField("error_detail") else None

    def _on_sotw(self, st: _Stream, req: DiscoveryRequest) -> bool:
        first, error = self._begin(st, req)
        if not first and not self._answer(st, req.response_nonce, error, req.version_info):
            return False
        # First request carrying a nonce: it answers a previous connection's response; not stale.
        names = frozenset(req.resource_names)
        self._check_names(names, names - st.names)
        if names == st.names and not first:
            snap = self._snapshot
            # A plain ACK with nothing new since our last plan: no work (the common case at scale).
            return error is not None or snap is None or st.synced != snap.version
        self._subscribe(st, names)
        if first and req.version_info:
            # Reconnected client: if it already holds exactly what we would send, send nothing.
            held = [r for r in (self._resolve(st, n) for n in st.ordered) if r is not None]
            if held and combined_version(held) == req.version_info:
                st.known.update({r.name: r.version for r in held})
        return True

    def _on_delta(self, st: _Stream, req: DeltaDiscoveryRequest) -> bool:
        first, error = self._begin(st, req)
        answered = first or self._answer(st, req.response_nonce, error, "")
        # Delta subscription changes are never dropped, even on a stale nonce (they are not ACKs).
        subscribe = frozenset(req.resource_names_subscribe)
        unsubscribe = frozenset(req.resource_names_unsubscribe)
        names = (st.names | subscribe) - unsubscribe
        self._check_names(names, subscribe - st.names)
        resubscribed = subscribe & st.names
        if names != st.names:
            self._subscribe(st, names)
        for name in resubscribed:
            st.known.pop(name, None)  # answered even if up to date (the client may have dropped it)
            st.absent.discard(name)
        if first:
            st.known.update({n: v for n, v in req.initial_resource_versions.items() if n in st.names})
        elif req.initial_resource_versions:
            st.log.debug("sds.delta.initial_versions_ignored", names=len(req.initial_resource_versions))
        return answered or bool(subscribe or unsubscribe)

    async def FetchSecrets(self, stream: Stream[DiscoveryRequest, Any]) -> None:
        req = await stream.recv_message()
        if req is None:
            return
        self._check_type(req.type_url)
        snap = self._snapshot
        if snap is None:
            raise GRPCError(Status.UNAVAILABLE, "no secrets yet: the Workload API has delivered nothing")
        plain = node_disables_spiffe_validation(req.node)
        names = sorted({n for n in req.resource_names if n})  # SPIRE ignores empty names
        if not names:  # SPIRE: an empty list asks for everything
            names = sorted(set(snap.resources) | set(snap.plain))
        fetched = {name: self._fetch_one(snap, name, plain) for name in names}
        missing = [name for name, res in fetched.items() if res is None]
        if missing and req.resource_names:
            raise _not_authorized(missing)
        found = [res for res in fetched.values() if res is not None]
        version_info = combined_version(found)
        nonce = DiscoveryResponse(nonce=version_info[:16]).SerializeToString()
        await stream.send_message(self._sotw_bytes(found, version_info) + nonce)
        self._metrics.responses_sent.labels("fetch").inc()

    def _fetch_one(self, snap: SecretSnapshot, name: str, plain: bool) -> Resource | None:
        files = self._files
        if not file_credentials.is_file_name(name):
            return snap.get(name, plain=plain)
        if files is None or not files.acquire(name):
            return None
        try:
            return files.get(name)
        finally:
            files.release(name)

    # ---- status --------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Every open stream: node, names, held names, versions, last NACK, certificates served."""
        out = []
        for st in sorted(self._streams, key=lambda s: (s.node_id, s.opened)):
            held, versions, certs = [], {}, {}
            for name in st.ordered:
                res = self._resolve(st, name)
                if res is None:
                    held.append(name)
                if name in st.known:
                    versions[name] = st.known[name][:16]
                if res is not None and res.serial and st.known.get(name) == res.version:
                    certs[name] = {
                        "serial": res.serial,
                        "not_after": res.not_after.isoformat() if res.not_after else None,
                    }
            out.append(
                {
                    "api": st.api,
                    "node": st.node_id,
                    "uid": st.uid,
                    "names": list(st.ordered),
                    "held": held,
                    "versions": versions,
                    "certificates": certs,
                    "responses": st.responses,
                    "plain_validation": st.plain,
                    "last_nack": None if st.last_nack is None else st.last_nack.report(),
                }
            )
        return out

    @property
    def index_size(self) -> int:
        """Distinct names in the subscription index (shrinks when streams go; tests, bench)."""
        return len(self._by_name)

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
