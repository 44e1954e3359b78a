"""The local CA: what it mints passes the X509-SVID profile, persists, chains to an upstream, rotates."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sds_server.spiffe_id import SpiffeId, TrustDomain
from sds_server.workload_api.ca import LocalCa, Upstream
from sds_server.workload_api.errors import CaError
from sds_server.x509svid import validate_signing_certificate, validate_x509_svid
from tests.support.pki import key_pem, key_usage, make_upstream, pem

TD = TrustDomain.parse("example.org")
SEGMENT = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", min_size=1, max_size=20
).filter(lambda s: s not in (".", ".."))
DNS = st.from_regex(r"\A[a-z][a-z0-9-]{0,10}[a-z0-9](\.[a-z][a-z0-9]{0,10}){0,3}\Z")


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _verify_chain(
    chain: tuple[x509.Certificate, ...], roots: tuple[x509.Certificate, ...], at: datetime | None = None
) -> None:
    """Path validation with cryptography's RFC 5280 verifier, as a TLS peer would do it."""
    builder = PolicyBuilder().store(Store(list(roots)))
    if at is not None:
        builder = builder.time(at)
    builder.build_client_verifier().verify(chain[0], list(chain[1:]))


_EC_CA = LocalCa(TD)
_UPSTREAM: Upstream | None = None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(SEGMENT, min_size=1, max_size=5),
    ttl=st.integers(min_value=1, max_value=30 * 24 * 3600),
    dns_names=st.lists(DNS, max_size=3),
)
def test_every_minted_svid_passes_the_x509_svid_profile(
    segments: list[str], ttl: int, dns_names: list[str]
) -> None:
    sid = SpiffeId.from_parts(TD, *segments)
    svid = _EC_CA.mint_x509_svid(sid, timedelta(seconds=ttl), dns_names)
    assert validate_x509_svid(svid.chain) == sid
    for cert in _EC_CA.x509_authorities():
        validate_signing_certificate(cert)
    _verify_chain(svid.chain, _EC_CA.x509_authorities())
    assert svid.expires_at <= _EC_CA.current.not_after  # never outlives its CA
    sans = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == dns_names


def test_dns_name_longer_than_a_common_name_is_minted_in_the_san_only() -> None:
    long_name = "a" * 60 + ".example.org"  # a valid DNS name, too long for a subject CN (64)
    svid = _EC_CA.mint_x509_svid(SpiffeId.parse("spiffe://example.org/long"), dns_names=[long_name, "b.org"])
    sans = svid.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [long_name, "b.org"]
    assert not svid.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    validate_x509_svid(svid.chain)


def test_rsa_ca_mints_rsa_svids(tmp_path: Path) -> None:
    ca = LocalCa(TD, key_type="rsa-2048")
    svid = ca.mint_x509_svid(SpiffeId.parse("spiffe://example.org/rsa"))
    assert isinstance(svid.private_key, rsa.RSAPrivateKey)
    assert isinstance(ca.current.key, rsa.RSAPrivateKey)
    validate_x509_svid(svid.chain)
    _verify_chain(svid.chain, ca.x509_authorities())


def test_default_ttl_is_one_hour() -> None:
    svid = _EC_CA.mint_x509_svid(SpiffeId.parse("spiffe://example.org/a"))
    life = svid.expires_at - svid.issued_at
    assert timedelta(minutes=59) < life <= timedelta(hours=1)


def test_persisted_ca_keeps_its_bundle_and_key_is_0600(tmp_path: Path) -> None:
    ca = LocalCa(TD, data_dir=tmp_path / "data")
    state = tmp_path / "data" / "ca.json"
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert (tmp_path / "data" / "bundle.pem").read_bytes() == ca.bundle_pem()
    again = LocalCa(TD, data_dir=tmp_path / "data")
    assert again.bundle_der() == ca.bundle_der()
    assert again.jwt_authorities()[0][0] == ca.jwt_authorities()[0][0]
    svid = again.mint_x509_svid(SpiffeId.parse("spiffe://example.org/a"))
    _verify_chain(svid.chain, ca.x509_authorities())  # the old bundle trusts the restarted CA's SVIDs
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temp files left


def test_changed_trust_domain_starts_a_new_ca(tmp_path: Path) -> None:
    ca = LocalCa(TD, data_dir=tmp_path)
    other = LocalCa(TrustDomain.parse("other.org"), data_dir=tmp_path)
    assert other.bundle_der() != ca.bundle_der()
    assert json.loads((tmp_path / "ca.json").read_text())["trust_domain"] == "other.org"


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ca.json").write_text(
        '{"version": 1, "trust_domain": "example.org", "upstream": false, "generations": [{"cert": "nope"}]}'
    )
    with pytest.raises(CaError, match=r"CA state is corrupt .*move it away"):
        LocalCa(TD, data_dir=tmp_path)


def test_upstream_intermediate_chains_to_the_upstream_root(tmp_path: Path) -> None:
    cert_path, key_path = make_upstream(tmp_path)
    upstream = Upstream.load(cert_path, key_path)
    ca = LocalCa(TD, upstream=upstream, data_dir=tmp_path / "data")
    assert ca.x509_authorities() == upstream.roots
    svid = ca.mint_x509_svid(SpiffeId.parse("spiffe://example.org/a"))
    assert len(svid.chain) == 2
    assert svid.chain[1] == ca.current.certificate
    validate_x509_svid(svid.chain)
    _verify_chain(svid.chain, upstream.roots)
    # a restart with the same upstream keeps the same intermediate
    again = LocalCa(TD, upstream=Upstream.load(cert_path, key_path), data_dir=tmp_path / "data")
    assert again.current.certificate == ca.current.certificate


