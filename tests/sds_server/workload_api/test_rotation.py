"""Pushes on open streams: half-life rotation, forced rotation (SIGUSR1), config reload (SIGHUP)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from spiffe import TrustDomain, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2
from spiffe.workloadapi.x509_context import X509Context

from tests.support.pki import pem, self_signed_ca
from tests.support.workload_api import HEADER, UID, entry, raw_stub, running_workload_api, wait_for

A = "spiffe://example.org/a"
A2 = "spiffe://example.org/a2"
B = "spiffe://example.org/b"


class Recorder:
    """Collects every X509Context pushed on one py-spiffe stream, with its arrival time."""

    def __init__(self) -> None:
        self.updates: list[tuple[float, X509Context]] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()

    def on_update(self, ctx: X509Context) -> None:
        with self._lock:
            self.updates.append((time.time(), ctx))

    def on_error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def serials(self) -> list[int]:
        with self._lock:
            return [ctx.default_svid.leaf.serial_number for _, ctx in self.updates]


def test_svids_rotate_within_half_their_ttl_and_are_pushed(tmp_path: Path) -> None:
    config = {"trust_domain": "example.org", "svid_ttl": "4s", "entries": [entry(A, UID)]}
    with running_workload_api(config, tmp_path) as api, WorkloadApiClient(api.address()) as client:
        rec = Recorder()
        handler = client.stream_x509_contexts(rec.on_update, rec.on_error)
        try:
            wait_for(lambda: len(rec.updates) >= 4, 20, "three rotations")
        finally:
            handler.cancel()
    assert not rec.errors
    arrivals = rec.updates[:4]
    assert len({ctx.default_svid.leaf.serial_number for _, ctx in arrivals}) == 4
    for (_, old), (t_new, _) in itertools.pairwise(arrivals):
        leaf = old.default_svid.leaf
        # X.509 times have 1 s resolution: the SVID was issued in [notBefore + 10 s, notBefore + 11 s)
        # (10 s backdate) and the server renews it half-way to notAfter.
        earliest_issue = leaf.not_valid_before_utc.timestamp() + 10
        expires = leaf.not_valid_after_utc.timestamp()
        assert expires - earliest_issue <= 4.0  # svid_ttl
        half_way_min = (earliest_issue + expires) / 2
        half_way_max = (earliest_issue + 1 + expires) / 2
        assert half_way_min - 0.1 <= t_new <= half_way_max + 1.0, (earliest_issue, t_new, expires)
        assert t_new < expires  # renewed and pushed before the old SVID expires


def test_sigusr1_re_mints_every_svid_and_pushes_on_all_sockets(tmp_path: Path) -> None:
    config = {
        "trust_domain": "example.org",
        "svid_ttl": "1h",
        "entries": [entry(A, UID, "socket:a"), entry(B, "socket:b")],
    }
    with running_workload_api(config, tmp_path, sockets=("a", "b")) as api:
        sources = {n: X509Source(socket_path=api.address(n), timeout_in_seconds=10) for n in ("a", "b")}
        try:
            before = {n: s.get_x509_context().default_svid.leaf.serial_number for n, s in sources.items()}
            api.rotate()
            for name, source in sources.items():

                def renewed(s: X509Source = source, n: str = name) -> bool:
                    return bool(s.get_x509_context().default_svid.leaf.serial_number != before[n])

                wait_for(renewed, 10, f"a new SVID on socket {name}")
            assert str(sources["b"].get_x509_context().default_svid.spiffe_id) == B
        finally:
            for s in sources.values():
                s.close()
        rotated = api.events("workload_api.svid.rotated")
        assert {e["spiffe_id"] for e in rotated if e["reason"] == "forced"} == {A, B}


def test_sighup_reload_pushes_new_entries_and_federation(tmp_path: Path) -> None:
    partner, _ = self_signed_ca("partner")
    (tmp_path / "partner.pem").write_bytes(pem(partner))
    config = {"trust_domain": "example.org", "svid_ttl": "1h", "entries": [entry(A, UID, "socket:a")]}
    with (
        running_workload_api(config, tmp_path, sockets=("a", "b")) as api,
        WorkloadApiClient(api.address("a")) as client,
    ):
        rec = Recorder()
        handler = client.stream_x509_contexts(rec.on_update, rec.on_error)
        try:
            first = wait_for(lambda: rec.updates[:1], 10, "the first response")[0][1]
            assert [str(s.spiffe_id) for s in first.x509_svids] == [A]
            new_config = {
                **config,
                "entries": [
                    entry(A, UID, "socket:a", federates_with=["partner.org"]),
                    entry(A2, "socket:a"),
                    entry(B, "socket:b"),
                ],
                "federation": {"partner.org": "partner.pem"},
            }
            api.reload(new_config)
            ctx = wait_for(lambda: rec.updates[1:2], 10, "the new entry pushed on the open stream")[0][1]
            assert [str(s.spiffe_id) for s in ctx.x509_svids] == [A, A2]
            fed = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("partner.org"))
            assert fed is not None
            assert list(fed.x509_authorities) == [partner]
            # entry A changed (it federates now), so it was re-minted
            assert ctx.default_svid.leaf.serial_number != first.default_svid.leaf.serial_number
            with WorkloadApiClient(api.address("b")) as client_b:
                assert str(client_b.fetch_x509_svid().spiffe_id) == B
            # removing the federation again pushes a context without the partner bundle
            api.reload(
                {
                    **new_config,
                    "entries": [entry(A, UID, "socket:a"), entry(A2, "socket:a")],
                    "federation": {},
                }
            )
            last = wait_for(lambda: rec.updates[2:3], 10, "the federation removal")[0][1]
            assert last.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("partner.org")) is None
        finally:
            handler.cancel()
        assert not rec.errors


def test_reload_with_a_bad_config_keeps_serving(tmp_path: Path) -> None:
    config = {"trust_domain": "example.org", "entries": [entry(A, UID)]}
    with running_workload_api(config, tmp_path) as api:
        bad = {**config, "entries": [entry("spiffe://example.org//x", UID)]}
        with pytest.raises(RuntimeError, match="rejected"):
            api.reload(bad)
        failed = api.events("workload_api.config.reload_failed")
        assert (
            "entries[0].spiffe_id: 'spiffe://example.org//x': path cannot contain empty segments"
            in failed[-1]["error"]
        )
        with WorkloadApiClient(api.address()) as client:
            assert str(client.fetch_x509_svid().spiffe_id) == A


def test_an_open_stream_ends_with_permission_denied_when_its_entry_is_removed(tmp_path: Path) -> None:
    config = {"trust_domain": "example.org", "entries": [entry(A, UID, "socket:a"), entry(B, "socket:b")]}
    with running_workload_api(config, tmp_path, sockets=("a", "b")) as api, raw_stub(api.socket("a")) as stub:
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=30)
        assert next(stream).svids[0].spiffe_id == A
        api.reload({**config, "entries": [entry(B, "socket:b")]})
        with pytest.raises(grpc.RpcError) as info:
            next(stream)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_ca_rotates_at_half_life_with_overlap_and_the_old_ca_leaves_after_expiry(tmp_path: Path) -> None:
    """ca.ttl 6 s: a second CA joins the bundle at ~3 s (and signs from then on); the first leaves at ~6 s."""
    config = {"trust_domain": "example.org", "ca": {"ttl": "6s"}, "entries": [entry(A, UID)]}
    td = TrustDomain("example.org")
    with running_workload_api(config, tmp_path) as api, WorkloadApiClient(api.address()) as client:
        rec = Recorder()
        handler = client.stream_x509_contexts(rec.on_update, rec.on_error)

        def authorities(i: int) -> set[Any]:
            bundle = rec.updates[i][1].x509_bundle_set.get_bundle_for_trust_domain(td)
            assert bundle is not None
            return set(bundle.x509_authorities)

        try:
            wait_for(lambda: rec.updates[:1], 10, "the first context")
            (first_ca,) = authorities(0)

            def overlap() -> int | None:
                return next((i for i in range(len(rec.updates)) if len(authorities(i)) == 2), None)

            i = wait_for(overlap, 15, "a bundle carrying the old and the new CA")
            (second_ca,) = authorities(i) - {first_ca}
            assert rec.updates[i][1].default_svid.leaf.issuer == second_ca.subject  # newest signs

            def first_gone() -> bool:
                return any(first_ca not in authorities(j) for j in range(i, len(rec.updates)))

            wait_for(first_gone, 15, "the expired CA leaving the bundle")
        finally:
            handler.cancel()
    assert not rec.errors
    assert any(e.get("event") == "workload_api.ca.pruned" for e in api.events())
