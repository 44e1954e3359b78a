"""Prometheus metrics of one SDS server (its own registry, so several servers can live in one process).

Served as Prometheus text by ``--metrics 127.0.0.1:PORT`` from a small HTTP/1.x responder on the server's own
asyncio loop (not ``prometheus_client``'s WSGI thread: the SDS process stays one thread, issue 13 §4).
SVID seconds-to-expiry is computed at scrape time from the current snapshot, so it never goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from functools import partial

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sds_server.snapshot import SecretSnapshot


class _ExpiryCollector(Collector):
    def __init__(self) -> None:
        self.current: Callable[[], SecretSnapshot | None] = lambda: None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sds_svid_seconds_to_expiry",
            "Seconds until the SVID's NotAfter (negative: expired, withheld)",
            labels=["spiffe_id", "serial"],
        )
        snap = self.current()
        if snap is not None:
            now = time.time()
            for svid in snap.svids:
                left = svid.not_after.timestamp() - now
                family.add_metric([svid.spiffe_id, format(svid.serial, "x")], left)
        yield family


class _CallbackGauge(Collector):
    def __init__(self, name: str, doc: str, read: Callable[[], float]) -> None:
        self._name, self._doc, self.read = name, doc, read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self._name, self._doc, value=self.read())


_MAX_REQUEST_HEAD = 8 * 1024
_REQUEST_TIMEOUT = 5.0
_RESPONSE_HEAD = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"


class Metrics:
    """Counters and gauges named in issue 9 §3; attributes are ``prometheus_client`` metrics."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        counter, gauge = partial(Counter, registry=r), partial(Gauge, registry=r)
        self.streams_open = gauge("sds_streams_open", "Open SDS streams", ["api"])
        self.responses_sent = counter("sds_responses_sent", "SDS responses sent", ["api"])
        self.acks = counter("sds_acks", "ACKs received from SDS clients", ["api"])
        self.nacks = counter("sds_nacks", "NACKs received from SDS clients", ["api"])
        self.stale_requests = counter(
            "sds_stale_requests", "Requests ignored because their nonce is not the latest"
        )
        self.denied_connections = counter("sds_denied_callers", "Requests refused: caller UID not allowed")
        self.workload_api_connected = gauge(
            "workload_api_connected", "1 while the Workload API X.509 stream is up"
        )
        self.workload_api_reconnects = counter(
            "workload_api_reconnects", "Reconnection attempts to the Workload API"
        )
        self.workload_api_permission_denied = counter(
            "workload_api_permission_denied",
            "PermissionDenied from the Workload API (no registration entry for this workload)",
        )
        self.workload_api_updates = counter(
            "workload_api_updates", "X.509 context updates received from the Workload API"
        )
        self.svids_expired_withheld = counter(
            "sds_svid_expired_withheld", "Times an SVID past NotAfter was withheld"
        )
        self.refused = counter("sds_refused", "Streams or requests refused by a limit or policy", ["reason"])
        self.send_timeouts = counter(
            "sds_send_timeouts", "Streams cut off because the client stopped reading"
        )
        self.rotation_overdue = gauge(
            "svid_rotation_overdue", "1 while the default SVID is past its renewal point without a new one"
        )
        self.svid_pending = gauge(
            "svid_pending", "SVIDs received whose NotBefore is still ahead (not served yet)"
        )
        for reason in ("names_per_stream", "streams_per_uid", "unknown_names"):
            self.refused.labels(reason)
        self._held = _CallbackGauge(
            "sds_held_names", "(stream, name) pairs subscribed but not servable now", lambda: 0
        )
        r.register(self._held)
        for api in ("sotw", "delta"):  # export zeros from the start, not only after the first event
            self.streams_open.labels(api)
            self.acks.labels(api)
            self.nacks.labels(api)
        for api in ("sotw", "delta", "fetch"):
            self.responses_sent.labels(api)
        self._expiry = _ExpiryCollector()
        r.register(self._expiry)
        self._http: asyncio.Server | None = None

    def track_snapshot(self, current: Callable[[], SecretSnapshot | None]) -> None:
        """Where the expiry gauge reads the current snapshot from."""
        self._expiry.current = current

    def track_held(self, read: Callable[[], float]) -> None:
        """Where the ``sds_held_names`` gauge is read from at scrape time."""
        self._held.read = read

    def render(self) -> bytes:
        """Prometheus text exposition of every metric."""
        data: bytes = generate_latest(self.registry)
        return data

    async def serve(self, host: str, port: int) -> int:
        """Serve the metrics on ``host:port`` (0 = any free port) on the running loop; return the port."""
        self._http = await asyncio.start_server(self._answer, host, port, limit=_MAX_REQUEST_HEAD)
        bound: int = self._http.sockets[0].getsockname()[1]
        return bound

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One scrape per connection: read the request head (bounded in size and time), send the text."""
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method = head.split(b" ", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, body, ctype = b"405 Method Not Allowed", b"", b"text/plain"
            else:
                status, ctype = b"200 OK", CONTENT_TYPE_LATEST.encode()
                body = self.render() if method == b"GET" else b""
            writer.write(_RESPONSE_HEAD % (status, ctype, len(body)) + body)
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a slow, oversized or vanished scraper gets nothing; others are unaffected
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._http is not None:
            self._http.close()
            await self._http.wait_closed()
            self._http = None