def test_upstream_key_must_match_its_certificate(tmp_path: Path) -> None:
    cert_path, _ = make_upstream(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = make_upstream(other)
    with pytest.raises(CaError, match=r"^ca.upstream.key: .*: does not match the upstream certificate$"):
        Upstream.load(cert_path, wrong_key)


def test_rotation_overlaps_until_the_old_ca_expires() -> None:
    clock = FakeClock()
    ca = LocalCa(TD, ttl=timedelta(hours=2), clock=clock)
    first = ca.current
    sid = SpiffeId.parse("spiffe://example.org/a")
    old_svid = ca.mint_x509_svid(sid, timedelta(minutes=30))
    assert ca.maintain() is False  # before half-life: nothing to do
    clock.advance(timedelta(hours=1, seconds=1))
    assert ca.maintain() is True  # half-life: new generation
    second = ca.current
    assert second is not first
    assert ca.x509_authorities() == (first.certificate, second.certificate)
    assert [k for k, _ in ca.jwt_authorities()] == [first.jwt_key.kid, second.jwt_key.kid]
    new_svid = ca.mint_x509_svid(sid, timedelta(minutes=30))
    assert new_svid.leaf.issuer == second.certificate.subject  # always signed by the newest
    _verify_chain(old_svid.chain, ca.x509_authorities(), at=clock.now - timedelta(minutes=59))
    _verify_chain(new_svid.chain, ca.x509_authorities(), at=clock.now)
    clock.advance(timedelta(hours=1))  # the first generation has expired
    assert ca.maintain() is True
    assert first.certificate not in ca.x509_authorities()
    assert second.certificate in ca.x509_authorities()


def test_svid_never_outlives_its_ca() -> None:
    ca = LocalCa(TD, ttl=timedelta(minutes=10))
    svid = ca.mint_x509_svid(SpiffeId.parse("spiffe://example.org/a"), timedelta(hours=5))
    assert svid.expires_at <= ca.current.not_after


def test_mint_refuses_foreign_trust_domain() -> None:
    message = r"^spiffe_id: 'spiffe://other.org/a': not in trust domain 'example.org'$"
    with pytest.raises(CaError, match=message):
        _EC_CA.mint_x509_svid(SpiffeId.parse("spiffe://other.org/a"))


def test_repr_never_shows_key_material() -> None:
    svid = _EC_CA.mint_x509_svid(SpiffeId.parse("spiffe://example.org/a"))
    body = "".join(key_pem(svid.private_key).decode().splitlines()[1:-1])
    for text in (repr(svid), repr(_EC_CA), repr(_EC_CA.current), repr(_EC_CA.current.jwt_key)):
        assert "PRIVATE" not in text
        assert body[:40] not in text


def test_unusable_data_dir_is_a_ca_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CaError, match=r"^data_dir: '.*file/sub/ca.json': cannot read the CA state"):
        LocalCa(TD, data_dir=blocker / "sub")
    (tmp_path / "d" / "bundle.pem").mkdir(parents=True)  # a directory where the bundle file goes
    with pytest.raises(CaError, match=r"^data_dir: '.*/d': cannot write the CA state"):
        LocalCa(TD, data_dir=tmp_path / "d")


def test_upstream_with_path_length_zero_is_refused(tmp_path: Path) -> None:
    cert_path, key_path = make_upstream(tmp_path, path_length=0)
    with pytest.raises(CaError) as info:
        Upstream.load(cert_path, key_path)
    assert str(info.value) == (
        f"ca.upstream.cert: {str(cert_path)!r}: pathLenConstraint is 0, which leaves no room for "
        "meshbridge's intermediate CA; use an upstream CA with pathLenConstraint >= 1 or none"
    )
    one = tmp_path / "one"
    one.mkdir()
    ok_cert, ok_key = make_upstream(one, path_length=1)
    ca = LocalCa(TD, upstream=Upstream.load(ok_cert, ok_key))
    validate_x509_svid(list(ca.mint_x509_svid(SpiffeId.parse("spiffe://example.org/w")).chain))


def test_upstream_file_with_its_own_chain(tmp_path: Path) -> None:
    """Upstream = an intermediate (file: intermediate, then root): SVID chains carry it; bundle = root."""
    root_cert_path, root_key_path = make_upstream(tmp_path)
    root = x509.load_pem_x509_certificate(root_cert_path.read_bytes())
    root_key = serialization.load_pem_private_key(root_key_path.read_bytes(), None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream int")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    chain_file, key_file = tmp_path / "int.pem", tmp_path / "int.key"
    chain_file.write_bytes(pem(inter) + root_cert_path.read_bytes())
    key_file.write_bytes(key_pem(key))
    upstream = Upstream.load(chain_file, key_file)
    assert upstream.roots == (root,)
    assert upstream.intermediates == (inter,)
    ca = LocalCa(TD, upstream=upstream)
    svid = ca.mint_x509_svid(SpiffeId.parse("spiffe://example.org/deep"))
    assert svid.chain == (svid.leaf, ca.current.certificate, inter)
    assert ca.x509_authorities() == (root,)
    validate_x509_svid(svid.chain)
    _verify_chain(svid.chain, (root,))
    assert ca.current.not_after <= inter.not_valid_after_utc  # never outlives its upstream
