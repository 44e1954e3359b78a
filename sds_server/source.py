"""Where secrets come from: a SPIFFE Workload API watched with py-spiffe, turned into snapshots.

Threading / asyncio model (read this before touching anything here):

* py-spiffe's ``WorkloadApiClient`` is blocking grpcio. :class:`WorkloadApiSource` runs one
  *supervisor thread* that connects, starts py-spiffe's X.509-context stream (py-spiffe delivers
  updates on its own daemon thread), waits for the stream to end, and reconnects with
  :class:`RetryPolicy` (exponential backoff + jitter, capped at 30 s). py-spiffe's own retry is
  switched off (``retry_connect=False``) so that every failure passes through here: logged (a
  ``PermissionDenied`` says "no registration entry for this workload"), counted, retried.
* On every update the py-spiffe thread converts the context to plain values, builds a new immutable
  :class:`~sds_server.snapshot.SecretSnapshot` and swaps the reference under a ``threading.Lock``.
  Subscribers are then called **on the asyncio loop** (``call_soon_threadsafe``), never under the lock.
* While the stream is down the last snapshot keeps being served. The supervisor also wakes when the
  earliest SVID reaches ``NotAfter`` and rebuilds the snapshot without it: an expired SVID is never
  served (loud ``svid.expired.withheld`` error + metric).

Test hook: :meth:`inject_fault` swaps the default SVID's key for one that does not match its
certificate, so a test can prove Envoy NACKs it and keeps its previous secret.
"""

from __future__ import annotations

import asyncio
import enum
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import grpc
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from spiffe import WorkloadApiClient
from spiffe.errors import PySpiffeError
from spiffe.workloadapi.x509_context import X509Context

from sds_server.metrics import Metrics
from sds_server.snapshot import Bundle, ResourceNames, SecretSnapshot, Svid

log = structlog.get_logger(__name__)

Subscriber = Callable[[SecretSnapshot], None]


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


class Fault(enum.Enum):
    """Faults a test may inject into served secrets."""

    MISMATCHED_KEY = "mismatched-key"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _pkcs8_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def svids_from_context(ctx: X509Context) -> tuple[list[Svid], list[Bundle]]:
    """Plain values from py-spiffe's X.509 context (chain PEM, PKCS#8 PEM key, sorted bundles)."""
    svids = []
    for s in ctx.x509_svids:
        chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in s.cert_chain)
        key = _pkcs8_pem(s.private_key)
        svids.append(
            Svid(
                spiffe_id=str(s.spiffe_id),
                chain_pem=chain,
                key_pem=key,
                not_after=s.leaf.not_valid_after_utc,
                serial=s.leaf.serial_number,
            )
        )
    bundles = []
    for b in ctx.x509_bundle_set.bundles:
        authorities = sorted(b.x509_authorities, key=lambda a: a.public_bytes(serialization.Encoding.DER))
        pem = b"".join(a.public_bytes(serialization.Encoding.PEM) for a in authorities)
        bundles.append(Bundle(trust_domain=b.trust_domain.name, roots_pem=pem))
    return svids, sorted(bundles, key=lambda x: x.trust_domain)


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
        self._fault: Fault | None = None
        self._fault_key = b""
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

    def inject_fault(self, fault: Fault | None) -> None:
        """Test hook: serve a broken default SVID (``Fault.MISMATCHED_KEY``) until called with ``None``."""
        with self._lock:
            self._fault = fault
            if fault is Fault.MISMATCHED_KEY:
                self._fault_key = _pkcs8_pem(ec.generate_private_key(ec.SECP256R1()))
        log.warning("source.fault", fault=None if fault is None else fault.value)
        self.rebuild()

    def publish(self, svids: Sequence[Svid], bundles: Sequence[Bundle]) -> None:
        """New material (from the Workload API or a test): rebuild and notify."""
        with self._lock:
            self._svids = tuple(svids)
            self._bundles = tuple(bundles)
        self.rebuild()

    def next_expiry(self) -> datetime | None:
        """The earliest ``NotAfter`` still in the future (the supervisor rebuilds the snapshot then).

        Decided by the clock, not by the last snapshot: an SVID that expired without changing the
        snapshot (a second SVID with the same SPIFFE ID, or one replaced by a fault) must not be
        returned again, or the supervisor would wake every few milliseconds until the next update.
        """
        now = self._clock()
        live = [s.not_after for s in self._svids if s.not_after > now]
        return min(live) if live else None

    def rebuild(self) -> None:
        """Build a snapshot from the held material; swap and notify if its content changed."""
        with self._lock:
            svids = list(self._svids)
            if self._fault is Fault.MISMATCHED_KEY and svids:
                svids[0] = replace(svids[0], key_pem=self._fault_key)
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


