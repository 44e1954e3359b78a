"""The Workload API watcher on grpclib (``sds_server.workload_client`` + ``sds_server.source``).

Peers are real: the embedded Workload API (``meshbridge workload-api serve``) as a subprocess, py-spiffe
as the reference client for what a workload should see, and, for responses no honest server sends, a
grpclib ``SpiffeWorkloadAPI`` server on a Unix socket in this test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager, closing
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from grpclib import GRPCError
from grpclib.const import Cardinality, Handler, Status
from grpclib.server import Stream

from sds_server.grpc_server import Server
from sds_server.metrics import Metrics
from sds_server.snapshot import ResourceNames, SecretSnapshot
from sds_server.source import RetryPolicy, WorkloadApiSource
from sds_server.workload_client import (
    FETCH_X509_SVID,
    WorkloadApiCallError,
    WorkloadApiClient,
    WorkloadApiResponseError,
    X509Update,
    x509_update_from_response,
)
from sds_server.workload_proto import X509SVID, X509SVIDRequest, X509SVIDResponse
from tests.sds_server.wl import MESH_ID, fetch_identity, mesh_config
from tests.support.pki import Issued, MiniCa
from tests.support.workload_api import running_workload_api

FAST_RETRY = RetryPolicy(initial=0.05, multiplier=2.0, cap=0.5, jitter=0.0)


async def _first(client: WorkloadApiClient, count: int = 1) -> list[X509Update]:
    out: list[X509Update] = []
    async with aclosing(client.watch_x509()) as updates, asyncio.timeout(20):
        async for update in updates:
            out.append(update)
            if len(out) == count:
                break
    return out


def _federated_config(tmp_path: Path, partner: MiniCa) -> dict[str, Any]:
    bundle_file = tmp_path / "partner.pem"
    bundle_file.write_bytes(partner.roots_pem)
    cfg = mesh_config(federation={"partner.org": str(bundle_file)})
    for entry in cfg["entries"]:
        entry["federates_with"] = ["partner.org"]
    return cfg


def test_client_sees_what_py_spiffe_sees_including_federated_bundles(tmp_path: Path) -> None:
    partner = MiniCa.create("partner.org")
    cfg = _federated_config(tmp_path, partner)
    with running_workload_api(cfg, tmp_path / "wl", sockets=("mesh", "ext")) as api:
        reference = fetch_identity(api.address("mesh"))  # py-spiffe, the test peer

        async def ours() -> tuple[X509Update, dict[str, bytes]]:
            with closing(WorkloadApiClient(api.address("mesh"))) as client:
                (update,) = await _first(client)
                async with asyncio.timeout(20):
                    bundles = await client.fetch_x509_bundles()
            return update, {b.trust_domain: b.roots_pem for b in bundles}

        update, fetched_bundles = asyncio.run(ours())
    (svid,) = update.svids
    assert svid.spiffe_id == reference.spiffe_id == MESH_ID
    assert svid.chain_pem == reference.chain_pem
    assert svid.key_pem == reference.key_pem
    assert svid.serial == reference.serial
    assert svid.not_before is not None
    assert svid.not_before < svid.not_after
    assert [b.trust_domain for b in update.bundles] == ["example.org", "partner.org"]
    assert {b.trust_domain: b.roots_pem for b in update.bundles} == reference.bundles
    assert reference.bundles["partner.org"] == partner.roots_pem
    assert fetched_bundles == reference.bundles


def test_rotation_arrives_on_the_open_stream(tmp_path: Path) -> None:
    with running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api:

        async def scenario() -> list[X509Update]:
            with closing(WorkloadApiClient(api.address("mesh"))) as client:
                async with aclosing(client.watch_x509()) as updates, asyncio.timeout(30):
                    first = await anext(updates)
                    await asyncio.to_thread(api.rotate)
                    return [first, await anext(updates)]

        first, second = asyncio.run(scenario())
    assert first.svids[0].spiffe_id == second.svids[0].spiffe_id == MESH_ID
    assert first.svids[0].serial != second.svids[0].serial


def test_permission_denied_and_unreachable_socket_are_mapped_to_status_names(
    tmp_path: Path, short_dir: Path
) -> None:
    nobody = mesh_config()
    for entry in nobody["entries"]:
        entry["selectors"] = [f"unix:uid:{os.getuid() + 4242}"]

    async def code_of(address: str) -> str:
        with closing(WorkloadApiClient(address)) as client, pytest.raises(WorkloadApiCallError) as info:
            await _first(client)
        return info.value.code

    with running_workload_api(nobody, tmp_path / "wl", sockets=("mesh", "ext")) as api:
        assert asyncio.run(code_of(api.address("mesh"))) == "PERMISSION_DENIED"
    assert asyncio.run(code_of(f"unix://{short_dir}/absent.sock")) == "UNAVAILABLE"


# ---- responses an honest server never sends --------------------------------------------------------


def _der_key(issued: Issued) -> bytes:
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _response(ca: MiniCa, issued: Issued, **override: bytes) -> Any:
    fields = {
        "spiffe_id": issued.spiffe_id,
        "x509_svid": issued.cert.public_bytes(serialization.Encoding.DER),
        "x509_svid_key": _der_key(issued),
        "bundle": ca.cert.public_bytes(serialization.Encoding.DER),
        **override,
    }
    return X509SVIDResponse(svids=[X509SVID(**fields)])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"x509_svid": b"\x30\x03\x02\x01"}, "svids[0].x509_svid: byte 0: truncated certificate"),
        ({"x509_svid": b"\x04\x01\x00"}, "svids[0].x509_svid: byte 0: expected an ASN.1 DER SEQUENCE"),
        ("ca-as-leaf", "svids[0].x509_svid: chain[0] URI SAN: 'spiffe://example.org': a workload SPIFFE ID"),
        ({"x509_svid_key": b"\x30\x00"}, "svids[0].x509_svid_key: "),
        ({"bundle": b"\x30\x82\x00"}, "svids[0].bundle: byte 0: bad ASN.1 DER length"),
    ],
    ids=["truncated", "not-a-sequence", "ca-as-leaf", "bad-key", "bad-bundle"],
)
def test_invalid_responses_are_refused_naming_the_field(
    ca: MiniCa, override: dict[str, bytes] | str, message: str
) -> None:
    issued = ca.issue("/ns/default/sa/w")
    if override == "ca-as-leaf":
        override = {"x509_svid": ca.cert.public_bytes(serialization.Encoding.DER)}
    assert isinstance(override, dict)
    with pytest.raises(WorkloadApiResponseError) as info:
        x509_update_from_response(_response(ca, issued, **override))
    assert str(info.value).startswith(message), str(info.value)


def test_bad_federated_trust_domain_key_is_refused(ca: MiniCa) -> None:
    resp = _response(ca, ca.issue("/w"))
    resp.federated_bundles["spiffe://Bad Domain"] = ca.cert.public_bytes(serialization.Encoding.DER)
    with pytest.raises(WorkloadApiResponseError) as info:
        x509_update_from_response(resp)
    assert str(info.value).startswith("federated_bundles['spiffe://Bad Domain']: "), str(info.value)


class _ScriptedWorkloadApi:
    """A grpclib ``SpiffeWorkloadAPI`` that sends what the test queues (a ``GRPCError`` ends the call)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.calls = 0
        self.called = asyncio.Event()
        self.headers: list[str | None] = []

    async def fetch(self, stream: Stream[Any, Any]) -> None:
        self.calls += 1
        self.called.set()
        header = stream.metadata.get("workload.spiffe.io") if stream.metadata is not None else None
        self.headers.append(header if isinstance(header, str) else None)
        if header != "true":
            raise GRPCError(Status.INVALID_ARGUMENT, "security header missing from request")
        await stream.recv_message()
        while True:
            item = await self.queue.get()
            if isinstance(item, GRPCError):
                raise item
            await stream.send_message(item)

    def __mapping__(self) -> dict[str, Handler]:
        return {
            FETCH_X509_SVID: Handler(self.fetch, Cardinality.UNARY_STREAM, X509SVIDRequest, X509SVIDResponse)
        }


