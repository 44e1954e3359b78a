"""JWT-SVIDs: minting, JWKS bundles and validation, with ``cryptography`` directly (no JWT library).

Rules from spiffe/spiffe ``standards/JWT-SVID.md``:

* §2 "JOSE header": ``alg`` one of RS256/384/512, ES256/384/512, PS256/384/512 — never ``none`` and
  never HMAC (§2.1: validators MUST reject other values); we mint ES256. ``kid`` (§2.2) is set to the
  signing key's id in the JWKS bundle so validators pick the key without trying each one. ``typ``
  (§2.3) MAY be ``JWT`` or ``JOSE``.
* §3 "JWT claims": ``sub`` = the SPIFFE ID (required), ``aud`` (required; one or more values; we
  always send a list), ``exp`` (required). We also set ``iat``.
* §4 "Token signing and validation": the key is found by ``kid`` in the bundle of the ``sub``'s trust
  domain; validators MUST reject expired tokens and tokens whose ``aud`` lacks their audience.
* §5 / SPIFFE_Trust_Domain_and_Bundle.md §4: JWT bundle = JWKS whose keys carry ``use: jwt-svid``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sds_server.errors import SpiffeIdError
from sds_server.spiffe_id import SpiffeId, TrustDomain
from sds_server.workload_api.errors import JwtSvidError

__all__ = [
    "JwtKey",
    "PublicKey",
    "jwks_document",
    "parse_jwks",
    "sign_jwt_svid",
    "validate_jwt_svid",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: JWT-SVID.md §2.1: the only algorithms a JWT-SVID may use.
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "ES256": hashes.SHA256,
    "ES384": hashes.SHA384,
    "ES512": hashes.SHA512,
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
}
_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_EC_ALG_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
MAX_TOKEN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class JwtKey:
    """A JWT-SVID signing key (EC P-256) and its key id in the JWKS bundle."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey
    not_after: datetime

    def __repr__(self) -> str:  # never show key material
        return f"JwtKey(kid={self.kid!r}, not_after={self.not_after.isoformat()})"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JwtSvidError(f"token {what}: {text[:32]!r}: not base64url") from exc


