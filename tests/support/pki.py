"""The one test PKI (real X.509 via ``cryptography``) for every suite.

* :class:`TestCA` → :class:`Leaf` (PEM strings): certificates *not* minted by the project's own CA — a
  foreign CA, servers for Ghostunnel or the shield stand-in, template filling.
* :class:`MiniCa` → :class:`Issued`: a CA per trust domain issuing X509-SVIDs as the SDS server's
  :class:`~sds_server.snapshot.Svid` / :class:`~sds_server.snapshot.Bundle` (static sources, clients).
* :func:`make_cert` / :func:`leaf` / :func:`signing` (one knob per rule of X509-SVID.md, for the profile
  tests), :func:`make_upstream` (an upstream CA on disk) and :func:`self_signed_ca`.

The leaves follow X509-SVID §4 (CA=false, digitalSignature, URI SAN) so real peers treat them like
SPIRE's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sds_server.snapshot import Bundle, Svid


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_usage(**flags: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


_CA_USAGE = key_usage(key_cert_sign=True, crl_sign=True)


def _spiffe_ca(key: ec.EllipticCurvePrivateKey, name: x509.Name, trust_domain: str, start: dt.datetime
               ) -> x509.Certificate:  # fmt: skip
    """A self-signed SPIFFE CA: CA=true, keyCertSign + cRLSign, URI SAN ``spiffe://<trust_domain>``."""
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(_now() + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _svid_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    start: dt.datetime,
    end: dt.datetime,
    usage: x509.KeyUsage,
    serial: int,
) -> x509.Certificate:
    """An X509-SVID-shaped leaf (CA=false, serverAuth + clientAuth) signed by ``ca_key``."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


# ---- TestCA: PEM strings, optional DNS / IP SANs ----------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    cert_pem: str
    key_pem: str
    serial: int


class TestCA:
    """A self-signed CA (one trust bundle) issuing leaves with a URI SAN and optional DNS / IP SANs."""

    __test__ = False  # not a pytest class

    def __init__(self, trust_domain: str = "example.org") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} test CA"),
            ]
        )
        self.cert = _spiffe_ca(self.key, name, trust_domain, _now() - dt.timedelta(hours=1))
        self.cert_pem = pem(self.cert).decode()

    def issue(self, spiffe_id: str | None = None, dns_names: tuple[str, ...] = (), ip: bool = False) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        sans: list[x509.GeneralName] = []
        if spiffe_id:
            sans.append(x509.UniformResourceIdentifier(spiffe_id))
        sans += [x509.DNSName(d) for d in dns_names]
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        serial = x509.random_serial_number()
        usage = key_usage(digital_signature=True, key_encipherment=True)
        start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(hours=2)
        cert = _svid_leaf(self.key, self.cert.subject, key, sans, start, end, usage, serial)
        return Leaf(pem(cert).decode(), _key_pem(key).decode(), serial)


# ---- MiniCa: X509-SVIDs as the SDS server's Svid / Bundle --------------------------------------------


@dataclass(frozen=True)
class Issued:
    spiffe_id: str
    cert: x509.Certificate
    chain_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    def svid(self) -> Svid:
        return Svid(self.spiffe_id, self.chain_pem, self.key_pem, self.cert.not_valid_after_utc, self.serial)


@dataclass(frozen=True)
class MiniCa:
    trust_domain: str
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    cert: x509.Certificate

    @classmethod
    def create(cls, trust_domain: str) -> MiniCa:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test"),
                x509.NameAttribute(NameOID.COMMON_NAME, trust_domain),
            ]
        )
        return cls(trust_domain, key, _spiffe_ca(key, name, trust_domain, _now() - dt.timedelta(minutes=5)))

    @property
    def roots_pem(self) -> bytes:
        return pem(self.cert)

    def bundle(self) -> Bundle:
        return Bundle(self.trust_domain, self.roots_pem)

    def issue(
        self, path: str, *, ttl: dt.timedelta = dt.timedelta(hours=1), not_before: dt.datetime | None = None
    ) -> Issued:
        spiffe_id = f"spiffe://{self.trust_domain}{path}"
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or (_now() - dt.timedelta(minutes=1))
        usage = key_usage(digital_signature=True, key_encipherment=True, key_agreement=True)
        cert = _svid_leaf(
            self.key, self.cert.subject, key, [x509.UniformResourceIdentifier(spiffe_id)], start, start + ttl,
            usage, x509.random_serial_number(),
        )  # fmt: skip
        return Issued(spiffe_id, cert, pem(cert), _key_pem(key))


# ---- hand-built certificates: one knob per rule of X509-SVID.md ---------------------------------------

_KEY = ec.generate_private_key(ec.SECP256R1())


def make_cert(
    *,
    uris: list[str] | None = None,
    ca: bool | None = False,
    usage: x509.KeyUsage | None = None,
    dns: list[str] | None = None,
) -> x509.Certificate:
    """A certificate with exactly the given SANs, basicConstraints (None = absent) and keyUsage."""
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
    )  # fmt: skip
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in (uris or [])]
    sans += [x509.DNSName(d) for d in (dns or [])]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if usage is not None:
        b = b.add_extension(usage, critical=True)
    return b.sign(_KEY, hashes.SHA256())


def leaf(uris: list[str] | None = None, **kw: object) -> x509.Certificate:
    """A valid leaf by default; override one knob to break one rule."""
    usage = kw.pop("usage", key_usage(digital_signature=True))
    return make_cert(uris=uris if uris is not None else ["spiffe://example.org/a"],
                     usage=usage, **kw)  # type: ignore[arg-type]  # fmt: skip


def signing(uris: list[str] | None = None, **kw: object) -> x509.Certificate:
    usage = kw.pop("usage", _CA_USAGE)
    ca = kw.pop("ca", True)
    return make_cert(uris=uris, ca=ca, usage=usage, **kw)  # type: ignore[arg-type]


def self_signed_ca(
    common_name: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    *,
    days: int = 1,
    backdate: dt.timedelta = dt.timedelta(minutes=1),
    path_length: int | None = None,
    ski: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]:
    """A plain self-signed CA (no SPIFFE SAN), e.g. a foreign root or an upstream CA."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_USAGE, critical=True)
    )  # fmt: skip
    if ski:
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return b.sign(key, hashes.SHA256()), key


def make_upstream(tmp: Path, *, key_type: str = "ec", path_length: int | None = None) -> tuple[Path, Path]:
    """A self-signed upstream CA written as ``up.pem`` / ``up.key`` into ``tmp``."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    )
    cert, _ = self_signed_ca(
        "upstream root", key, days=30, backdate=dt.timedelta(minutes=5), path_length=path_length, ski=True
    )
    cert_path, key_path = tmp / "up.pem", tmp / "up.key"
    cert_path.write_bytes(pem(cert))
    key_path.write_bytes(_key_pem(key))
    return cert_path, key_path
