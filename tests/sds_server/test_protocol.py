"""xDS semantics of the SDS servicer, checked with a raw grpclib client over the real Unix socket."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pytest
from envoy.extensions.transport_sockets.tls.v3.tls_spiffe_validator_config_pb2 import (
    SPIFFECertValidatorConfig,
)
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Cardinality, Status

from sds_server.testing import RunningServer
from tests.sds_server.client import SERVICE, channel, delta, fetch, secrets_of, sotw
from tests.support.pki import Issued, MiniCa

HEX64 = re.compile(r"^[0-9a-f]{64}$")


HTTPBIN = "/ns/default/sa/httpbin"


def _publish(
    server: RunningServer, ca: MiniCa, *paths: str, extra_bundles: tuple[MiniCa, ...] = ()
) -> list[Issued]:
    """Publish SVIDs for ``paths`` (default: httpbin's) and the bundles; wait until they are served."""
    issued = [ca.issue(p) for p in paths or (HTTPBIN,)]
    server.server.source.publish(
        [i.svid() for i in issued], [ca.bundle(), *(c.bundle() for c in extra_bundles)]
    )
    server.wait_first_secret(10)
    return issued


async def _republish(server: RunningServer, ca: MiniCa, *paths: str) -> None:
    """:func:`_publish` from inside a scenario (off its event loop)."""
    await asyncio.to_thread(_publish, server, ca, *paths)


def _eventually(read: Callable[[], float], want: float = 1, timeout: float = 5.0) -> float:
    """Poll a metric until it reaches ``want`` (the server processes the last ACK asynchronously)."""
    deadline = time.monotonic() + timeout
    value = read()
    while value < want and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def _acks_and_nacks(server: RunningServer, api: str) -> tuple[float, float]:
    m = server.server.metrics
    return _eventually(m.acks.labels(api)._value.get), _eventually(m.nacks.labels(api)._value.get)


def test_first_response_then_ack_then_silence(static_server: RunningServer, ca: MiniCa) -> None:
    (svid,) = _publish(static_server, ca)

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, sotw(ch) as s:
            await s.request(["default"])
            resp = await s.recv()
            assert HEX64.match(resp.version_info)
            assert resp.nonce
            got = secrets_of(resp)
            assert list(got) == ["default"]
            tls = got["default"].tls_certificate
            assert tls.certificate_chain.inline_bytes == svid.chain_pem
            assert b"BEGIN PRIVATE KEY" in tls.private_key.inline_bytes  # PKCS#8
            await s.ack(["default"])
            await s.nothing()

    asyncio.run(scenario())
    assert _eventually(static_server.server.metrics.acks.labels("sotw")._value.get) == 1


def test_rotation_pushes_only_to_affected_names_with_fresh_nonce(
    static_server: RunningServer, ca: MiniCa
) -> None:
    _publish(static_server, ca)

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, sotw(ch) as cert, sotw(ch) as root:
            await cert.request(["default"])
            first = await cert.recv()
            await cert.ack(["default"])
            await root.request(["ROOTCA"])
            root_first = await root.recv()
            await root.ack(["ROOTCA"])
            await _republish(static_server, ca)
            second = await cert.recv()
            assert second.version_info != first.version_info
            assert second.nonce != first.nonce
            assert secrets_of(second)["default"].tls_certificate.certificate_chain.inline_bytes != (
                secrets_of(first)["default"].tls_certificate.certificate_chain.inline_bytes
            )
            await cert.ack(["default"])
            await root.nothing()  # same CA: ROOTCA unchanged, not re-sent
            assert secrets_of(root_first)["ROOTCA"].validation_context.trusted_ca.inline_bytes == ca.roots_pem

    asyncio.run(scenario())


def test_nack_is_counted_and_rejected_version_not_resent(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca)

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, sotw(ch) as s:
            await s.request(["default"])
            first = await s.recv()
            await s.request(["default"], version="", nonce=first.nonce, error="Failed to load private key")
            await s.nothing(0.6)  # no NACK loop
            await _republish(static_server, ca)
            newer = await s.recv()  # a newer version is sent
            assert newer.version_info != first.version_info
            await s.ack(["default"])
            await s.nothing()

    asyncio.run(scenario())
    assert _acks_and_nacks(static_server, "sotw") == (1, 1)


def test_stale_nonce_ignored_and_name_change_honoured(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca)

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, sotw(ch) as s:
            await s.request(["default"])
            first = await s.recv()
            await s.request(["default", "ROOTCA"], version=first.version_info, nonce="not-a-nonce-we-sent")
            await s.nothing()  # stale: ignored, names unchanged
            await s.request(["default", "ROOTCA"], version=first.version_info, nonce=first.nonce)
            second = await s.recv()
            assert list(secrets_of(second)) == ["ROOTCA"]  # only what changed for this client
            await s.ack(["default", "ROOTCA"])
            await s.request(["ROOTCA"], version=second.version_info, nonce=second.nonce)
            await s.nothing()  # dropping a name sends nothing new

    asyncio.run(scenario())
    assert _eventually(static_server.server.metrics.stale_requests._value.get) == 1


def test_unavailable_name_is_held_until_it_exists(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca)
    later = "spiffe://example.org/ns/default/sa/later"

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, sotw(ch) as s:
            await s.request([later, "other.org"])
            await s.nothing(0.6)  # held: never an empty secret
            await _republish(static_server, ca, HTTPBIN, "/ns/default/sa/later")
            resp = await s.recv()
            assert list(secrets_of(resp)) == [later]
            assert secrets_of(resp)[later].tls_certificate.private_key.inline_bytes

    asyncio.run(scenario())


def test_trust_domain_names_and_all_validator(static_server: RunningServer, ca: MiniCa) -> None:
    other = MiniCa.create("other.org")
    _publish(static_server, ca, extra_bundles=(other,))

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch:
            resp = await fetch(ch, ["other.org", "spiffe://example.org", "ALL", "ROOTCA"])
            got = secrets_of(resp)
            assert got["other.org"].validation_context.trusted_ca.inline_bytes == other.roots_pem
            assert got["spiffe://example.org"].validation_context.trusted_ca.inline_bytes == ca.roots_pem
            assert got["ROOTCA"].validation_context.trusted_ca.inline_bytes == ca.roots_pem
            validator = got["ALL"].validation_context.custom_validator_config
            assert validator.name == "envoy.tls.cert_validator.spiffe"
            cfg = SPIFFECertValidatorConfig()
            assert validator.typed_config.Unpack(cfg)
            assert {td.name: td.trust_bundle.inline_bytes for td in cfg.trust_domains} == {
                "example.org": ca.roots_pem,
                "other.org": other.roots_pem,
            }
            with pytest.raises(GRPCError) as err:
                await fetch(ch, ["nope"])
            assert err.value.status is Status.INVALID_ARGUMENT  # SPIRE: unknown name = InvalidArgument

    asyncio.run(scenario())


def test_shared_encoding_across_streams(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca)
    servicer = static_server.server.servicer

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch:
            before = servicer.encodings
            nonces = set()
            for _ in range(5):
                async with sotw(ch) as s:
                    await s.request(["default"])
                    nonces.add((await s.recv()).version_info)
            assert len(nonces) == 1
            assert servicer.encodings - before == 1  # encoded once, bytes shared by 5 streams

    asyncio.run(scenario())


def test_delta_subscribe_push_unsubscribe_remove(static_server: RunningServer, ca: MiniCa) -> None:
    other = MiniCa.create("other.org")
    _publish(static_server, ca, extra_bundles=(other,))

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, delta(ch) as d:
            await d.request(["default", "other.org", "held.example"])
            first = await d.recv()
            versions = {r.name: r.version for r in first.resources}
            assert set(versions) == {"default", "other.org"}
            assert all(HEX64.match(v) for v in versions.values())
            await d.request(nonce=first.nonce)  # ACK
            await d.nothing()
            await _republish(static_server, ca)
            second = await d.recv()  # new leaf + other.org gone
            assert [r.name for r in second.resources] == ["default"]
            assert list(second.removed_resources) == ["other.org"]
            await d.request(nonce=second.nonce, error="rejected")  # NACK
            await d.nothing()  # the rejected version is not re-sent
            await d.request(unsubscribe=["default"])
            await d.nothing()

    asyncio.run(scenario())
    assert _acks_and_nacks(static_server, "delta") == (1, 1)


def test_delta_initial_versions_skip_what_the_client_has(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca)
    snap = static_server.server.servicer.snapshot
    assert snap is not None
    have = snap.resources["ROOTCA"].version

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch, delta(ch) as d:
            await d.request(["ROOTCA", "default"], initial={"ROOTCA": have})
            resp = await d.recv()
            assert [r.name for r in resp.resources] == ["default"]

    asyncio.run(scenario())


def test_wrong_type_url_is_invalid_argument(static_server: RunningServer, ca: MiniCa) -> None:
    _publish(static_server, ca)

    async def wrong_type(ch: Channel) -> None:
        async with ch.request(
            SERVICE + "StreamSecrets", Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
        ) as stream:
            req = DiscoveryRequest(resource_names=["default"], type_url="type.googleapis.com/x.Cluster")
            await stream.send_message(req, end=True)
            await stream.recv_message()

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch:
            with pytest.raises(GRPCError) as err:
                await wrong_type(ch)
            assert err.value.status is Status.INVALID_ARGUMENT
            assert "this service only serves" in str(err.value.message)

    asyncio.run(scenario())


def test_reconnecting_client_holding_current_version_gets_nothing_resent(
    static_server: RunningServer, ca: MiniCa
) -> None:
    _publish(static_server, ca)

    async def scenario() -> None:
        async with channel(static_server.server.config.listen) as ch:
            async with sotw(ch) as s:
                await s.request(["default", "ROOTCA"])
                held = (await s.recv()).version_info
            # e.g. Envoy after an SDS server restart: same content, same version
            async with sotw(ch) as again:
                await again.request(["default", "ROOTCA"], version=held)
                await again.nothing()
            async with sotw(ch) as stale:  # an outdated version is answered with the current secrets
                await stale.request(["default", "ROOTCA"], version="0" * 64)
                assert set(secrets_of(await stale.recv())) == {"default", "ROOTCA"}

    asyncio.run(scenario())
