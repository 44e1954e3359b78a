"""X509-SVID checks, per the SPIFFE X509-SVID standard (spiffe/spiffe ``standards/X509-SVID.md``).

Why our own checks: the local CA (``sds_server.workload_api.ca``) must only ever mint documents that pass
them (a property test holds it to that); tests use them to check what any Workload API hands out.
Rules, by section of X509-SVID.md:

* §2 "SPIFFE ID": an X509-SVID carries exactly one URI SAN, a valid SPIFFE ID; a leaf's ID names a
  workload (non-empty path).
* §4.1 "Basic Constraints": leaf ``cA`` false; signing certificates ``cA`` true.
* §4.3 "Key Usage": leaf MUST set ``digitalSignature`` and MUST NOT set ``keyCertSign`` or ``cRLSign``;
  signing certificates MUST set ``keyCertSign`` (``cRLSign`` MAY be set).
* §3 "Signing certificates": MAY carry the trust domain's SPIFFE ID as URI SAN, MUST NOT carry a
  SPIFFE ID with a path.

Messages read ``<what>: <value!r>: <rule>`` (e.g. ``chain[0] basicConstraints: 'cA=true': a leaf
X509-SVID must not be a CA (X509-SVID §4.1)``) and are raised as :class:`~sds_server.errors.SvidError`.
Chain *verification* (signatures against a bundle) is the TLS stack's job; these checks are the profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from sds_server.errors import SpiffeIdError, SvidError
from sds_server.spiffe_id import SpiffeId

_E = TypeVar("_E", bound=x509.ExtensionType)

__all__ = [
    "certificates_pem",
    "der_certificates",
    "key_matches_certificate",
    "leaf_spiffe_id",
    "private_key_pem",
    "validate_signing_certificate",
    "validate_x509_svid",
]


def der_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Concatenated ASN.1 DER certificates (how the Workload API carries chains and bundles) → one
    certificate each, split by their DER lengths; :class:`SvidError` names ``what`` and the byte."""
    ders: list[bytes] = []
    i = 0
    while i < len(data):
        if data[i] != 0x30 or i + 2 > len(data):
            raise SvidError(f"{what}: byte {i}: expected an ASN.1 DER SEQUENCE (a certificate)")
        first = data[i + 1]
        if first < 0x80:
            length, head = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or i + 2 + n > len(data):
                raise SvidError(f"{what}: byte {i}: bad ASN.1 DER length")
            length, head = int.from_bytes(data[i + 2 : i + 2 + n], "big"), 2 + n
        end = i + head + length
        if end > len(data):
            raise SvidError(f"{what}: byte {i}: truncated certificate")
        ders.append(data[i:end])
        i = end
    try:
        return [x509.load_der_x509_certificate(der) for der in ders]
    except ValueError as exc:  # cryptography's parse error
        raise SvidError(f"{what}: {str(exc)!r}: not an X.509 certificate") from exc


def certificates_pem(certs: Iterable[x509.Certificate]) -> bytes:
    """Certificates as concatenated PEM blocks, in the order given (a chain, or a bundle)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (what Envoy, Ghostunnel and the SDS ``Secret`` take);
    callers write it 0600 or send it only over the SDS socket, never to a log."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_matches_certificate(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    """Whether ``key`` is the private half of ``cert``'s public key (same SubjectPublicKeyInfo)."""
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _extension(cert: x509.Certificate, kind: type[_E], where: str) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # a malformed extension: cryptography parses lazily
        raise SvidError(f"{where}: {str(exc)!r}: extension cannot be parsed") from exc


def _uri_sans(cert: x509.Certificate) -> list[str]:
    san = _extension(cert, x509.SubjectAlternativeName, "subjectAltName")
    return [] if san is None else [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def _key_usage(cert: x509.Certificate, what: str) -> x509.KeyUsage:
    ku = _extension(cert, x509.KeyUsage, f"{what} keyUsage")
    if ku is None:
        raise SvidError(
            f"{what} keyUsage: 'absent': an X509-SVID or signing certificate must carry the keyUsage "
            "extension (X509-SVID §4.3)"
        )
    return ku


def leaf_spiffe_id(cert: x509.Certificate, what: str = "chain[0]") -> SpiffeId:
    """The SPIFFE ID of a leaf X509-SVID: its single URI SAN, parsed (X509-SVID §2)."""
    uris = _uri_sans(cert)
    if len(uris) != 1:
        raise SvidError(
            f"{what} URI SANs: {uris!r}: an X509-SVID must have exactly one URI SAN, its SPIFFE ID "
            "(X509-SVID §2)"
        )
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise SvidError(f"{what} URI SAN: {exc}") from exc


def _validate_leaf(cert: x509.Certificate, what: str) -> SpiffeId:
    spiffe_id = leaf_spiffe_id(cert, what)
    bc = _extension(cert, x509.BasicConstraints, f"{what} basicConstraints")
    if bc is not None and bc.ca:
        raise SvidError(
            f"{what} basicConstraints: 'cA=true': a leaf X509-SVID must not be a CA (X509-SVID §4.1)"
        )
    ku = _key_usage(cert, what)
    for broken, value, rule in (
        (not ku.digital_signature, "digitalSignature not set", "must set digitalSignature"),
        (ku.key_cert_sign, "keyCertSign set", "must not set keyCertSign"),
        (ku.crl_sign, "cRLSign set", "must not set cRLSign"),
    ):
        if broken:
            raise SvidError(f"{what} keyUsage: {value!r}: a leaf X509-SVID {rule} (X509-SVID §4.3)")
    return spiffe_id


def validate_signing_certificate(cert: x509.Certificate, what: str = "signing certificate") -> None:
    """Check a CA certificate that signs X509-SVIDs (X509-SVID §3, §4.1, §4.3)."""
    bc = _extension(cert, x509.BasicConstraints, f"{what} basicConstraints")
    if bc is None or not bc.ca:
        value = "absent" if bc is None else "cA=false"
        raise SvidError(
            f"{what} basicConstraints: {value!r}: a signing certificate must be a CA (X509-SVID §4.1)"
        )
    ku = _key_usage(cert, what)
    if not ku.key_cert_sign:
        raise SvidError(
            f"{what} keyUsage: 'keyCertSign not set': a signing certificate must set keyCertSign "
            "(X509-SVID §4.3)"
        )
    for uri in _uri_sans(cert):
        if not uri.startswith("spiffe://"):
            continue
        try:
            sid = SpiffeId.parse(uri, allow_empty_path=True)
        except SpiffeIdError as exc:
            raise SvidError(f"{what} URI SAN: {exc}") from exc
        if sid.path:
            raise SvidError(
                f"{what} URI SAN: {uri!r}: a signing certificate must not carry a SPIFFE ID with a path "
                "(X509-SVID §3)"
            )


def validate_x509_svid(chain: Sequence[x509.Certificate]) -> SpiffeId:
    """Check an X509-SVID chain (leaf first, then intermediates); return the leaf's SPIFFE ID."""
    if not chain:
        raise SvidError("chain: []: an X509-SVID chain needs at least the leaf certificate")
    spiffe_id = _validate_leaf(chain[0], "chain[0]")
    for index, cert in enumerate(chain[1:], start=1):
        validate_signing_certificate(cert, f"chain[{index}]")
    return spiffe_id
