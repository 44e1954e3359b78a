"""JWT-SVIDs: minted tokens validate here and with py-spiffe (PyJWT); bad ones are refused (JWT-SVID.md)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from spiffe import JwtBundle, JwtSvid
from spiffe import TrustDomain as PyTrustDomain

from sds_server.spiffe_id import SpiffeId, TrustDomain
from sds_server.workload_api.ca import LocalCa
from sds_server.workload_api.errors import JwtSvidError
from sds_server.workload_api.jwt import PublicKey, jwks_document, parse_jwks, validate_jwt_svid

TD = TrustDomain.parse("example.org")
SID = SpiffeId.parse("spiffe://example.org/a")
CA = LocalCa(TD)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keys() -> dict[TrustDomain, dict[str, PublicKey]]:
    return {TD: parse_jwks(jwks_document(CA.jwt_authorities()))}


def _now() -> datetime:
    return datetime.now(UTC)


def _forge(header: dict[str, object], claims: dict[str, object], sign: bool = True) -> str:
    """A token signed with the CA's real JWT key (so only the field under test is wrong)."""
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    if not sign:
        return head + "."
    der = CA.current.jwt_key.private_key.sign(head.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return head + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": str(SID),
        "aud": ["svc"],
        "exp": int(_now().timestamp()) + 300,
        "iat": int(_now().timestamp()),
    }
    base.update(over)
    return base


def test_minted_token_validates_and_carries_spec_claims() -> None:
    token = CA.mint_jwt_svid(SID, ["svc", "other"], timedelta(minutes=5))
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256"
    assert header["kid"] == CA.current.jwt_key.kid
    sid, claims = validate_jwt_svid(token, "other", _keys(), now=_now())
    assert sid == SID
    assert claims["sub"] == str(SID)
    assert claims["aud"] == ["svc", "other"]
    assert isinstance(claims["exp"], int)
    assert isinstance(claims["iat"], int)
    assert 290 <= claims["exp"] - claims["iat"] <= 300


def test_py_spiffe_validates_our_token_with_our_jwks() -> None:
    token = CA.mint_jwt_svid(SID, ["svc"], timedelta(minutes=5))
    bundle = JwtBundle.parse(PyTrustDomain("example.org"), jwks_document(CA.jwt_authorities()))
    svid = JwtSvid.parse_and_validate(token, bundle, {"svc"})
    assert str(svid.spiffe_id) == str(SID)


def test_jwks_keys_have_kid_and_jwt_svid_use() -> None:
    doc = json.loads(jwks_document(CA.jwt_authorities()))
    assert doc["keys"]
    assert all(k["use"] == "jwt-svid" and k["kid"] and k["crv"] == "P-256" for k in doc["keys"])


@pytest.mark.parametrize(
    ("token_factory", "message"),
    [
        (
            lambda: _forge({"alg": "none", "kid": CA.current.jwt_key.kid}, _claims(), sign=False),
            r"^token header alg: 'none': must be one of .* \(JWT-SVID §2.1\)$",
        ),
        (
            lambda: _forge({"alg": "HS256", "kid": CA.current.jwt_key.kid}, _claims()),
            r"^token header alg: 'HS256': must be one of",
        ),
        (
            lambda: _forge({"alg": "ES256", "kid": "nope"}, _claims()),
            r"^token header kid: 'nope': no such key in the trust domain's JWT bundle$",
        ),
        (
            lambda: _forge({"alg": "ES256", "kid": CA.current.jwt_key.kid}, _claims(aud=["x"])),
            r"^token claim aud: \['x'\]: does not contain the audience 'svc'$",
        ),
        (
            lambda: _forge({"alg": "ES256", "kid": CA.current.jwt_key.kid}, _claims(exp=1000)),
            r"^token claim exp: 1000: token has expired \(JWT-SVID §3.3\)$",
        ),
        (
            lambda: _forge(
                {"alg": "ES256", "kid": CA.current.jwt_key.kid}, _claims(sub="spiffe://other.org/a")
            ),
            r"^token claim sub: 'spiffe://other.org/a': no JWT bundle for trust domain 'other.org'$",
        ),
        (
            lambda: _forge(
                {"alg": "ES256", "kid": CA.current.jwt_key.kid}, _claims(sub="spiffe://example.org")
            ),
            r"^token claim sub: 'spiffe://example.org': a workload SPIFFE ID needs a path",
        ),
        (
            lambda: _forge({"alg": "ES256", "kid": CA.current.jwt_key.kid}, _claims(aud=[])),
            r"^token claim aud: \[\]: required, one or more strings",
        ),
        (
            lambda: CA.mint_jwt_svid(SID, ["svc"], timedelta(minutes=5))[:-4] + "AAAA",
            r"^token signature: <redacted>: does not verify with the bundle key$",
        ),
        (
            lambda: _forge({"alg": "ES256", "kid": CA.current.jwt_key.kid, "typ": "at+jwt"}, _claims()),
            r"^token header typ: 'at\+jwt': if set, must be 'JWT' or 'JOSE' \(JWT-SVID §2.3\)$",
        ),
        (lambda: "a.b", r"^svid: 'a.b': not a JWS compact serialization"),
        (lambda: "", r"^svid: '': a JWT-SVID is required$"),
    ],
)
def test_invalid_tokens_are_refused(token_factory: object, message: str) -> None:
    token = token_factory()  # type: ignore[operator]
    with pytest.raises(JwtSvidError, match=message):
        validate_jwt_svid(token, "svc", _keys(), now=_now())


def test_rsa_and_pss_tokens_from_other_issuers_validate() -> None:
    key = rsa.generate_private_key(65537, 2048)
    keys: dict[TrustDomain, dict[str, PublicKey]] = {TD: {"r1": key.public_key()}}
    for alg, pad in (
        ("RS256", padding.PKCS1v15()),
        ("PS256", padding.PSS(padding.MGF1(hashes.SHA256()), hashes.SHA256.digest_size)),
    ):
        head = _b64(json.dumps({"alg": alg, "kid": "r1"}).encode()) + "."
        head += _b64(json.dumps(_claims()).encode())
        token = head + "." + _b64(key.sign(head.encode(), pad, hashes.SHA256()))
        assert validate_jwt_svid(token, "svc", keys, now=_now())[0] == SID
    # an ES256 header against an RSA key is refused, not crashed on
    with pytest.raises(JwtSvidError, match="does not match the bundle key type"):
        validate_jwt_svid(_forge({"alg": "ES256", "kid": "r1"}, _claims()), "svc", keys, now=_now())
