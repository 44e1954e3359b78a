"""The one test PKI (real X.509 via ``cryptography``) for every suite.

* :class:`MiniCa` → :class:`Issued`: a SPIFFE CA per trust domain issuing X509-SVIDs (optionally with DNS
  SANs) as PEM (bytes, or ``*_text`` for text templates) and as the SDS server's
  :class:`~sds_server.snapshot.Svid` / :class:`~sds_server.snapshot.Bundle`: static sources, clients,
  foreign CAs, servers for Ghostunnel or the shield stand-in, template filling.
* :func:`make_cert` / :func:`leaf` / :func:`signing` (one knob per rule of X509-SVID.md, for the profile
  tests), :func:`self_signed_ca`, :func:`sign_leaf` (any leaf, e.g. a kube-apiserver's) and
  :func:`make_upstream` (an upstream CA on disk).

The leaves follow X509-SVID §4 (CA=false, digitalSignature, URI SAN) so real peers treat them like
SPIRE's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sds_server.snapshot import Bundle, Svid

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_usage(**flags: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


_CA_USAGE = key_usage(key_cert_sign=True, crl_sign=True)
_SVID_USAGE = key_usage(digital_signature=True, key_encipherment=True, key_agreement=True)
_SPIRE_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")])


def self_signed_ca(
    common_name: str,
    key: PrivateKey | None = None,
    *,
    days: int = 1,
    backdate: dt.timedelta = dt.timedelta(minutes=1),
    path_length: int | None = None,
    ski: bool = False,
    trust_domain: str | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA (CA=true, keyCertSign + cRLSign), e.g. a foreign root or an upstream CA; with
    ``trust_domain`` a SPIFFE CA (URI SAN ``spiffe://<trust_domain>``)."""
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
    if trust_domain is not None:
        uri = x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")
        b = b.add_extension(x509.SubjectAlternativeName([uri]), critical=False)
    return b.sign(key, hashes.SHA256()), key


def sign_leaf(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    sans: Sequence[x509.GeneralName],
    *,
    subject: x509.Name = _SPIRE_SUBJECT,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    usage: x509.KeyUsage = _SVID_USAGE,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf (CA=false, serverAuth + clientAuth) for a new P-256 key, signed by ``ca_key``; valid from
    ``start`` (default a minute ago) to ``end`` (default an hour after ``start``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = start or (_now() - dt.timedelta(minutes=1))
    b = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end or start + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )  # fmt: skip
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


# ---- MiniCa: X509-SVIDs as PEM and as the SDS server's Svid / Bundle -----------------------------------


@dataclass(frozen=True)
class Issued:
    spiffe_id: str
    cert: x509.Certificate
    chain_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def serial(self) -> int:
        return self.cert.serial_number

    @property
    def cert_text(self) -> str:
        return self.chain_pem.decode()

    @property
    def key_text(self) -> str:
        return self.key_pem.decode()

    def svid(self) -> Svid:
        return Svid(self.spiffe_id, self.chain_pem, self.key_pem, self.cert.not_valid_after_utc, self.serial)


@dataclass(frozen=True)
class MiniCa:
    """A self-signed SPIFFE CA (one trust bundle) for ``trust_domain``."""

    trust_domain: str
    key: PrivateKey = field(repr=False)
    cert: x509.Certificate

    @classmethod
    def create(cls, trust_domain: str = "example.org") -> MiniCa:
        cert, key = self_signed_ca(trust_domain, backdate=dt.timedelta(minutes=5), trust_domain=trust_domain)
        return cls(trust_domain, key, cert)

    @property
    def roots_pem(self) -> bytes:
        return pem(self.cert)

    @property
    def roots_text(self) -> str:
        return self.roots_pem.decode()

    def bundle(self) -> Bundle:
        return Bundle(self.trust_domain, self.roots_pem)

    def issue(
        self,
        spiffe_id: str,
        dns_names: Sequence[str] = (),
        *,
        ttl: dt.timedelta = dt.timedelta(hours=1),
        not_before: dt.datetime | None = None,
    ) -> Issued:
        """An X509-SVID for ``spiffe_id`` (a whole ID, or a path in this trust domain) with ``dns_names``."""
        if not spiffe_id.startswith("spiffe://"):
            spiffe_id = f"spiffe://{self.trust_domain}{spiffe_id}"
        sans = [x509.UniformResourceIdentifier(spiffe_id), *(x509.DNSName(d) for d in dns_names)]
        start = not_before or (_now() - dt.timedelta(minutes=1))
        cert, key = sign_leaf(self.cert, self.key, sans, start=start, end=start + ttl)
        return Issued(spiffe_id, cert, pem(cert), key_pem(key))


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


def make_upstream(tmp: Path, *, key_type: str = "ec", path_length: int | None = None) -> tuple[Path, Path]:
    """A self-signed upstream CA written as ``up.pem`` / ``up.key`` into ``tmp``."""
    key: PrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    )
    cert, _ = self_signed_ca(
        "upstream root", key, days=30, backdate=dt.timedelta(minutes=5), path_length=path_length, ski=True
    )
    cert_path, key_path = tmp / "up.pem", tmp / "up.key"
    cert_path.write_bytes(pem(cert))
    key_path.write_bytes(key_pem(key))
    return cert_path, key_path
