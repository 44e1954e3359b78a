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
* Time changes a snapshot without any update, so one loop timer (:meth:`SnapshotPublisher.next_change`)
  rebuilds it at the next moment the clock alone changes what is servable:

  - an SVID reaching ``NotAfter`` is dropped: an expired SVID is never served, even while the stream is
    down and the last snapshot keeps being served (loud ``svid.expired.withheld`` error + metric);
  - an SVID whose ``NotBefore`` is still ahead is held (``svid.pending``, logged once per SVID): the
    previous secrets under its names keep being served (:meth:`SecretSnapshot.carry`) until it becomes
    valid, when the rebuild serves it.
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

from sds_server.snapshot import NOT_BEFORE_GRACE, Bundle, ResourceNames, SecretSnapshot, Svid
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
    """What the server needs of a source: start on its loop, deliver servable snapshots, stop."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def subscribe(self, callback: Subscriber) -> None: ...

    async def aclose(self) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _zulu(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SnapshotPublisher:
    """Holds the current snapshot, rebuilds it from material (and when time changes it), notifies
    subscribers on the loop."""

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
        self._reported: set[tuple[str, str, int]] = set()  # (event, spiffe_id, serial) logged once
        self._subscribers: list[Subscriber] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        metrics.track_snapshot(self.current)

    def current(self) -> SecretSnapshot | None:
        """The snapshot being served (``None`` before the first Workload API update)."""
        return self._current

    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback(snapshot)`` on the loop after every swap (and now, if one exists)."""
        self._subscribers.append(callback)
        snap = self._current
        if snap is not None:
            self._call_soon(callback, snap)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to ``loop`` (from any thread): subscribers and the timer run there."""
        self._loop = loop
        self._call_soon(self._arm_timer)

    async def aclose(self) -> None:
        """Stop (on the loop): disarm the timer."""
        self._closed = True
        self._arm_timer()  # closed: cancels the timer, arms none

    def _call_soon(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback(*args)`` on the loop, from any thread (dropped before :meth:`start`)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: shutting down
                self._loop.call_soon_threadsafe(callback, *args)

    def publish(self, svids: Sequence[Svid], bundles: Sequence[Bundle]) -> None:
        """New material (from the Workload API or a test): rebuild and notify."""
        with self._lock:
            self._svids = tuple(svids)
            self._bundles = tuple(bundles)
        self.rebuild()
        self._call_soon(self._arm_timer)

    def next_change(self) -> datetime | None:
        """The next moment the clock alone changes the snapshot: the earliest ``NotAfter`` or pending
        ``NotBefore`` (less the grace the snapshot allows) still in the future.

        Decided by the clock, not by the last snapshot: an SVID that expired without changing the
        snapshot (a second SVID with the same SPIFFE ID) must not be returned again, or the timer
        would fire every few milliseconds until the next update.
        """
        now = self._clock()
        times = [t for s in self._svids for t in (s.not_after, s.valid_from() - NOT_BEFORE_GRACE) if t > now]
        if self._current is not None:  # a carried SVID (held for a pending one) expires on its own
            times += [
                t for r in self._current.resources.values() if (t := r.not_after) is not None and t > now
            ]
        return min(times) if times else None

    def _arm_timer(self) -> None:
        """(Re)arm the loop timer for :meth:`next_change` (at most 60 s ahead, then re-check)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.next_change()
        if due is None or self._closed or self._loop is None:
            return
        delay = (due - self._clock()).total_seconds() + 0.01
        self._timer = self._loop.call_later(min(max(delay, 0.0), 60.0), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.rebuild()
        self._arm_timer()

    def _first_report(self, event: str, svids: Sequence[Svid]) -> list[Svid]:
        """The SVIDs not yet logged under ``event``, marked as logged now."""
        new = [s for s in svids if (event, s.spiffe_id, s.serial) not in self._reported]
        self._reported.update((event, s.spiffe_id, s.serial) for s in new)
        return new

    def rebuild(self) -> None:
        """Build a snapshot from the held material, holding pending SVIDs' names at what was served;
        swap and notify if what it serves (or holds) changed."""
        with self._lock:
            svids = self._svids
            if not svids and not self._bundles:
                return
            previous = self._current
            now = self._clock()
            snap = SecretSnapshot.build(svids, self._bundles, self._names, now).carry(previous, now)
            if previous is not None and (previous.version, previous.pending) == (snap.version, snap.pending):
                return
            self._current = snap
            held = {(s.spiffe_id, s.serial) for s in svids}  # marks only for SVIDs still held: no growth
            self._reported = {r for r in self._reported if r[1:] in held}
            new_expired = self._first_report("svid.expired.withheld", snap.expired)
            new_pending = self._first_report("svid.pending", snap.pending)
        self._metrics.svid_pending.set(len(snap.pending))
        for s in new_expired:
            self._metrics.svids_expired_withheld.inc()
            log.error(
                "svid.expired.withheld",
                spiffe_id=s.spiffe_id,
                serial=format(s.serial, "x"),
                not_after=s.not_after.isoformat(),
                hint="the Workload API has not delivered a fresh SVID; it will not be served",
            )
        for s in new_pending:
            log.info(
                "svid.pending",
                spiffe_id=s.spiffe_id,
                serial=format(s.serial, "x"),
                not_before=s.valid_from().isoformat(),
                hint="NotBefore is ahead: served once valid, the previous SVID meanwhile",
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
        self._call_soon(self._notify, snap)

    def _notify(self, snap: SecretSnapshot) -> None:
        if snap is not self._current:
            return  # a newer one is already queued
        for callback in list(self._subscribers):
            callback(snap)


class WorkloadApiSource(SnapshotPublisher):
    """Watches a Workload API (``unix:///path`` or ``/path``) and keeps a current snapshot.

    :meth:`start` schedules the watch on the given loop (from any thread); :meth:`aclose` (on the loop)
    stops it and closes the connection.
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
        self.connected = False
        self._had_identity = False  # an SVID was ever delivered to this process
        self._denied_logged: tuple[object, ...] | None = None  # state of the last permission_denied line
        self._denied_logged_at = 0.0
        self._denied_since_logged = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        super().start(loop)

        def begin() -> None:
            if not self._closed and self._task is None:
                self._task = loop.create_task(self._supervise(), name="workload-api-watch")

        loop.call_soon_threadsafe(begin)

    async def aclose(self) -> None:
        """Stop watching (on the loop): disarm the timer, cancel the watch, close the connection."""
        await super().aclose()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_connected(False)

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self._metrics.workload_api_connected.set(1 if up else 0)

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

    async def _supervise(self) -> None:
        client: WorkloadApiClient | None = None
        try:
            while True:
                try:
                    if client is None:
                        client = WorkloadApiClient(self.address)
                    updates = client.watch_x509()
                    async with contextlib.aclosing(updates):
                        async for update in updates:
                            self._on_update(update)
                except (WorkloadApiCallError, WorkloadApiResponseError) as exc:  # the watch never ends else
                    self._report_loss(exc)
                delay = self._retry.delay(self._attempt, self._rand.random())
                self._attempt += 1
                await asyncio.sleep(delay)
                self._metrics.workload_api_reconnects.inc()
        finally:
            if client is not None:
                client.close()

    def _report_loss(self, error: WorkloadApiCallError | WorkloadApiResponseError) -> None:
        was_up = self.connected
        self._set_connected(False)
        serving = self._current is not None
        if isinstance(error, WorkloadApiResponseError):
            log.error(
                "sds.source.response.invalid",
                address=self.address,
                error=str(error),
                hint="the Workload API sent an SVID or bundle that breaks the X509-SVID profile; the "
                "previous secrets stay served; reconnecting",
                serving_cached=serving,
                attempt=self._attempt,
            )
        elif error.code == "PERMISSION_DENIED":
            self._metrics.workload_api_permission_denied.inc()
            self._report_denied(error.detail)
        elif was_up or self._attempt == 0:
            log.warning(
                "sds.source.stream.lost" if was_up else "sds.source.unavailable",
                address=self.address,
                code=error.code,
                error=error.detail,
                serving_cached=serving,
                attempt=self._attempt,
            )
        else:
            log.debug("sds.source.retry", address=self.address, code=error.code, attempt=self._attempt)

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
        why = (
            "this process had an identity and no longer has one (registration entry deleted, or its "
            "selectors changed?)"
            if self._had_identity
            else "no registration entry for this workload: no SVID was ever issued to this process"
        )
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
