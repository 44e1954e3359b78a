"""A tiny test PKI (real X.509 via ``cryptography``): a SPIFFE-style CA issuing SVID-shaped leaves as PEM.

For tests that need certificates *not* minted by the project's own CA (a foreign CA, servers for
Ghostunnel or the shield stand-in, template filling). The leaves follow X509-SVID §4 (CA=false,
digitalSignature, URI SAN) so real peers treat them like SPIRE's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Leaf:
    cert_pem: str
    key_pem: str
    serial: int


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class TestCA:
    """A self-signed CA (one trust bundle) issuing leaves with a URI SAN and optional DNS / IP SANs."""

    __test__ = False  # not a pytest class

    def __init__(self, trust_domain: str = "example.org") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} test CA"),
            ]
        )
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, spiffe_id: str | None = None, dns_names: tuple[str, ...] = (), ip: bool = False) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        if spiffe_id:
            sans.append(x509.UniformResourceIdentifier(spiffe_id))
        sans += [x509.DNSName(d) for d in dns_names]
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key), serial)