def _int_b64(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64(value.to_bytes(length, "big"))


def public_jwk(kid: str, key: PublicKey) -> dict[str, str]:
    """The JWK of a public key, with ``kid`` and ``use: jwt-svid``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[key.curve.name]
        size = _CURVES[crv][1]
        nums = key.public_numbers()
        return {
            "kty": "EC",
            "kid": kid,
            "use": "jwt-svid",
            "crv": crv,
            "x": _int_b64(nums.x, size),
            "y": _int_b64(nums.y, size),
        }
    rnums = key.public_numbers()
    return {"kty": "RSA", "kid": kid, "use": "jwt-svid", "n": _int_b64(rnums.n), "e": _int_b64(rnums.e)}


def jwks_document(keys: Iterable[tuple[str, PublicKey]]) -> bytes:
    """A JWKS JSON document (RFC 7517) of JWT-SVID keys, deterministic bytes."""
    doc = {"keys": [public_jwk(kid, key) for kid, key in keys]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def parse_jwks(document: bytes) -> dict[str, PublicKey]:
    """Parse a JWKS document into ``{kid: public key}``; keys with another ``use`` are skipped."""
    try:
        doc = json.loads(document)
        keys: dict[str, PublicKey] = {}
        for jwk in doc["keys"]:
            if jwk.get("use", "jwt-svid") != "jwt-svid":
                continue
            kid = str(jwk["kid"])
            if jwk["kty"] == "EC":
                curve, _ = _CURVES[jwk["crv"]]
                x = int.from_bytes(_unb64(jwk["x"], "jwk x"), "big")
                y = int.from_bytes(_unb64(jwk["y"], "jwk y"), "big")
                keys[kid] = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
            elif jwk["kty"] == "RSA":
                n = int.from_bytes(_unb64(jwk["n"], "jwk n"), "big")
                e = int.from_bytes(_unb64(jwk["e"], "jwk e"), "big")
                keys[kid] = rsa.RSAPublicNumbers(e, n).public_key()
    except (ValueError, KeyError, TypeError) as exc:
        raise JwtSvidError(f"jwks: {document[:64]!r}: not a JWKS document ({exc})") from exc
    return keys


def sign_jwt_svid(
    key: JwtKey, spiffe_id: SpiffeId, audience: Sequence[str], *, issued_at: datetime, expires_at: datetime
) -> str:
    """Mint an ES256 JWT-SVID for ``spiffe_id`` (JWT-SVID.md §2, §3)."""
    if not audience:
        raise JwtSvidError("audience: []: a JWT-SVID needs at least one audience (JWT-SVID §3.2)")
    header = {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    claims = {
        "sub": str(spiffe_id),
        "aud": list(audience),
        "exp": int(expires_at.timestamp()),
        "iat": int(issued_at.timestamp()),
    }
    signing_input = ".".join(
        _b64(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    der = key.private_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _verify(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> None:
    hash_alg = _HASHES[alg]()
    try:
        if alg.startswith("ES"):
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise JwtSvidError(f"token header alg: {alg!r}: does not match the bundle key type (RSA)")
            curve, size = _CURVES[_EC_ALG_CURVE[alg]]
            if key.curve.name != curve.name or len(signature) != 2 * size:
                raise JwtSvidError(f"token header alg: {alg!r}: does not match the bundle key's curve")
            der = encode_dss_signature(
                int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
            )
            key.verify(der, signing_input, ec.ECDSA(hash_alg))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                raise JwtSvidError(f"token header alg: {alg!r}: does not match the bundle key type (EC)")
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if alg.startswith("RS")
                else padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
            )
            key.verify(signature, signing_input, pad, hash_alg)
    except InvalidSignature as exc:
        raise JwtSvidError("token signature: <redacted>: does not verify with the bundle key") from exc


def _json_part(text: str, what: str) -> dict[str, object]:
    try:
        value = json.loads(_unb64(text, what))
    except (ValueError, UnicodeDecodeError) as exc:
        raise JwtSvidError(f"token {what}: {text[:32]!r}: not JSON") from exc
    if not isinstance(value, dict):
        raise JwtSvidError(f"token {what}: {text[:32]!r}: not a JSON object")
    return cast(dict[str, object], value)


def validate_jwt_svid(
    token: str,
    audience: str,
    bundles: Mapping[TrustDomain, Mapping[str, PublicKey]],
    *,
    now: datetime,
) -> tuple[SpiffeId, dict[str, object]]:
    """Validate a JWT-SVID for ``audience`` against JWT bundles; return its SPIFFE ID and claims."""
    if not token:
        raise JwtSvidError("svid: '': a JWT-SVID is required")
    if len(token) > MAX_TOKEN_BYTES:
        raise JwtSvidError(f"svid: {token[:32]!r}...: longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtSvidError(f"svid: {token[:32]!r}: not a JWS compact serialization (3 dot-separated parts)")
    header = _json_part(parts[0], "header")
    claims = _json_part(parts[1], "claims")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _HASHES:
        raise JwtSvidError(
            f"token header alg: {alg!r}: must be one of {', '.join(sorted(_HASHES))} (JWT-SVID §2.1)"
        )
    if "typ" in header and header["typ"] not in ("JWT", "JOSE"):
        raise JwtSvidError(
            f"token header typ: {header['typ']!r}: if set, must be 'JWT' or 'JOSE' (JWT-SVID §2.3)"
        )
    sub = claims.get("sub")
    if not isinstance(sub, str):
        raise JwtSvidError(f"token claim sub: {sub!r}: required, the SPIFFE ID (JWT-SVID §3.1)")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except SpiffeIdError as exc:
        raise JwtSvidError(f"token claim sub: {exc}") from exc
    keys = bundles.get(spiffe_id.trust_domain)
    if keys is None:
        raise JwtSvidError(
            f"token claim sub: {sub!r}: no JWT bundle for trust domain {spiffe_id.trust_domain.name!r}"
        )
    kid = header.get("kid")
    if kid is None and len(keys) == 1:  # JWT-SVID §2.2: kid is RECOMMENDED, not required
        kid = next(iter(keys))
    if not isinstance(kid, str) or kid not in keys:
        raise JwtSvidError(f"token header kid: {kid!r}: no such key in the trust domain's JWT bundle")
    _verify(alg, keys[kid], f"{parts[0]}.{parts[1]}".encode("ascii"), _unb64(parts[2], "signature"))
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise JwtSvidError(f"token claim exp: {exp!r}: required, a NumericDate (JWT-SVID §3.3)")
    if now.timestamp() >= exp:
        raise JwtSvidError(f"token claim exp: {exp!r}: token has expired (JWT-SVID §3.3)")
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud
    if not isinstance(auds, list) or not auds or not all(isinstance(a, str) for a in auds):
        raise JwtSvidError(f"token claim aud: {aud!r}: required, one or more strings (JWT-SVID §3.2)")
    if audience not in auds:
        raise JwtSvidError(f"token claim aud: {aud!r}: does not contain the audience {audience!r}")
    return spiffe_id, claims
