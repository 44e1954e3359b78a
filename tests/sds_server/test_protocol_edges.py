"""Edge cases of the xDS protocol and the server's limits, with raw grpclib clients on the real socket
(issue 13 §2, §3): first-request nonces, Delta initial versions / re-subscribe / nonexistent names, unknown
names, FetchSecrets, per-node validation, caps, slow readers, NotBefore, rotation overdue."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import struct_pb2
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import ProtocolError, StreamTerminatedError

from sds_server.codec import PassThroughProtoCodec
from sds_server.limits import SdsLimits
from sds_server.server import ServerConfig
from sds_server.snapshot import Bundle, ResourceNames
from sds_server.status import fetch_status, probe
from sds_server.testing import RunningServer, run_in_thread
from tests.sds_server.client import NODE, SERVICE, channel, delta, fetch, secrets_of, sotw, sotw_request
from tests.support.pki import MiniCa


@pytest.fixture
def make_server(short_dir: Path) -> Iterator[object]:
    stack: list[object] = []

    def start(**kw: object) -> RunningServer:
        names = kw.pop("names", ResourceNames())
        cm = run_in_thread(ServerConfig(listen=short_dir / "sds.sock", names=names, **kw))  # type: ignore[arg-type]
        running = cm.__enter__()
        stack.append(cm)
        return running

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


async def _refusal(ch: Channel, names: list[str]) -> GRPCError:
    """The error a StreamSecrets call asking for ``names`` (then closing its side) ends with."""
    async with ch.request(
        SERVICE + "StreamSecrets", Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
    ) as stream:
        try:
            await stream.send_message(sotw_request(names), end=True)
            await asyncio.wait_for(stream.recv_message(), 5)
            await stream.recv_trailing_metadata()
        except GRPCError as exc:
            return exc
    raise AssertionError("the call was not refused")


def _publish(server: RunningServer, ca: MiniCa, *paths: str, **kw: object) -> None:
    server.server.source.publish([ca.issue(p, **kw).svid() for p in paths], [ca.bundle()])  # type: ignore[arg-type]
    server.wait_first_secret(10)


def test_nonce_on_a_first_request_is_not_stale(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca, "/w")

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, sotw(ch) as s:
            await s.request(["default"], version="old", nonce="nonce-of-a-previous-connection")
            assert list(secrets_of(await s.recv())) == ["default"]

    asyncio.run(scenario())


def test_delta_initial_versions_only_first_resubscribe_answered_nonexistent_removed(
    static_server: RunningServer, ca: MiniCa
) -> None:
    _publish(static_server, ca, "/w")
    snap = static_server.server.servicer.snapshot
    assert snap is not None
    rootca_version = snap.get("ROOTCA").version  # type: ignore[union-attr]

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, delta(ch) as d:
            await d.request(["default"])
            first = await d.recv()
            assert [r.name for r in first.resources] == ["default"]
            await d.request(nonce=first.nonce)
            # initial_resource_versions after the first request are ignored: ROOTCA is still sent
            await d.request(["ROOTCA"], initial={"ROOTCA": rootca_version})
            second = await d.recv()
            assert [r.name for r in second.resources] == ["ROOTCA"]
            await d.request(nonce=second.nonce)
            # re-subscribing to an up-to-date name is answered
            await d.request(["default"])
            third = await d.recv()
            assert [r.name for r in third.resources] == ["default"]
            await d.request(nonce=third.nonce)
            # a name that does not exist is reported in removed_resources, once
            await d.request(["spiffe://example.org/nobody"])
            fourth = await d.recv()
            assert list(fourth.removed_resources) == ["spiffe://example.org/nobody"]
            await d.request(nonce=fourth.nonce)
            await d.nothing()

    asyncio.run(scenario())


def test_unknown_names_held_counted_and_warned_once(make_server: object, ca: MiniCa) -> None:
    server = make_server(limits=SdsLimits(held_warning_seconds=0.2))  # type: ignore[operator]
    _publish(server, ca, "/w")

    async def scenario() -> None:
        async with channel(server.server.config.listen) as ch, sotw(ch) as s:
            await s.request(["default", "spiffe://example.org/nobody"])
            await s.recv()
            await s.ack(["default", "spiffe://example.org/nobody"])
            await asyncio.sleep(0.6)
            assert server.server.servicer.held_names() == 1
            assert b"sds_held_names 1.0" in server.server.metrics.render()
            streams = server.server.servicer.status()
            assert streams[0]["held"] == ["spiffe://example.org/nobody"]

    asyncio.run(scenario())


def test_unknown_names_error_mode_is_invalid_argument_like_spire(make_server: object, ca: MiniCa) -> None:
    server = make_server(limits=SdsLimits(unknown_names="error"))  # type: ignore[operator]
    _publish(server, ca, "/w")

    async def scenario() -> GRPCError:
        async with channel(server.server.config.listen) as ch:
            return await _refusal(ch, ["default", "spiffe://example.org/nobody"])

    err = asyncio.run(scenario())
    assert err.status is Status.INVALID_ARGUMENT
    assert err.message == (
        "workload is not authorized for the requested identities ['spiffe://example.org/nobody']"
    )


def test_fetch_empty_list_is_everything(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca, "/w")

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch:
            got = secrets_of(await fetch(ch, []))
            assert {"default", "ROOTCA", "ALL", "spiffe://example.org/w", "example.org"} <= set(got)

    asyncio.run(scenario())


def test_node_disabling_spiffe_validation_gets_trusted_ca(make_server: object, ca: MiniCa) -> None:
    server = make_server(names=ResourceNames(rootca_all_bundles=True))  # type: ignore[operator]
    _publish(server, ca, "/w")

    async def ask(disable: bool) -> str:
        req = sotw_request(["ROOTCA"])
        if disable:
            req.node.metadata.fields["disable_spiffe_cert_validation"].CopyFrom(
                struct_pb2.Value(bool_value=True)
            )
        async with channel(server.server.config.listen) as ch, sotw(ch) as s:
            await s.stream.send_message(req)
            vc = secrets_of(await s.recv())["ROOTCA"].validation_context
        return "trusted_ca" if vc.HasField("trusted_ca") else vc.custom_validator_config.name

    assert asyncio.run(ask(False)) == "envoy.tls.cert_validator.spiffe"
    assert asyncio.run(ask(True)) == "trusted_ca"


def test_names_per_stream_and_streams_per_uid_capped(make_server: object, ca: MiniCa) -> None:
    server = make_server(limits=SdsLimits(max_names_per_stream=3, max_streams_per_uid=2))  # type: ignore[operator]
    _publish(server, ca, "/w")

    async def scenario() -> tuple[GRPCError, GRPCError]:
        async with channel(server.server.config.listen) as ch:
            too_many_names = await _refusal(ch, ["a", "b", "c", "d"])
            async with sotw(ch) as one, sotw(ch) as two:
                for s in (one, two):
                    await s.request(["default"])
                    await s.recv()
                third = await _refusal(ch, ["default"])
        return too_many_names, third

    names, streams = asyncio.run(scenario())
    assert names.status is Status.RESOURCE_EXHAUSTED
    assert names.message == "resource_names: 4 names: at most 3 per stream"
    assert streams.status is Status.RESOURCE_EXHAUSTED
    assert "SDS streams open: at most 2" in str(streams.message)


def test_oversized_message_refused_from_its_length_prefix(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca, "/w")

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch:
            with pytest.raises((GRPCError, StreamTerminatedError)):
                # 5 MiB > the 4 MiB cap: refused after the prefix; the client's send is cut short
                await _refusal(ch, ["x" * (5 * 1024 * 1024)])
            # the connection still serves
            async with sotw(ch) as s:
                await s.request(["default"])
                await s.recv()

    asyncio.run(scenario())
    assert static_server.server._grpc.oversized == 1  # type: ignore[union-attr]


def test_client_that_stops_reading_is_cut_off_without_delaying_others(
    make_server: object, ca: MiniCa
) -> None:
    server = make_server(limits=SdsLimits(send_timeout_seconds=0.5))  # type: ignore[operator]
    svid = ca.issue("/w").svid()

    def big_bundle(i: int) -> Bundle:  # ~1 MiB of trusted_ca per rotation: fills flow control fast
        return Bundle("example.org", ca.roots_pem + b"#" * (1024 * 1024) + str(i).encode())

    server.server.source.publish([svid], [big_bundle(0)])
    server.wait_first_secret(10)

    async def scenario() -> None:
        async with (
            channel(server.server.config.listen) as stuck_ch,
            channel(server.server.config.listen) as ch,
        ):
            stuck_call = stuck_ch.request(
                SERVICE + "StreamSecrets", Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
            )
            stuck = await stuck_call.__aenter__()
            await stuck.send_message(sotw_request(["ROOTCA"], node=""))  # ... and never reads again
            async with sotw(ch) as live:
                await live.request(["ROOTCA"])
                await live.recv()
                await live.ack(["ROOTCA"])
                for i in range(1, 13):
                    server.server.source.publish([svid], [big_bundle(i)])
                    resp = await live.recv(wait=5)  # the live client gets every push promptly
                    await live.ack(["ROOTCA"], resp)
                deadline = time.monotonic() + 5
                while server.server.metrics.send_timeouts._value.get() < 1 and time.monotonic() < deadline:  # noqa: ASYNC110 - set by the server's thread; bounded
                    await asyncio.sleep(0.05)
            # The server cut it off (the metric above). If its reset has not reached this client yet,
            # grpclib complains that our side never ended the stream instead: either way it is over.
            with pytest.raises((StreamTerminatedError, ProtocolError)):
                await stuck_call.__aexit__(None, None, None)

    asyncio.run(scenario())
    assert server.server.metrics.send_timeouts._value.get() == 1


def test_name_index_shrinks_when_streams_go(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca, "/w")
    servicer = static_server.server.servicer
    before = servicer.index_size

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch:
            for batch in range(5):
                async with sotw(ch) as s:
                    await s.request([f"name-{batch}-{i}" for i in range(100)])
                    await s.nothing(0.05)

    asyncio.run(scenario())
    deadline = time.monotonic() + 5
    while servicer.index_size != before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert servicer.index_size == before


def test_svid_not_yet_valid_is_held_then_served(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca, "/w")
    old = static_server.server.servicer.snapshot.default_svid  # type: ignore[union-attr]
    # X.509 times have whole seconds and the server serves 1 s before NotBefore: +4 s leaves a hold of
    # 2 to 3 s whatever the fraction of the current second (+2.5 s left as little as 0.5 s: flaky)
    future = ca.issue("/w", not_before=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4))

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, sotw(ch) as s:
            await s.request(["default"])
            await s.recv()
            await s.ack(["default"])
            static_server.server.source.publish([future.svid()], [ca.bundle()])
            await s.nothing(0.8)  # not valid yet: the old SVID keeps being served
            snap = static_server.server.servicer.snapshot
            assert snap is not None
            assert snap.default_svid == old
            resp = await s.recv(wait=6)
            chain = secrets_of(resp)["default"].tls_certificate.certificate_chain.inline_bytes
            assert chain == future.chain_pem

    asyncio.run(scenario())


def test_rotation_overdue_degrades_health_and_shows_in_status(make_server: object, ca: MiniCa) -> None:
    server = make_server()  # type: ignore[operator]
    now = dt.datetime.now(dt.UTC)
    # lifetime 100 s, 59 s gone: past 60 % in about a second, far from expiry
    _publish(server, ca, "/w", not_before=now - dt.timedelta(seconds=59), ttl=dt.timedelta(seconds=100))
    path = server.server.config.listen

    async def scenario() -> None:
        deadline = time.monotonic() + 10
        while not server.server.rotation_overdue and time.monotonic() < deadline:  # noqa: ASYNC110 - set by the server's thread; bounded
            await asyncio.sleep(0.1)
        assert (await probe(path))[0]  # overall still SERVING: the SVID is valid
        ok, message = await probe(path, "meshbridge.sds.v1.SvidRotation")
        assert not ok
        assert "NOT_SERVING" in message
        report = await fetch_status(path)
        assert report["rotation_overdue"] is True

    asyncio.run(scenario())
    assert b"svid_rotation_overdue 1.0" in server.server.metrics.render()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "sds", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_probe_and_status(static_server: RunningServer, ca: MiniCa) -> None:
    path = str(static_server.server.config.listen)
    before = _cli("probe", "--listen", path)
    assert before.returncode == 1
    assert "NOT_SERVING" in before.stderr
    _publish(static_server, ca, "/w")
    after = _cli("probe", "--listen", path)
    assert after.returncode == 0, after.stderr

    async def hold_stream_and_nack() -> dict[str, object]:
        async with channel(Path(path)) as ch, sotw(ch) as s:
            await s.request(["default", "ROOTCA"])
            resp = await s.recv()
            await s.request(["default", "ROOTCA"], version="", nonce=resp.nonce, error="bad key, says envoy")
            await asyncio.sleep(0.2)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge.cli", "sds", "status", "--listen", path, "-o", "json",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            report: dict[str, object] = json.loads(out)
            return report

    report = asyncio.run(hold_stream_and_nack())
    (stream,) = report["streams"]  # type: ignore[misc]
    assert stream["node"] == NODE["id"]
    assert stream["names"] == ["ROOTCA", "default"]
    assert stream["last_nack"]["message"] == "bad key, says envoy"
    assert _cli("probe", "--listen", path + ".nope").returncode == 1


def test_an_undecodable_request_is_internal_as_grpc_go_answers(static_server: RunningServer) -> None:
    """SPIRE's SDS (grpc-go) answers bytes that are no DiscoveryRequest with Internal 'grpc: error
    unmarshalling request'; so do both our servers (one codec, sds_server.codec.ServerProtoCodec)."""

    async def scenario() -> GRPCError:
        async with Channel(path=str(static_server.server.config.listen), codec=PassThroughProtoCodec()) as ch:
            async with ch.request(
                SERVICE + "StreamSecrets", Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
            ) as stream:
                try:
                    await stream.send_message(
                        b"\xff\xff\xff", end=True
                    )  # field 31, wire type 7: no valid tag
                    await asyncio.wait_for(stream.recv_message(), 5)
                except GRPCError as exc:
                    return exc
        raise AssertionError("the call was not refused")

    exc = asyncio.run(scenario())
    assert exc.status is Status.INTERNAL
    assert str(exc.message).startswith("grpc: error unmarshalling request: "), exc.message
