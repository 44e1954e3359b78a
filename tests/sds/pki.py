"""A tiny test PKI (cryptography): CAs per trust domain issuing X509-SVIDs, for clients and static sources."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sds_server.snapshot import Bundle, Svid


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


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
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain, key, cert)

    @property
    def roots_pem(self) -> bytes:
        return _pem(self.cert)

    def bundle(self) -> Bundle:
        return Bundle(self.trust_domain, self.roots_pem)

    def issue(
        self, path: str, *, ttl: dt.timedelta = dt.timedelta(hours=1), not_before: dt.datetime | None = None
    ) -> Issued:
        spiffe_id = f"spiffe://{self.trust_domain}{path}"
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or (_now() - dt.timedelta(minutes=1))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, True, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH, x509.OID_CLIENT_AUTH]), critical=False
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return Issued(spiffe_id, cert, _pem(cert), key_pem)