@asynccontextmanager
async def _scripted(path: Path) -> AsyncIterator[_ScriptedWorkloadApi]:
    api = _ScriptedWorkloadApi()
    server = Server([api])
    await server.start(path=str(path))
    try:
        yield api
    finally:
        server.close()
        await server.wait_closed()


async def _calls(api: _ScriptedWorkloadApi, n: int) -> None:
    async with asyncio.timeout(20):
        while api.calls < n:
            api.called.clear()
            await api.called.wait()


async def _next_snapshot(q: asyncio.Queue[SecretSnapshot]) -> SecretSnapshot:
    async with asyncio.timeout(20):
        return await q.get()


def test_source_keeps_serving_through_an_invalid_update_and_a_permission_denied(
    short_dir: Path, ca: MiniCa
) -> None:
    """A broken update is refused whole (logged once, previous secrets kept), the stream is re-opened
    with backoff; PermissionDenied is counted and retried; the next good update is served."""
    first, second = ca.issue("/ns/default/sa/w"), ca.issue("/ns/default/sa/w")
    bad = {"x509_svid": ca.cert.public_bytes(serialization.Encoding.DER)}
    metrics = Metrics()

    async def scenario() -> None:
        async with _scripted(short_dir / "api.sock") as api:
            source = WorkloadApiSource(
                str(short_dir / "api.sock"), ResourceNames(), metrics, retry=FAST_RETRY
            )
            snaps: asyncio.Queue[SecretSnapshot] = asyncio.Queue()
            source.start(asyncio.get_running_loop())
            source.subscribe(snaps.put_nowait)
            try:
                await api.queue.put(_response(ca, first))
                snap = await _next_snapshot(snaps)
                assert snap.default_svid is not None
                assert snap.default_svid.serial == first.serial
                await api.queue.put(_response(ca, second, **bad))
                await _calls(api, 2)  # the client refused it and opened a new stream
                assert source.current() is snap  # the previous secrets are still served
                await api.queue.put(GRPCError(Status.PERMISSION_DENIED, "no identity issued"))
                await _calls(api, 3)
                await api.queue.put(_response(ca, second))
                snap = await _next_snapshot(snaps)
                assert snap.default_svid is not None
                assert snap.default_svid.serial == second.serial
                assert api.calls == 3
                assert api.headers == ["true"] * 3
            finally:
                await source.aclose()
            assert not source.connected

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
    events = [e["event"] for e in logs]
    assert events.count("sds.source.response.invalid") == 1
    invalid = next(e for e in logs if e["event"] == "sds.source.response.invalid")
    assert invalid["log_level"] == "error"
    assert invalid["serving_cached"] is True
    assert "a workload SPIFFE ID needs a path" in invalid["error"]
    assert events.count("sds.source.permission_denied") == 1
    assert metrics.workload_api_permission_denied._value.get() == 1
    assert metrics.workload_api_reconnects._value.get() == 2
    assert metrics.workload_api_updates._value.get() == 2
    assert metrics.workload_api_connected._value.get() == 0


