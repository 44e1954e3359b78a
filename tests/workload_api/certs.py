"""Hand-built certificates for the X509-SVID profile tests (one knob per rule of X509-SVID.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

_KEY = ec.generate_private_key(ec.SECP256R1())


def key_usage(**flags: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def make_cert(
    *,
    uris: list[str] | None = None,
    ca: bool | None = False,
    usage: x509.KeyUsage | None = None,
    dns: list[str] | None = None,
) -> x509.Certificate:
    """A certificate with exactly the given SANs, basicConstraints (None = absent) and keyUsage."""
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    b = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
    )
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
                     usage=usage, **kw)  # type: ignore[arg-type]


def signing(uris: list[str] | None = None, **kw: object) -> x509.Certificate:
    usage = kw.pop("usage", key_usage(key_cert_sign=True, crl_sign=True))
    ca = kw.pop("ca", True)
    return make_cert(uris=uris, ca=ca, usage=usage, **kw)  # type: ignore[arg-type]


def make_upstream(tmp: Path, *, key_type: str = "ec", path_length: int | None = None) -> tuple[Path, Path]:
    """A self-signed upstream CA written as ``up.pem`` / ``up.key`` into ``tmp``."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream root")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "up.pem", tmp / "up.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
