"""Where secrets come from: a SPIFFE Workload API watched on the server's asyncio loop, turned into snapshots.

Threading / asyncio model (read this before touching anything here):

* :class:`WorkloadApiSource` is one task on the server's loop (no threads): it opens a
  ``FetchX509SVID`` stream with the grpclib client in :mod:`sds_server.workload_client`, publishes
  every update, and when the stream fails or ends it reconnects with :class:`RetryPolicy`
  (exponential backoff + jitter, capped at 30 s). Every failure passes through here once: logged,
  counted, retried. A ``PermissionDenied`` is logged once per state change (not per retry; a reminder
  at most every :data:`DENIED_REMINDER_SECONDS`) and says what to check and what is still served:
  the server's own detail (SPIRE: "no identity issued"), this process's uid/gid with the
  ``spire-server entry show -selector unix:uid:<uid>`` to run, whether it ever had an identity (then
  its entry was likely deleted), and which SVID is served until when before it is withheld.
* Each update is converted to plain values (:class:`~sds_server.snapshot.Svid`,
  :class:`~sds_server.snapshot.Bundle`) by the client, then a new immutable
  :class:`~sds_server.snapshot.SecretSnapshot` is built and the reference swapped under a
  ``threading.Lock`` (uncontended on the loop; it is there because :meth:`SnapshotPublisher.publish`
  may be called from other threads — tests, the in-thread runner of :mod:`sds_server.testing`).
  Subscribers are called **on the loop** (``call_soon_threadsafe``), never under the lock.
* While the stream is down the last snapshot keeps being served. A loop timer fires when the earliest
  SVID reaches ``NotAfter`` and rebuilds the snapshot without it: an expired SVID is never served
  (loud ``svid.expired.withheld`` error + metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog

from sds_server.snapshot import Bundle, ResourceNames, SecretSnapshot, Svid
from sds_server.workload_client import (
    WorkloadApiCallError,
    WorkloadApiClient,
    WorkloadApiResponseError,
    X509Update,
)

if TYPE_CHECKING:  # the metrics module (prometheus_client) is the server's to import
    from sds_server.metrics import Metrics

log = structlog.get_logger(__name__)

Subscriber = Callable[[SecretSnapshot], None]

#: A ``PermissionDenied`` that persists unchanged is logged again at most this often.
DENIED_REMINDER_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Reconnect delays: ``min(cap, initial * multiplier**attempt)`` minus up to ``jitter`` of it.

    Every status is retried. SPIFFE Workload API spec §6.2 ("Client retry"): clients retry with
    backoff; ``PermissionDenied`` means no identity is issued to this caller *yet* (a registration
    entry may appear later), so it is retried too. ``InvalidArgument`` (a missing
    ``workload.spiffe.io`` header) cannot happen with py-spiffe, which always sets it.
    """

    initial: float = 0.2
    multiplier: float = 2.0
    cap: float = 30.0
    jitter: float = 0.5

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before reconnect ``attempt`` (0-based); ``rand`` uniform in [0, 1)."""
        base = min(self.cap, self.initial * self.multiplier ** min(attempt, 64))
        return base * (1.0 - self.jitter * rand)


class SecretSource(Protocol):
    """What the server needs of a source: start on its loop, deliver snapshots, stop."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def subscribe(self, callback: Subscriber) -> None: ...

    async def aclose(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _zulu(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SnapshotPublisher:
    """Holds the current snapshot, rebuilds it from material, notifies subscribers on the loop."""

    def __init__(
        self, names: ResourceNames, metrics: Metrics, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self._names = names
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._svids: tuple[Svid, ...] = ()
        self._bundles: tuple[Bundle, ...] = ()
        self._current: SecretSnapshot | None = None
        self._reported_expired: set[tuple[str, int]] = set()
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.track_snapshot(self.current)

    def current(self) -> SecretSnapshot | None:
        """The snapshot being served (``None`` before the first Workload API update)."""
        return self._current

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(snapshot)`` on the loop after every swap (and now, if one exists)."""
        self._subscribers.append(callback)
        snap = self._current
        if snap is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(callback, snap)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, svids: Sequence[Svid], bundles: Sequence[Bundle]) -> None:
        """New material (from the Workload API or a test): rebuild and notify."""
        with self._lock:
            self._svids = tuple(svids)
            self._bundles = tuple(bundles)
        self.rebuild()

    def next_expiry(self) -> datetime | None:
        """The earliest ``NotAfter`` still in the future (the supervisor rebuilds the snapshot then).

        Decided by the clock, not by the last snapshot: an SVID that expired without changing the
        snapshot (a second SVID with the same SPIFFE ID) must not be returned again, or the supervisor
        would wake every few milliseconds until the next update.
        """
        now = self._clock()
        live = [s.not_after for s in self._svids if s.not_after > now]
        return min(live) if live else None

    def rebuild(self) -> None:
        """Build a snapshot from the held material; swap and notify if its content changed."""
        with self._lock:
            svids = self._svids
            if not svids and not self._bundles:
                return
            snap = SecretSnapshot.build(svids, self._bundles, self._names, self._clock())
            previous = self._current
            if previous is not None and previous.version == snap.version:
                return
            self._current = snap
            new_expired = [s for s in snap.expired if (s.spiffe_id, s.serial) not in self._reported_expired]
            self._reported_expired.update((s.spiffe_id, s.serial) for s in new_expired)
        for s in new_expired:
            self._metrics.svids_expired_withheld.inc()
            log.error(
                "svid.expired.withheld",
                spiffe_id=s.spiffe_id,
                serial=format(s.serial, "x"),
                not_after=s.not_after.isoformat(),
                hint="the Workload API has not delivered a fresh SVID; it will not be served",
            )
        d = snap.default_svid
        old = previous.default_svid if previous is not None else None
        if d is not None and (old is None or old.serial != d.serial):
            log.info(
                "svid.rotated" if old is not None else "svid.received",
                spiffe_id=d.spiffe_id,
                serial=format(d.serial, "x"),
                not_after=d.not_after.isoformat(),
                version=snap.version[:16],
            )
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._notify, snap)
            except RuntimeError:  # loop closed: shutting down
                return

    def _notify(self, snap: SecretSnapshot) -> None:
        if snap is not self._current:
            return  # a newer one is already queued
        for callback in list(self._subscribers):
            callback(snap)


class WorkloadApiSource(SnapshotPublisher):
    """Watches a Workload API (``unix:///path`` or ``/path``) and keeps a current snapshot.

    :meth:`start` schedules the watch on the given loop (from any thread); :meth:`aclose` (on the loop)
    or :meth:`close` (from any other thread) stops it and closes the connection.
    """

    def __init__(
        self,
        address: str,
        names: ResourceNames,
        metrics: Metrics,
        *,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        super().__init__(names, metrics, clock=clock)
        # a bare absolute path is a Unix socket (the SPIFFE_ENDPOINT_SOCKET form is unix:///path)
        self.address = "unix://" + address if address.startswith("/") else address
        self._retry = retry or RetryPolicy()
        self._attempt = 0
        self._rand = random.Random()  # noqa: S311 - jitter, not cryptography
        self._task: asyncio.Task[None] | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.connected = False
        self._had_identity = False  # an SVID was ever delivered to this process
        self._denied_logged: tuple[object, ...] | None = None  # state of the last permission_denied line
        self._denied_logged_at = 0.0
        self._denied_since_logged = 0

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.attach(loop)

        def begin() -> None:
            if not self._closed and self._task is None:
                self._task = loop.create_task(self._supervise(), name="workload-api-watch")

        if self._on_loop():
            begin()
        else:
            loop.call_soon_threadsafe(begin)

    async def aclose(self) -> None:
        """Stop watching (on the loop): cancel the watch, close the connection, disarm the expiry timer."""
        self._closed = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_connected(False)

    def close(self) -> None:
        """Stop watching, from any thread. From another thread it waits (≤ 5 s) until the watch ended;
        on the loop's own thread it only schedules the stop (use :meth:`aclose` there)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._closed = True
            return
        if self._on_loop():
            loop.create_task(self.aclose())
            return
        with contextlib.suppress(RuntimeError, TimeoutError):  # loop stopped meanwhile / slow stop
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(5)

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self._metrics.workload_api_connected.set(1 if up else 0)

    def _arm_expiry_timer(self) -> None:
        """(Re)arm the loop timer for the earliest future ``NotAfter`` (at most 60 s ahead, then re-check)."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        expiry = self.next_expiry()
        if expiry is None or self._closed or self._loop is None:
            return
        delay = (expiry - self._clock()).total_seconds() + 0.01
        self._expiry_timer = self._loop.call_later(min(max(delay, 0.0), 60.0), self._on_expiry_timer)

    def _on_expiry_timer(self) -> None:
        self._expiry_timer = None
        self.rebuild()
        self._arm_expiry_timer()

    def _on_update(self, update: X509Update) -> None:
        if not self.connected:
            self._set_connected(True)
            log.info("sds.source.connected", address=self.address)
        self._attempt = 0
        self._denied_logged = None
        if update.svids:
            self._had_identity = True
        self._metrics.workload_api_updates.inc()
        self.publish(update.svids, update.bundles)
        self._arm_expiry_timer()

    async def _supervise(self) -> None:
        first = True
        client: WorkloadApiClient | None = None
        try:
            while True:
                if not first:
                    self._metrics.workload_api_reconnects.inc()
                first = False
                error: WorkloadApiCallError | WorkloadApiResponseError | None = None
                try:
                    if client is None:
                        client = WorkloadApiClient(self.address)
                    updates = client.watch_x509()
                    async with contextlib.aclosing(updates):
                        async for update in updates:
                            self._on_update(update)
                except (WorkloadApiCallError, WorkloadApiResponseError) as exc:
                    error = exc
                self._report_loss(error)
                delay = self._retry.delay(self._attempt, self._rand.random())
                self._attempt += 1
                await asyncio.sleep(delay)
        finally:
            if client is not None:
                client.close()

    def _report_loss(self, error: WorkloadApiCallError | WorkloadApiResponseError | None) -> None:
        was_up = self.connected
        self._set_connected(False)
        code = error.code if isinstance(error, WorkloadApiCallError) else ""
        serving = self._current is not None
        if code == "PERMISSION_DENIED":
            self._metrics.workload_api_permission_denied.inc()
            self._report_denied(error.detail if isinstance(error, WorkloadApiCallError) else "")
        elif isinstance(error, WorkloadApiResponseError):
            log.error(
                "sds.source.response.invalid",
                address=self.address,
                error=str(error),
                hint="the Workload API sent an SVID or bundle that breaks the X509-SVID profile; the "
                "previous secrets stay served; reconnecting",
                serving_cached=serving,
                attempt=self._attempt,
            )
        elif was_up or self._attempt == 0:
            log.warning(
                "sds.source.stream.lost" if was_up else "sds.source.unavailable",
                address=self.address,
                code=code or None,
                error=error.detail if isinstance(error, WorkloadApiCallError) else None,
                serving_cached=serving,
                attempt=self._attempt,
            )
        else:
            log.debug("sds.source.retry", address=self.address, code=code or None, attempt=self._attempt)

    def _serving(self) -> tuple[str, object]:
        """What is still served while the Workload API denies us: a sentence, and its state key."""
        snap = self._current
        d = snap.default_svid if snap is not None else None
        if d is not None:
            return (
                f"{d.spiffe_id} serial {d.serial:x} until {_zulu(d.not_after)}, then withholding it",
                ("serving", d.serial),
            )
        now = self._clock()
        expired = [s for s in self._svids if s.not_after <= now]
        if expired:
            s = min(expired, key=lambda s: s.not_after)
            return (
                f"no SVID: {s.spiffe_id} serial {s.serial:x} expired at {_zulu(s.not_after)} and is withheld",
                ("withheld", s.serial),
            )
        return "no SVID: none was ever received", ("none",)

    def _report_denied(self, detail: str) -> None:
        """One ``sds.source.permission_denied`` line per state change (or per reminder interval)."""
        uid, gid = os.getuid(), os.getgid()
        serving, serving_key = self._serving()
        state = (detail, self._had_identity, serving_key)
        self._denied_since_logged += 1
        now = time.monotonic()
        if state == self._denied_logged and now - self._denied_logged_at < DENIED_REMINDER_SECONDS:
            log.debug(
                "sds.source.retry", address=self.address, code="PERMISSION_DENIED", attempt=self._attempt
            )
            return
        reminder = state == self._denied_logged
        self._denied_logged, self._denied_logged_at = state, now
        denials, self._denied_since_logged = self._denied_since_logged, 0
        if self._had_identity:
            why = (
                "this process had an identity and no longer has one (registration entry deleted, or its "
                "selectors changed?)"
            )
        else:
            why = "no registration entry for this workload: no SVID was ever issued to this process"
        log.error(
            "sds.source.permission_denied",
            address=self.address,
            detail=detail,
            uid=uid,
            gid=gid,
            had_identity=self._had_identity,
            serving=serving,
            hint=f"{why}: check with `spire-server entry show -selector unix:uid:{uid}` (or the selectors "
            "the entry should match); retrying, logged again when this changes",
            denials=denials,
            reminder=reminder,
            attempt=self._attempt,
        )
