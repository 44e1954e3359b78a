"""The library API in-process: ``WorkloadApiServer`` lifecycle, CA rotation pushed to open streams, and
logs that never carry key material over a rotation."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from spiffe import TrustDomain, WorkloadApiClient
from spiffe.workloadapi.x509_context import X509Context

import sds_server.workload_api as workload_api
import sds_server.workload_api.server as server_module
from sds_server.workload_api import SocketConfig, WorkloadApiServer, parse_config, serve
from tests.support.tmp import short_dir
from tests.support.workload_api import UID, entry, wait_for

A = "spiffe://example.org/a"


class InThread:
    """A WorkloadApiServer on its own event loop in a (joined) thread, driven from the test."""

    def __init__(self, server: WorkloadApiServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="wl-api")

    def _run(self) -> None:
        async def main() -> None:
            await self.server.start()
            self._ready.set()
            await self._stop.wait()
            await self.server.stop()

        try:
            self.loop.run_until_complete(main())
        except BaseException as exc:  # surfaced to the test in call()/close()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    def call(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        asyncio.run_coroutine_threadsafe(make(), self.loop).result(30)

    def __enter__(self) -> InThread:
        self.thread.start()
        assert self._ready.wait(30)
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        if self._error:
            raise self._error


def _config(sock: Path) -> workload_api.Config:
    return parse_config(
        {"trust_domain": "example.org", "entries": [entry(A, UID)]},
        base=sock.parent,
        sockets=[SocketConfig("default", sock)],
    )


def test_public_names_are_pinned() -> None:
    assert workload_api.__all__ == sorted(workload_api.__all__)
    assert set(workload_api.__all__) == {
        "CaError",
        "Config",
        "ConfigError",
        "Entry",
        "JwtSvidError",
        "LocalCa",
        "SocketConfig",
        "SocketError",
        "Upstream",
        "WorkloadApiError",
        "WorkloadApiServer",
        "X509Svid",
        "load_config",
        "parse_config",
        "serve",
    }


def test_ca_rotation_is_pushed_with_overlapping_bundle_and_no_key_material_in_logs() -> None:
    with short_dir() as d, structlog.testing.capture_logs() as logs:
        sock = d / "api.sock"
        with (
            InThread(WorkloadApiServer(_config(sock))) as running,
            WorkloadApiClient("unix://" + str(sock)) as client,
        ):
            updates: list[X509Context] = []
            handler = client.stream_x509_contexts(updates.append, lambda exc: None)
            try:
                first = wait_for(lambda: updates[:1], 10, "first X.509 context")[0]
                running.call(running.server.rotate_ca)
                second = wait_for(lambda: updates[1:2], 10, "the CA rotation push")[0]
            finally:
                handler.cancel()
            jwt_keys = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TrustDomain("example.org"))
            keys = [svid.private_key for svid in (first.default_svid, second.default_svid)]
            keys += [g.key for g in running.server.ca.generations]
            keys += [g.jwt_key.private_key for g in running.server.ca.generations]
        td = TrustDomain("example.org")
        old_bundle = first.x509_bundle_set.get_bundle_for_trust_domain(td)
        new_bundle = second.x509_bundle_set.get_bundle_for_trust_domain(td)
        assert old_bundle is not None
        assert new_bundle is not None
        assert len(old_bundle.x509_authorities) == 1
        assert len(new_bundle.x509_authorities) == 2  # old and new CA until the old expires
        assert old_bundle.x509_authorities < new_bundle.x509_authorities
        newest = running.server.ca.current.certificate
        assert second.default_svid.leaf.issuer == newest.subject  # signed by the newest CA
        assert jwt_keys is not None
        assert len(jwt_keys.jwt_authorities) == 2
    assert not sock.exists()  # removed on stop
    events = {e["event"] for e in logs}
    expected = {"ca.rotated", "svid.rotated", "started", "stopped"}
    assert {f"workload_api.{e}" for e in expected} <= events
    secrets = []
    for key in keys:
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        secrets += [base64.b64encode(der).decode()[:48], der.hex()[:48]]
    text = repr(logs)
    assert "PRIVATE KEY" not in text
    assert not [s for s in secrets if s in text]


def test_serve_with_ready_and_stop_events() -> None:
    with short_dir() as d:
        sock = d / "api.sock"
        config = _config(sock)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        stop = asyncio.Event()
        thread = threading.Thread(
            target=lambda: loop.run_until_complete(serve(config, ready=ready, stop=stop))
        )
        thread.start()
        try:
            assert ready.wait(30)
            with WorkloadApiClient("unix://" + str(sock)) as client:
                assert str(client.fetch_x509_svid().spiffe_id) == A
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(30)
            loop.close()
        assert not thread.is_alive()
        assert not sock.exists()


def test_reload_cannot_change_the_trust_domain() -> None:
    with short_dir() as d:
        sock = d / "api.sock"
        with InThread(WorkloadApiServer(_config(sock))) as running:
            other = parse_config(
                {"trust_domain": "other.org"}, base=d, sockets=[SocketConfig("default", sock)]
            )
            with pytest.raises(workload_api.CaError, match=r"^trust_domain: 'other.org': cannot change"):
                running.call(lambda: running.server.reload(other))


def test_log_event_catalogue_is_whole() -> None:
    """Every event the embedded Workload API logs is in the catalogue of its server module, and only those."""
    package = Path(server_module.__file__).parent
    logged = {
        m for f in package.glob("*.py") for m in re.findall(r'"(workload_api\.[a-z_.]+)"', f.read_text())
    }
    doc = server_module.__doc__ or ""
    catalogue = doc.split("**Log events**", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"``(workload_api\.[a-z_.]+)``", catalogue))
    assert logged == listed
