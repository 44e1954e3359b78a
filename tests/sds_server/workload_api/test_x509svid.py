"""The X509-SVID profile checks (X509-SVID.md §2, §3, §4.1, §4.3): table tests pinning whole messages."""

from __future__ import annotations

import pytest
from cryptography import x509

from sds_server.errors import SvidError
from sds_server.spiffe_id import SpiffeId
from sds_server.x509svid import leaf_spiffe_id, validate_signing_certificate, validate_x509_svid
from tests.support.pki import key_usage, leaf, signing


def test_valid_chain_returns_the_leaf_id() -> None:
    chain = [leaf(dns=["a.example.org"]), signing(["spiffe://example.org"])]
    assert validate_x509_svid(chain) == SpiffeId.parse("spiffe://example.org/a")
    assert leaf_spiffe_id(chain[0]) == SpiffeId.parse("spiffe://example.org/a")


def test_leaf_without_basic_constraints_is_not_a_ca() -> None:
    # RFC 5280 §4.2.1.9: no basicConstraints means not a CA, which is what X509-SVID §4.1 asks of a leaf.
    assert validate_x509_svid([leaf(ca=None)]) == SpiffeId.parse("spiffe://example.org/a")


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ([], "chain: []: an X509-SVID chain needs at least the leaf certificate"),
        (
            [leaf([])],
            "chain[0] URI SANs: []: an X509-SVID must have exactly one URI SAN, its SPIFFE ID (X509-SVID §2)",
        ),
        (
            [leaf(["spiffe://example.org/a", "spiffe://example.org/b"])],
            "chain[0] URI SANs: ['spiffe://example.org/a', 'spiffe://example.org/b']: an X509-SVID must have "
            "exactly one URI SAN, its SPIFFE ID (X509-SVID §2)",
        ),
        (
            [leaf(["spiffe://example.org//a"])],
            "chain[0] URI SAN: 'spiffe://example.org//a': path cannot contain empty segments ('//')",
        ),
        (
            [leaf(["https://example.org/a"])],
            "chain[0] URI SAN: 'https://example.org/a': scheme must be 'spiffe' (IDs start with 'spiffe://')",
        ),
        (
            [leaf(["spiffe://example.org"])],
            "chain[0] URI SAN: 'spiffe://example.org': a workload SPIFFE ID needs a path "
            "(e.g. 'spiffe://td/ns/x/sa/y')",
        ),
        (
            [leaf(ca=True)],
            "chain[0] basicConstraints: 'cA=true': a leaf X509-SVID must not be a CA (X509-SVID §4.1)",
        ),
        (
            [leaf(usage=None)],
            "chain[0] keyUsage: 'absent': an X509-SVID or signing certificate must carry the keyUsage "
            "extension (X509-SVID §4.3)",
        ),
        (
            [leaf(usage=key_usage(key_encipherment=True))],
            "chain[0] keyUsage: 'digitalSignature not set': a leaf X509-SVID must set digitalSignature "
            "(X509-SVID §4.3)",
        ),
        (
            [leaf(usage=key_usage(digital_signature=True, key_cert_sign=True))],
            "chain[0] keyUsage: 'keyCertSign set': a leaf X509-SVID must not set keyCertSign "
            "(X509-SVID §4.3)",
        ),
        (
            [leaf(usage=key_usage(digital_signature=True, crl_sign=True))],
            "chain[0] keyUsage: 'cRLSign set': a leaf X509-SVID must not set cRLSign (X509-SVID §4.3)",
        ),
        (
            [leaf(), signing(ca=False)],
            "chain[1] basicConstraints: 'cA=false': a signing certificate must be a CA (X509-SVID §4.1)",
        ),
        (
            [leaf(), signing(ca=None)],
            "chain[1] basicConstraints: 'absent': a signing certificate must be a CA (X509-SVID §4.1)",
        ),
        (
            [leaf(), signing(usage=key_usage(digital_signature=True, crl_sign=True))],
            "chain[1] keyUsage: 'keyCertSign not set': a signing certificate must set keyCertSign "
            "(X509-SVID §4.3)",
        ),
        (
            [leaf(), signing(["spiffe://example.org/intermediate"])],
            "chain[1] URI SAN: 'spiffe://example.org/intermediate': a signing certificate must not carry a "
            "SPIFFE ID with a path (X509-SVID §3)",
        ),
    ],
)
def test_profile_violations(chain: list[x509.Certificate], message: str) -> None:
    with pytest.raises(SvidError) as info:
        validate_x509_svid(chain)
    assert str(info.value) == message


def test_signing_certificate_alone() -> None:
    validate_signing_certificate(signing(["spiffe://example.org"]))
    validate_signing_certificate(signing(usage=key_usage(key_cert_sign=True)))  # cRLSign MAY be unset
    with pytest.raises(SvidError, match=r"^signing certificate basicConstraints: 'cA=false'"):
        validate_signing_certificate(leaf())
