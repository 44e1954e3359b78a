"""Pure parts: Secret builders, snapshot resolution and versions, retry policy, bootstrap builders."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

import sds_server
from bridge.envoy import EnvoyError, egress_bootstrap, sidecar_bootstrap
from sds_server.errors import SdsConfigError
from sds_server.metrics import Metrics
from sds_server.snapshot import NOT_BEFORE_GRACE, ResourceNames, SecretSnapshot
from sds_server.source import RetryPolicy, SnapshotPublisher
from tests.support.pki import MiniCa


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_public_surface_is_pinned() -> None:
    assert sds_server.__all__ == sorted(sds_server.__all__)
    assert set(sds_server.__all__) == {
        "Bundle", "Metrics", "Resource", "ResourceNames", "RetryPolicy", "SdsConfigError", "SdsError",
        "SdsServer", "SecretDiscoveryServicer", "SecretSnapshot", "ServerConfig", "Svid",
        "WorkloadApiSource", "build_server", "run", "serve",
    }  # fmt: skip
    assert not {"RunningServer", "StaticSource", "run_in_thread"} & set(dir(sds_server))  # sds_server.testing


def test_names_resolve_like_spire_agent_sds(ca: MiniCa) -> None:
    other = MiniCa.create("other.org")
    a, b = ca.issue("/ns/default/sa/httpbin"), ca.issue("/ns/default/sa/second")
    snap = SecretSnapshot.build([a.svid(), b.svid()], [ca.bundle(), other.bundle()], ResourceNames(), _now())
    default = snap.get("default")
    assert default is not None
    assert default.kind == "tls_certificate"
    assert snap.default_svid == a.svid()  # the first SVID is the default
    assert snap.get(b.spiffe_id) is not None
    assert snap.get("ROOTCA").kind == "trusted_ca"
    assert snap.get("ALL").kind == "spiffe_validator"
    for alias in ("other.org", "spiffe://other.org", "example.org", "spiffe://example.org"):
        assert snap.get(alias).kind == "trusted_ca"
    assert snap.get("spiffe://example.org/ns/default/sa/absent") is None
    assert snap.get("nope") is None


def test_rootca_all_bundles_option_and_custom_names(ca: MiniCa) -> None:
    other = MiniCa.create("other.org")
    names = ResourceNames(default="cert", rootca="trust", all="everything", rootca_all_bundles=True)
    snap = SecretSnapshot.build([ca.issue("/w").svid()], [ca.bundle(), other.bundle()], names, _now())
    assert snap.get("trust").kind == "spiffe_validator"
    assert snap.get("cert") is not None
    assert snap.get("everything") is not None
    assert snap.get("default") is None
    assert snap.get("ROOTCA") is None


def test_expired_svid_is_withheld(ca: MiniCa) -> None:
    old = ca.issue("/w", ttl=dt.timedelta(seconds=1), not_before=_now() - dt.timedelta(minutes=5))
    snap = SecretSnapshot.build([old.svid()], [ca.bundle()], ResourceNames(), _now())
    assert snap.get("default") is None
    assert snap.get(old.spiffe_id) is None
    assert snap.expired == (old.svid(),)
    assert snap.get("ROOTCA") is not None  # bundles are still served


def test_version_is_content_hash_stable_across_builds(ca: MiniCa) -> None:
    svid = ca.issue("/w").svid()
    one = SecretSnapshot.build([svid], [ca.bundle()], ResourceNames(), _now())
    two = SecretSnapshot.build([svid], [ca.bundle()], ResourceNames(), _now() + dt.timedelta(seconds=5))
    assert one.version == two.version
    assert one.changed_names(two) == frozenset()
    rotated = SecretSnapshot.build([ca.issue("/w").svid()], [ca.bundle()], ResourceNames(), _now())
    assert rotated.changed_names(one) == {"default", "spiffe://example.org/w"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"default": ""}, "names.default: '': a resource name cannot be empty"),
        ({"rootca": "spiffe://x"}, "names.rootca: 'spiffe://x': must not look like a SPIFFE ID"),
        ({"all": "default"}, "default, ROOTCA and ALL names must differ"),
    ],
)
def test_resource_name_errors(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(SdsConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ResourceNames(**kwargs)


@given(st.integers(min_value=0, max_value=200), st.floats(min_value=0, max_value=0.999))
def test_retry_delay_is_capped_and_jittered(attempt: int, rand: float) -> None:
    policy = RetryPolicy()
    delay = policy.delay(attempt, rand)
    assert 0 < delay <= 30.0
    assert delay >= min(30.0, 0.2 * 2**attempt) * 0.5 - 1e-9


def test_sidecar_bootstrap_shape() -> None:
    b = sidecar_bootstrap(
        sds_socket="/tmp/x/sds.sock",
        trust_domain="example.org",
        backend_port=8080,
        allowed_principals=["example.org/external/app"],
    )
    text = json.dumps(b)
    listener = b["static_resources"]["listeners"][0]  # type: ignore[index]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    ctx = tls["common_tls_context"]
    assert ctx["tls_certificate_sds_secret_configs"][0]["name"] == "default"
    combined = ctx["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert combined["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}}
    ]
    assert "alpn_protocols" not in text
    assert '"exact": "spiffe://example.org/external/app"' in text
    assert '"forward_client_cert_details": "SANITIZE_SET"' in text
    assert '"path": "/tmp/x/sds.sock"' in text


def test_bootstrap_errors_name_the_argument() -> None:
    with pytest.raises(EnvoyError, match=r"allowed_principals\[0\]: 'bad principal': not a SPIFFE ID"):
        sidecar_bootstrap(
            sds_socket="/s", trust_domain="example.org", backend_port=1, allowed_principals=["bad principal"]
        )
    with pytest.raises(EnvoyError, match=r"trust_domain: 'Example\.org'"):
        sidecar_bootstrap(sds_socket="/s", trust_domain="Example.org", backend_port=1)
    with pytest.raises(EnvoyError, match="backend_port: 70000"):
        sidecar_bootstrap(sds_socket="/s", trust_domain="example.org", backend_port=70000)
    with pytest.raises(EnvoyError, match=r"server_spiffe_ids: \[\]"):
        egress_bootstrap(sds_socket="/s", upstream_port=1, server_spiffe_ids=[])


def test_next_change_never_points_into_the_past(ca: MiniCa) -> None:
    """The supervisor sleeps until ``next_change()``: an SVID that expired without changing the snapshot
    (here a second SVID with the same SPIFFE ID) must not be returned again, or it would spin."""
    clock = [_now()]
    publisher = SnapshotPublisher(ResourceNames(), Metrics(), clock=lambda: clock[0])
    long_lived = ca.issue("/w", ttl=dt.timedelta(hours=1), not_before=_now() - dt.timedelta(minutes=1))
    short_lived = ca.issue("/w", ttl=dt.timedelta(minutes=2), not_before=_now() - dt.timedelta(minutes=1))
    publisher.publish([long_lived.svid(), short_lived.svid()], [ca.bundle()])
    assert publisher.next_change() == short_lived.cert.not_valid_after_utc
    clock[0] = _now() + dt.timedelta(minutes=5)  # the duplicate has expired; the default has not
    publisher.rebuild()
    assert publisher.next_change() == long_lived.cert.not_valid_after_utc
    clock[0] = _now() + dt.timedelta(hours=2)
    publisher.rebuild()
    assert publisher.next_change() is None


def test_pending_svid_is_held_logged_once_then_served_as_a_rotation(ca: MiniCa) -> None:
    """A not-yet-valid SVID is held (the old one stays served under its names), logged once however often
    the snapshot changes meanwhile, and served once the clock reaches its NotBefore."""
    clock = [_now()]
    publisher = SnapshotPublisher(ResourceNames(), Metrics(), clock=lambda: clock[0])
    old = ca.issue("/w", not_before=_now() - dt.timedelta(minutes=1))
    new = ca.issue("/w", not_before=_now() + dt.timedelta(minutes=1))
    publisher.publish([old.svid()], [ca.bundle()])
    with structlog.testing.capture_logs() as logs:
        publisher.publish([new.svid()], [ca.bundle()])
        publisher.publish([new.svid()], [ca.bundle(), MiniCa.create("other.org").bundle()])  # still held
        assert publisher.next_change() == new.cert.not_valid_before_utc - NOT_BEFORE_GRACE
        held = publisher.current()
        assert held is not None
        assert held.pending == (new.svid(),)
        assert held.default_svid == old.svid()
        clock[0] = new.cert.not_valid_before_utc
        publisher.publish([new.svid()], [ca.bundle()])
    served = publisher.current()
    assert served is not None
    assert served.pending == ()
    assert served.default_svid == new.svid()
    assert [e["event"] for e in logs] == ["svid.pending", "svid.rotated"]


def test_an_svid_held_for_a_pending_one_is_withheld_at_its_own_not_after(ca: MiniCa) -> None:
    """The carried SVID is served while its replacement waits for NotBefore, but not past its own NotAfter
    (a replacement valid only later leaves the name unserved in between), and the timer fires for it."""
    clock = [_now()]
    publisher = SnapshotPublisher(ResourceNames(), Metrics(), clock=lambda: clock[0])
    old = ca.issue("/w", ttl=dt.timedelta(minutes=3), not_before=_now() - dt.timedelta(minutes=1))
    new = ca.issue("/w", not_before=_now() + dt.timedelta(minutes=10))
    publisher.publish([old.svid()], [ca.bundle()])
    publisher.publish([new.svid()], [ca.bundle()])
    held = publisher.current()
    assert held is not None
    assert held.default_svid == old.svid()
    assert publisher.next_change() == old.cert.not_valid_after_utc  # the carried one's NotAfter first
    clock[0] = old.cert.not_valid_after_utc
    publisher.rebuild()
    gap = publisher.current()
    assert gap is not None
    assert gap.get("default") is None
    assert gap.get("spiffe://example.org/w") is None
    assert gap.pending == (new.svid(),)
    clock[0] = new.cert.not_valid_before_utc
    publisher.rebuild()
    served = publisher.current()
    assert served is not None
    assert served.default_svid == new.svid()


def test_default_chosen_by_spiffe_id_then_hint_then_first(ca: MiniCa) -> None:
    a, b = ca.issue("/a").svid(), replace(ca.issue("/b").svid(), hint="default")
    bundles = [ca.bundle()]
    assert SecretSnapshot.build([a, b], bundles, ResourceNames(), _now()).default_svid == b  # hint
    assert SecretSnapshot.build([a, b], bundles, ResourceNames(default_hint=""), _now()).default_svid == a
    pinned = ResourceNames(default_spiffe_id=a.spiffe_id)
    assert SecretSnapshot.build([b, a], bundles, pinned, _now()).default_svid == a
    absent = ResourceNames(default_spiffe_id="spiffe://example.org/absent")
    assert SecretSnapshot.build([a, b], bundles, absent, _now()).get("default") is None  # never another


def test_configured_name_wins_over_a_trust_domain_name_and_says_so(ca: MiniCa) -> None:
    other = MiniCa.create("rootca.example")
    names = ResourceNames(rootca="rootca.example")
    snap = SecretSnapshot.build([ca.issue("/w").svid()], [ca.bundle(), other.bundle()], names, _now())
    assert snap.shadowed == ("rootca.example",)
    alone = SecretSnapshot.build([ca.issue("/w").svid()], [ca.bundle()], names, _now())
    own, own_alone = snap.get("rootca.example"), alone.get("rootca.example")
    assert own is not None
    assert own_alone is not None
    assert own.secret == own_alone.secret  # the own trust domain's bundle, not rootca.example's
    assert snap.get("spiffe://rootca.example") is not None  # the bundle stays reachable by its ID
