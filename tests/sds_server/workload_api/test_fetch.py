"""The five Workload API RPCs against the real server process, through py-spiffe unmodified and raw grpcio.

Sockets: ``a`` (two identities, one federating with partner.org), ``b`` (one identity), ``none`` (no
entry: every call is PermissionDenied).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import JwtBundle, JwtSource, JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2

from sds_server.x509svid import key_matches_certificate, validate_x509_svid
from tests.support.pki import pem, self_signed_ca
from tests.support.workload_api import (
    HEADER,
    UID,
    WorkloadApiHandle,
    entry,
    raw_stub,
    rpc_calls,
    running_workload_api,
    status_of,
)

A = "spiffe://example.org/ns/default/sa/a"
A_EXT = "spiffe://example.org/ns/default/sa/a-external"
A_EXT_DUP = "spiffe://example.org/ns/default/sa/a-external-duplicate-hint"
B = "spiffe://example.org/ns/default/sa/b"
BY_PATH = "spiffe://example.org/exe/by-path"
BY_SHA = "spiffe://example.org/exe/by-sha256"
WRONG_SHA = "spiffe://example.org/exe/wrong-sha256"
EXE = os.readlink("/proc/self/exe")  # py-spiffe runs in this very process: the caller's executable
EXE_SHA256 = hashlib.sha256(Path(EXE).read_bytes()).hexdigest()
PARTNER_CA, _ = self_signed_ca("partner root")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkloadApiHandle]:
    workdir = tmp_path_factory.mktemp("wl-fetch")
    (workdir / "partner.pem").write_bytes(pem(PARTNER_CA))
    config = {
        "trust_domain": "example.org",
        "svid_ttl": "1h",
        "entries": [
            entry(A, UID, "socket:a", federates_with=["partner.org"], dns_names=["a.example.org"]),
            entry(A_EXT, "socket:a", hint="external"),
            entry(A_EXT_DUP, "socket:a", hint="external"),  # same hint: left out of responses (API §5.2.1)
            entry(B, "socket:b"),
            entry(BY_PATH, f"unix:path:{EXE}", "socket:exe"),
            entry(BY_SHA, f"unix:sha256:{EXE_SHA256}", f"unix:uid:{os.getuid()}", "socket:exe"),
            entry(WRONG_SHA, "unix:sha256:" + "0" * 64, "socket:exe"),
        ],
        "federation": {"partner.org": "partner.pem"},
    }
    with running_workload_api(config, workdir, sockets=("a", "b", "none", "exe")) as handle:
        yield handle


def test_x509_svid_is_valid_and_chains_to_the_bundle(api: WorkloadApiHandle) -> None:
    with WorkloadApiClient(api.address("a")) as client:
        ctx = client.fetch_x509_context()
    svids = {str(s.spiffe_id): s for s in ctx.x509_svids}
    assert set(svids) == {A, A_EXT}
    assert str(ctx.default_svid.spiffe_id) == A
    svid = svids[A]
    chain = list(svid.cert_chain)
    assert validate_x509_svid(chain).__str__() == A
    assert chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["a.example.org"]
    assert key_matches_certificate(svid.private_key, chain[0])
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(TrustDomain("example.org"))
    assert bundle is not None
    PolicyBuilder().store(Store(list(bundle.x509_authorities))).build_client_verifier().verify(
        chain[0], chain[1:]
    )


def _fetch_jwt(stub: Any, **request: Any) -> Any:
    return stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(**request), metadata=HEADER, timeout=10)


def client_svids_raw(api: WorkloadApiHandle) -> list[workload_pb2.X509SVID]:
    with raw_stub(api.socket("a")) as stub:
        first = next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10))
        return list(first.svids)


def test_x509_source_gets_the_socket_scoped_identity(api: WorkloadApiHandle) -> None:
    source = X509Source(socket_path=api.address("b"), timeout_in_seconds=10)
    try:
        assert str(source.get_x509_context().default_svid.spiffe_id) == B
    finally:
        source.close()


def test_federated_bundles_are_delivered_only_to_federating_entries(api: WorkloadApiHandle) -> None:
    partner = TrustDomain("partner.org")
    with WorkloadApiClient(api.address("a")) as client:
        fed = client.fetch_x509_context().x509_bundle_set.get_bundle_for_trust_domain(partner)
        assert fed is not None
        assert list(fed.x509_authorities) == [PARTNER_CA]
        bundles = client.fetch_x509_bundles()
        assert bundles.get_bundle_for_trust_domain(partner) is not None
        assert bundles.get_bundle_for_trust_domain(TrustDomain("example.org")) is not None
    with WorkloadApiClient(api.address("b")) as client:
        assert client.fetch_x509_context().x509_bundle_set.get_bundle_for_trust_domain(partner) is None
        assert client.fetch_x509_bundles().get_bundle_for_trust_domain(partner) is None
    with raw_stub(api.socket("a")) as stub:  # keyed by the trust domain's SPIFFE ID (API §5.1)
        resp = next(stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER, timeout=10))
        assert set(resp.bundles) == {"spiffe://example.org", "spiffe://partner.org"}


def test_jwt_svid_fetch_and_validate(api: WorkloadApiHandle) -> None:
    with WorkloadApiClient(api.address("a")) as client:
        jwt_svid = client.fetch_jwt_svid(audience={"svc"})
        assert str(jwt_svid.spiffe_id) == A
        assert jwt_svid.audience == {"svc"}
        validated = client.validate_jwt_svid(jwt_svid.token, "svc")
        assert str(validated.spiffe_id) == A
        ext = client.fetch_jwt_svid(audience={"svc"}, subject=SpiffeId(A_EXT))
        assert str(ext.spiffe_id) == A_EXT
        # validated locally with py-spiffe (PyJWT) against the JWKS the server streams
        bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TrustDomain("example.org"))
        assert isinstance(bundle, JwtBundle)
        assert str(JwtSvid.parse_and_validate(jwt_svid.token, bundle, {"svc"}).spiffe_id) == A
        with pytest.raises(Exception, match="INVALID_ARGUMENT"):
            client.validate_jwt_svid(jwt_svid.token, "another-audience")
    source = JwtSource(socket_path=api.address("b"), timeout_in_seconds=10)
    try:
        token = source.fetch_svid(audience={"x", "y"})
        assert str(token.spiffe_id) == B
        assert token.audience == {"x", "y"}
        assert source.get_bundle_for_trust_domain(TrustDomain("example.org")) is not None
    finally:
        source.close()


def test_jwt_svid_for_an_identity_not_entitled_is_permission_denied(api: WorkloadApiHandle) -> None:
    with raw_stub(api.socket("b")) as stub:
        code = status_of(lambda: _fetch_jwt(stub, audience=["svc"], spiffe_id=A))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code = status_of(lambda: _fetch_jwt(stub, audience=["svc"], spiffe_id="nope"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # checked before entries, as SPIRE does
        code = status_of(lambda: _fetch_jwt(stub))
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # audience is required (API §6.2.1)


def test_every_rpc_without_the_security_header_is_invalid_argument(api: WorkloadApiHandle) -> None:
    with raw_stub(api.socket("a")) as stub:
        for name, call in rpc_calls(stub, metadata=None).items():
            assert status_of(call) == grpc.StatusCode.INVALID_ARGUMENT, name
        wrong = rpc_calls(stub, metadata=(("workload.spiffe.io", "false"),))
        assert status_of(wrong["FetchX509SVID"]) == grpc.StatusCode.INVALID_ARGUMENT


def test_every_fetch_from_an_unregistered_caller_is_permission_denied(api: WorkloadApiHandle) -> None:
    with raw_stub(api.socket("none")) as stub:
        for name, call in rpc_calls(stub, metadata=HEADER).items():
            if name != "ValidateJWTSVID":
                assert status_of(call) == grpc.StatusCode.PERMISSION_DENIED, name
    with raw_stub(api.socket("a")) as stub:  # the same calls from a registered caller succeed
        calls = rpc_calls(stub, metadata=HEADER)
        for name in ("FetchX509SVID", "FetchX509Bundles", "FetchJWTSVID", "FetchJWTBundles"):
            assert status_of(calls[name]) == grpc.StatusCode.OK, name


def test_an_unregistered_caller_may_validate_a_jwt_svid_as_with_spire(api: WorkloadApiHandle) -> None:
    """Validation needs only the trust bundle; SPIRE's agent validates for any caller (tests/spire)."""
    with raw_stub(api.socket("a")) as stub:
        token = _fetch_jwt(stub, audience=["svc"]).svids[0].svid
    with raw_stub(api.socket("none")) as stub:
        resp = stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="svc", svid=token), metadata=HEADER, timeout=10
        )
        assert resp.spiffe_id == A
        assert list(resp.claims["aud"]) == ["svc"]
        garbage = rpc_calls(stub, metadata=HEADER)["ValidateJWTSVID"]
        assert status_of(garbage) == grpc.StatusCode.INVALID_ARGUMENT