class StaticSource(SnapshotPublisher):
    """Secrets handed in by the caller (:meth:`publish`); for benches and protocol tests."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.attach(loop)

    def close(self) -> None:
        """Nothing to stop."""


def _status_name(exc: BaseException) -> str:
    """The gRPC status name from an error py-spiffe passes to ``on_error``.

    py-spiffe maps ``grpc.RpcError`` to ``WorkloadApiError("gRPC error: StatusCode.X")``; this edge is
    the only place that reads it.
    """
    text = str(exc)
    for code in grpc.StatusCode:
        name: str = code.name
        if f"StatusCode.{name}" in text:
            return name
    return ""


class WorkloadApiSource(SnapshotPublisher):
    """Watches a Workload API (``unix:///path`` or ``/path``) and keeps a current snapshot."""

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
        # a bare absolute path is a Unix socket; unix: addresses go to py-spiffe as they are
        self.address = "unix://" + address if address.startswith("/") else address
        self._retry = retry or RetryPolicy()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._attempt = 0
        self._rand = random.Random()  # noqa: S311 - jitter, not cryptography
        self.connected = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.attach(loop)
        self._thread = threading.Thread(target=self._supervise, name="workload-api-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _wait(self, seconds: float) -> None:
        """Sleep up to ``seconds`` (woken early by stop / stream end), rebuilding at SVID expiry."""
        deadline = self._clock().timestamp() + seconds
        while not self._stop.is_set() and not self._wake.is_set():
            now = self._clock()
            left = deadline - now.timestamp()
            if left <= 0:
                return
            expiry = self.next_expiry()
            until_expiry = left if expiry is None else max(0.0, expiry.timestamp() - now.timestamp())
            if self._wake.wait(timeout=min(left, until_expiry + 0.01, 60.0)):
                return
            if expiry is not None and self._clock() >= expiry:
                self.rebuild()

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self._metrics.workload_api_connected.set(1 if up else 0)

    def _on_update(self, ctx: X509Context) -> None:
        if not self.connected:
            self._set_connected(True)
            log.info("workload_api.connected", address=self.address)
        self._attempt = 0
        self._metrics.workload_api_updates.inc()
        svids, bundles = svids_from_context(ctx)
        self.publish(svids, bundles)

    def _supervise(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                self._metrics.workload_api_reconnects.inc()
            first = False
            self._wake.clear()
            errors: list[BaseException] = []

            def on_error(exc: Exception, box: list[BaseException] = errors) -> None:
                box.append(exc)
                self._wake.set()

            client: WorkloadApiClient | None = None
            try:
                client = WorkloadApiClient(self.address)
                handle = client.stream_x509_contexts(self._on_update, on_error, retry_connect=False)
            except PySpiffeError as exc:
                errors.append(exc)
            else:
                self._wait(float("inf"))
                handle.cancel()
            if client is not None:
                client.close()
            if self._stop.is_set():
                break
            self._report_loss(errors[0] if errors else None)
            delay = self._retry.delay(self._attempt, self._rand.random())
            self._attempt += 1
            self._wake.clear()
            self._wait(delay)
        self._set_connected(False)

    def _report_loss(self, error: BaseException | None) -> None:
        was_up = self.connected
        self._set_connected(False)
        code = _status_name(error) if error is not None else ""
        serving = self._current is not None
        if code == "PERMISSION_DENIED":
            self._metrics.workload_api_permission_denied.inc()
            log.error(
                "workload_api.permission_denied",
                address=self.address,
                hint="no registration entry for this workload: the Workload API issued no SVID to this "
                "process (check the entry's selectors, e.g. unix:uid); retrying",
                attempt=self._attempt,
            )
        elif was_up or self._attempt == 0:
            log.warning(
                "workload_api.stream.lost" if was_up else "workload_api.unavailable",
                address=self.address,
                code=code or None,
                error=str(error) if error is not None else None,
                serving_cached=serving,
                attempt=self._attempt,
            )
        else:
            log.debug("workload_api.retry", address=self.address, code=code or None, attempt=self._attempt)