def test_source_reconnects_after_the_workload_api_restarts(tmp_path: Path) -> None:
    with running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api:

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            source = WorkloadApiSource(api.address("mesh"), ResourceNames(), Metrics(), retry=FAST_RETRY)
            snaps: asyncio.Queue[SecretSnapshot] = asyncio.Queue()
            source.start(loop)
            source.subscribe(snaps.put_nowait)
            try:
                before = (await _next_snapshot(snaps)).default_svid
                await loop.run_in_executor(None, api.restart)  # a new CA: new bundle, new SVID
                after = (await _next_snapshot(snaps)).default_svid
                assert before is not None
                assert after is not None
                assert before.serial != after.serial
                assert source.connected
            finally:
                await source.aclose()

        with structlog.testing.capture_logs() as logs:
            asyncio.run(scenario())
    events = [e["event"] for e in logs]
    assert events.count("sds.source.stream.lost") == 1, events
    assert events.count("sds.source.connected") == 2, events


SOURCE_ALONE = r"""
import asyncio, sys, threading
from sds_server.metrics import Metrics
from sds_server.snapshot import ResourceNames
from sds_server.source import WorkloadApiSource

async def main():
    source = WorkloadApiSource(sys.argv[1], ResourceNames(), Metrics())
    got = asyncio.Event()
    source.start(asyncio.get_running_loop())
    source.subscribe(lambda snap: got.set())
    await asyncio.wait_for(got.wait(), 20)
    loaded = sorted(m for m in sys.modules if m == "grpc" or m.startswith(("grpc.", "spiffe")))
    print(threading.active_count(), loaded)
    await source.aclose()

asyncio.run(main())
"""


def test_source_runs_on_the_loop_alone_without_grpcio_or_py_spiffe(tmp_path: Path) -> None:
    """In a fresh process: the watcher gets its first snapshot with one thread and neither grpcio nor
    any ``spiffe`` module imported."""
    with running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api:
        res = subprocess.run(
            [sys.executable, "-c", SOURCE_ALONE, api.address("mesh")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=Path(__file__).resolve().parents[2],
        )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1].split() == ["1", "[]"], res.stdout  # structlog prints above it


def test_source_messages_are_py_spiffes_workload_proto_field_for_field() -> None:
    """Our private-pool messages and py-spiffe's generated ones describe the same wire format."""
    from spiffe._proto import workload_pb2  # noqa: PLC0415 - the test peer, only here

    from sds_server import workload_proto  # noqa: PLC0415

    def shape(desc: Any) -> list[tuple[str, int, int, bool, str]]:
        return [
            (f.name, f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else "")
            for f in desc.fields
        ]

    for name in workload_proto.__all__:
        ours, theirs = getattr(workload_proto, name).DESCRIPTOR, getattr(workload_pb2, name).DESCRIPTOR
        assert ours.full_name == theirs.full_name
        assert shape(ours) == shape(theirs), name
    assert sorted(workload_proto.__all__) == sorted(workload_pb2.DESCRIPTOR.message_types_by_name)