_PROBE = """
import os, sys, grpc
from spiffe._proto import workload_pb2, workload_pb2_grpc

def fetch(path):
    # a connection of its own: grpc shares connections between channels to the same target, and one
    # opened while still root stays root's (the server refuses it once its caller changed uid)
    ch = grpc.insecure_channel("unix:" + path, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)
    try:
        r = next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(),
                                    metadata=(("workload.spiffe.io", "true"),), timeout=10))
        return "OK " + r.svids[0].spiffe_id
    except grpc.RpcError as e:
        return e.code().name
    finally:
        ch.close()

# One call as root first, so every module grpc loads lazily is loaded while the interpreter's files are
# still readable: the checkout (and its .venv) may sit where 'nobody' cannot enter, e.g. under /root.
fetch(sys.argv[1])
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # now become 'nobody'
print(fetch(sys.argv[1]))
"""


def _probe(socket_path: Path) -> str:
    """What a FetchX509SVID from a process that became 'nobody' got (``_PROBE``)."""
    run = [sys.executable, "-c", _PROBE, str(socket_path)]
    return subprocess.run(run, capture_output=True, text=True, timeout=60, check=True, cwd="/").stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client under another uid")
def test_attestation_tells_uids_apart_on_the_same_socket(api: WorkloadApiHandle) -> None:
    """Socket ``a``: entry A needs our uid. A client running as 'nobody' gets only A_EXT (socket-only)."""
    os.chmod(api.socket("a").parent, 0o755)  # let 'nobody' reach the socket (its mode is 0777)
    os.chmod(api.socket("b").parent, 0o755)
    assert _probe(api.socket("a")).split() == ["OK", A_EXT]
    assert _probe(api.socket("none")).strip() == "PERMISSION_DENIED"
    denied = api.events("workload_api.denied")
    assert any(e.get("reason") == "no matching entry" for e in denied)


def test_socket_is_world_connectable_by_default(api: WorkloadApiHandle) -> None:
    assert (api.socket("a").stat().st_mode & 0o777) == 0o777


def test_hint_is_forwarded(api: WorkloadApiHandle) -> None:
    assert {s.spiffe_id: s.hint for s in client_svids_raw(api)} == {A: "", A_EXT: "external"}


def test_unix_path_and_sha256_selectors_match_the_callers_executable(api: WorkloadApiHandle) -> None:
    with WorkloadApiClient(api.address("exe")) as client:
        ids = sorted(str(s.spiffe_id) for s in client.fetch_x509_context().x509_svids)
    assert ids == [BY_PATH, BY_SHA]  # WRONG_SHA does not match


def test_duplicate_hints_are_left_out(api: WorkloadApiHandle) -> None:
    ids = [s.spiffe_id for s in client_svids_raw(api)]
    assert A_EXT_DUP not in ids
    with raw_stub(api.socket("a")) as stub:
        resp = _fetch_jwt(stub, audience=["svc"])
    assert [s.spiffe_id for s in resp.svids] == [A, A_EXT]
