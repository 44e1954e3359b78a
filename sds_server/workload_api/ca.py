"""The local CA of the embedded Workload API: mints X509-SVIDs and JWT-SVIDs for one trust domain.

* Keys: EC P-256 by default, RSA-2048 selectable (``key_type``). JWT-SVIDs are always ES256 with their
  own P-256 key per CA generation (SPIRE, too, keeps X.509 and JWT authorities apart).
* Root or intermediate: self-signed, or — like SPIRE's ``UpstreamAuthority "disk"`` — an intermediate
  signed by an upstream CA read from a cert+key file pair. The X.509 bundle is then the upstream's root(s)
  and every SVID chain carries our intermediate (and the upstream's own intermediates, if any).
* Rotation with overlap: :meth:`LocalCa.rotate` adds a new generation; the bundle keeps every generation
  until it expires (SPIFFE_Trust_Domain_and_Bundle.md §4.2: "keys are added before use and removed after
  expiry"), and SVIDs are always signed by the newest. The server rotates at half the CA lifetime.
* Persistence: with a ``data_dir`` everything lives in one file, ``ca.json`` (mode 0600, written
  atomically: temp file in the same dir, fsync, ``os.replace``), so a restart keeps the same bundle and a
  rotation is never half-written. ``bundle.pem`` (0644) beside it holds the current X.509 bundle for tools
  that want a file (Ghostunnel ``--cacert``, curl). Without ``data_dir`` the CA lives in memory.
* Every minted SVID passes :func:`sds_server.x509svid.validate_x509_svid` (property-tested).

Threading: not thread-safe; the server uses it from its event loop only. Key material never appears in
``repr``, logs or errors.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sds_server.files import atomic_write
from sds_server.spiffe_id import SpiffeId, TrustDomain
from sds_server.workload_api.errors import CaError
from sds_server.workload_api.jwt import JwtKey, PublicKey, sign_jwt_svid
from sds_server.x509svid import certificates_pem, key_matches_certificate, private_key_pem

__all__ = [
    "CaGeneration",
    "KeyType",
    "LocalCa",
    "PrivateKey",
    "Upstream",
    "X509Svid",
    "generate_key",
    "key_usage",
]

log = structlog.get_logger(__name__)

KeyType = Literal["ec-p256", "rsa-2048"]
KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "rsa-2048")
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
Clock = Callable[[], datetime]

#: Certificates start a little in the past so peers with a slightly slow clock accept them (SPIRE: 10 s).
BACKDATE = timedelta(seconds=10)
STATE_FILE = "ca.json"
BUNDLE_FILE = "bundle.pem"
_STATE_VERSION = 1


def _utcnow() -> datetime:
    return datetime.now(UTC)


def generate_key(key_type: KeyType) -> PrivateKey:
    """A fresh private key of ``key_type``."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise CaError(f"key_type: {key_type!r}: must be one of {', '.join(KEY_TYPES)}")


def _key_type_of(key: PrivateKey) -> KeyType:
    return "ec-p256" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa-2048"


def _load_key(data: bytes, what: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CaError(f"{what}: <key material>: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaError(f"{what}: {type(key).__name__!r}: only EC and RSA keys are supported")
    return key


#: ECDSA-with-SHA256 / RSA PKCS#1 v1.5 with SHA-256: what every TLS peer accepts.
_SIGNATURE_HASH = hashes.SHA256()


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _issued_by(cert, cert)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream CA (``UpstreamAuthority "disk"``): its certificate (then its chain) and key."""

    chain: tuple[x509.Certificate, ...]
    key: PrivateKey

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> Upstream:
        """Read the upstream CA: ``cert_path`` holds its certificate first, then any chain to a root."""
        try:
            chain = tuple(x509.load_pem_x509_certificates(cert_path.read_bytes()))
        except OSError as exc:
            raise CaError(f"ca.upstream.cert: {str(cert_path)!r}: cannot read ({exc.strerror})") from exc
        except ValueError as exc:
            raise CaError(f"ca.upstream.cert: {str(cert_path)!r}: not PEM certificates") from exc
        try:
            key_bytes = key_path.read_bytes()
        except OSError as exc:
            raise CaError(f"ca.upstream.key: {str(key_path)!r}: cannot read ({exc.strerror})") from exc
        key = _load_key(key_bytes, f"ca.upstream.key: {str(key_path)!r}")
        if not key_matches_certificate(key, chain[0]):
            raise CaError(f"ca.upstream.key: {str(key_path)!r}: does not match the upstream certificate")
        try:
            bc = chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CaError(f"ca.upstream.cert: {str(cert_path)!r}: the upstream certificate is not a CA")
        if bc.path_length == 0:
            # RFC 5280 §4.2.1.9: pathLenConstraint 0 forbids any CA below it, and ours is one, so every
            # SVID chain we minted would fail validation at the peer.
            raise CaError(
                f"ca.upstream.cert: {str(cert_path)!r}: pathLenConstraint is 0, which leaves no room for "
                "meshbridge's intermediate CA; use an upstream CA with pathLenConstraint >= 1 or none"
            )
        return cls(chain, key)

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The trust anchors: the self-signed certificates of the file, else its last certificate."""
        roots = tuple(c for c in self.chain if _is_self_signed(c))
        return roots or self.chain[-1:]

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """Upstream certificates an SVID chain must carry (everything but the roots)."""
        roots = self.roots
        return tuple(c for c in self.chain if c not in roots)

    def __repr__(self) -> str:
        return f"Upstream(subject={self.chain[0].subject.rfc4514_string()!r})"


@dataclass(frozen=True, slots=True)
class CaGeneration:
    """One CA key + certificate (and its JWT key); the newest generation signs."""

    certificate: x509.Certificate
    key: PrivateKey
    jwt_key: JwtKey
    issued_at: datetime
    authority_key_id: x509.AuthorityKeyIdentifier = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # computed once per generation, not per SVID (it hashes the public key)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        object.__setattr__(self, "authority_key_id", aki)

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def rotate_at(self) -> datetime:
        """Half-way through its life: time to prepare the next generation."""
        return self.issued_at + (self.not_after - self.issued_at) / 2

    def __repr__(self) -> str:
        serial = self.certificate.serial_number
        return f"CaGeneration(serial={serial:x}, not_after={self.not_after.isoformat()})"


@dataclass(frozen=True, slots=True)
class X509Svid:
    """A minted X509-SVID: chain (leaf first, then intermediates) and private key.

    The wire encodings are computed once at mint time: every push to every stream reuses them.
    """

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey
    issued_at: datetime
    _chain_der: bytes = field(init=False, repr=False, compare=False)
    _key_der: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        chain_der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.chain)
        key_der = self.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        object.__setattr__(self, "_chain_der", chain_der)
        object.__setattr__(self, "_key_der", key_der)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial(self) -> int:
        return self.chain[0].serial_number

    @property
    def expires_at(self) -> datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def rotate_at(self) -> datetime:
        """SVIDs are renewed at half their lifetime (SPIRE's rule)."""
        return self.issued_at + (self.expires_at - self.issued_at) / 2

    def chain_der(self) -> bytes:
        """ASN.1 DER certificates concatenated, leaf first (workload.proto ``x509_svid``)."""
        return self._chain_der

    def key_der(self) -> bytes:
        """The unencrypted PKCS#8 DER private key (workload.proto ``x509_svid_key``)."""
        return self._key_der

    def __repr__(self) -> str:  # never show key material
        return f"X509Svid(spiffe_id={str(self.spiffe_id)!r}, serial={self.serial:x})"


_LEAF_SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshbridge")])
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """An X.509 keyUsage with the given bits set and every other bit clear."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


# X509-SVID §4.3: a leaf sets digitalSignature, never keyCertSign/cRLSign; keyEncipherment (RSA key
# exchange) or keyAgreement (ECDH) MAY be set.
_LEAF_KEY_USAGE: dict[KeyType, x509.KeyUsage] = {
    kt: key_usage(digital_signature=True, key_encipherment=kt == "rsa-2048", key_agreement=kt == "ec-p256")
    for kt in KEY_TYPES
}


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshbridge"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class LocalCa:
    """A CA for one trust domain, optionally persisted in ``data_dir`` and chained to an upstream CA."""

    def __init__(
        self,
        trust_domain: TrustDomain,
        *,
        key_type: KeyType = "ec-p256",
        ttl: timedelta = timedelta(hours=24),
        upstream: Upstream | None = None,
        data_dir: Path | None = None,
        clock: Clock = _utcnow,
    ) -> None:
        if ttl <= timedelta(0):
            raise CaError(f"ca.ttl: {ttl.total_seconds()!r}: must be positive")
        if key_type not in KEY_TYPES:
            raise CaError(f"ca.key_type: {key_type!r}: must be one of {', '.join(KEY_TYPES)}")
        self.trust_domain = trust_domain
        self.key_type: KeyType = key_type
        self.ttl = ttl
        self.upstream = upstream
        self.data_dir = data_dir
        self._clock = clock
        self._generations: tuple[CaGeneration, ...] = ()
        if data_dir is not None:
            self._generations = self._load()
        self.prune()
        if not self._generations or not self._fits(self._generations[-1]):
            self.rotate()

    # ---- persistence -------------------------------------------------------------------------
    def _state_path(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / STATE_FILE

    def _load(self) -> tuple[CaGeneration, ...]:
        path = self._state_path()
        where = f"data_dir: {str(path)!r}"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return ()
        except OSError as exc:
            raise CaError(f"{where}: cannot read the CA state ({exc.strerror})") from exc
        try:
            state = json.loads(raw)
            if state.get("version") != _STATE_VERSION:
                raise CaError(f"{where}: unknown CA state version {state.get('version')!r}")
            if state.get("trust_domain") != self.trust_domain.name:
                log.warning(
                    "workload_api.ca.state.discarded",
                    reason="trust domain changed",
                    path=str(path),
                    was=state.get("trust_domain"),
                    now=self.trust_domain.name,
                )
                return ()
            if state.get("upstream") != (self.upstream is not None):
                log.warning("workload_api.ca.state.discarded", reason="upstream mode changed", path=str(path))
                return ()
            gens = []
            for g in state["generations"]:
                cert = x509.load_pem_x509_certificate(g["cert"].encode())
                jwt_key = _load_key(g["jwt_key"].encode(), where)
                if not isinstance(jwt_key, ec.EllipticCurvePrivateKey):
                    raise CaError(f"{where}: JWT keys must be EC")
                gens.append(
                    CaGeneration(
                        certificate=cert,
                        key=_load_key(g["key"].encode(), where),
                        jwt_key=JwtKey(g["jwt_kid"], jwt_key, cert.not_valid_after_utc),
                        issued_at=datetime.fromisoformat(g["issued_at"]),
                    )
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CaError(
                f"{where}: CA state is corrupt ({type(exc).__name__}); move it away to start a new CA"
            ) from exc
        log.info("workload_api.ca.loaded", path=str(path), generations=len(gens))
        return tuple(gens)

    def _save(self) -> None:
        if self.data_dir is None:
            return
        state = {
            "version": _STATE_VERSION,
            "trust_domain": self.trust_domain.name,
            "upstream": self.upstream is not None,
            "generations": [
                {
                    "cert": g.certificate.public_bytes(serialization.Encoding.PEM).decode(),
                    "key": private_key_pem(g.key).decode(),
                    "jwt_kid": g.jwt_key.kid,
                    "jwt_key": private_key_pem(g.jwt_key.private_key).decode(),
                    "issued_at": g.issued_at.isoformat(),
                }
                for g in self._generations
            ],
        }
        try:
            atomic_write(self._state_path(), json.dumps(state, indent=1).encode(), 0o600)
            atomic_write(self.data_dir / BUNDLE_FILE, self.bundle_pem(), 0o644)
        except OSError as exc:
            raise CaError(
                f"data_dir: {str(self.data_dir)!r}: cannot write the CA state ({exc.strerror or exc})"
            ) from exc

    # ---- generations --------------------------------------------------------------------------
    def _fits(self, gen: CaGeneration) -> bool:
        """Whether a loaded generation still matches the configuration (else a new one is made)."""
        if _key_type_of(gen.key) != self.key_type:
            return False
        if gen.rotate_at <= self._clock():
            return False
        if self.upstream is None:
            return _is_self_signed(gen.certificate)
        return _issued_by(gen.certificate, self.upstream.chain[0])

    @property
    def current(self) -> CaGeneration:
        return self._generations[-1]

    @property
    def generations(self) -> tuple[CaGeneration, ...]:
        return self._generations

    def rotate(self) -> CaGeneration:
        """Make a new CA generation; it signs from now on, older ones stay in the bundle until expiry."""
        now = self._clock()
        key = generate_key(self.key_type)
        not_after = now + self.ttl
        issuer_cert = self.upstream.chain[0] if self.upstream else None
        if issuer_cert is not None:
            not_after = min(not_after, issuer_cert.not_valid_after_utc)
            if not_after <= now:
                raise CaError(
                    f"ca.upstream.cert: {issuer_cert.subject.rfc4514_string()!r}: the upstream CA has expired"
                )
        serial = x509.random_serial_number()
        subject = _name(f"meshbridge CA {self.trust_domain.name} {serial:x}"[:64])
        signer: PrivateKey = self.upstream.key if self.upstream else key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_cert.subject if issuer_cert else subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            # X509-SVID §4.1/§4.3: signing certificates are CAs with keyCertSign. pathLen 0: it only
            # ever signs leaves.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
            )
            # X509-SVID §3: a signing certificate MAY carry the trust domain's ID (no path).
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(self.trust_domain.id)]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if issuer_cert is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        cert = builder.sign(signer, _SIGNATURE_HASH)
        jwt_private = ec.generate_private_key(ec.SECP256R1())
        kid = base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")
        gen = CaGeneration(cert, key, JwtKey(kid, jwt_private, not_after), issued_at=now)
        self._generations = (*self._generations, gen)
        self._save()
        log.info(
            "workload_api.ca.rotated",
            trust_domain=self.trust_domain.name,
            serial=f"{serial:x}",
            not_after=not_after.isoformat(),
            kid=kid,
            generations=len(self._generations),
        )
        return gen

    def prune(self) -> bool:
        """Drop expired generations from the bundle; return whether anything changed."""
        now = self._clock()
        alive = tuple(g for g in self._generations if g.not_after > now)
        if alive == self._generations:
            return False
        dropped = len(self._generations) - len(alive)
        self._generations = alive
        if alive:
            self._save()
        log.info("workload_api.ca.pruned", dropped=dropped, generations=len(alive))
        return True

    def next_event_at(self) -> datetime:
        """When the CA next needs attention: half-life of the current generation or an expiry."""
        return min(self.current.rotate_at, *(g.not_after for g in self._generations))

    def maintain(self) -> bool:
        """Rotate at half-life and prune expired generations; return whether the bundle changed."""
        changed = self.prune()
        if not self._generations or self.current.rotate_at <= self._clock():
            self.rotate()
            changed = True
        return changed

    # ---- bundles --------------------------------------------------------------------------------
    def x509_authorities(self) -> tuple[x509.Certificate, ...]:
        """The trust domain's X.509 bundle: upstream roots, or every unexpired CA generation."""
        if self.upstream is not None:
            return self.upstream.roots
        return tuple(g.certificate for g in self._generations)

    def bundle_der(self) -> bytes:
        """The X.509 bundle as concatenated DER (workload.proto ``bundle``)."""
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.x509_authorities())

    def bundle_pem(self) -> bytes:
        return certificates_pem(self.x509_authorities())

    def jwt_authorities(self) -> tuple[tuple[str, PublicKey], ...]:
        """The JWT bundle's keys ``(kid, public key)``, one per unexpired generation."""
        return tuple((g.jwt_key.kid, g.jwt_key.private_key.public_key()) for g in self._generations)

    # ---- minting --------------------------------------------------------------------------------
    def _check_member(self, spiffe_id: SpiffeId) -> None:
        if spiffe_id.trust_domain != self.trust_domain:
            raise CaError(f"spiffe_id: {str(spiffe_id)!r}: not in trust domain {self.trust_domain.name!r}")

    def mint_x509_svid(
        self, spiffe_id: SpiffeId, ttl: timedelta = timedelta(hours=1), dns_names: Sequence[str] = ()
    ) -> X509Svid:
        """Mint an X509-SVID signed by the newest generation; it never outlives its CA."""
        self._check_member(spiffe_id)
        if ttl <= timedelta(0):
            raise CaError(f"ttl: {ttl.total_seconds()!r}: must be positive")
        gen = self.current
        now = self._clock()
        not_after = min(now + ttl, gen.not_after)
        key = generate_key(self.key_type)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        sans.extend(x509.DNSName(d) for d in dns_names)
        # The first DNS name doubles as the subject CN, which X.520 (RFC 5280 ub-common-name) caps at 64
        # characters; a longer (valid, up to 253) DNS name lives in the SAN only.
        subject = _name(dns_names[0]) if dns_names and len(dns_names[0]) <= 64 else _LEAF_SUBJECT
        leaf = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(gen.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            # X509-SVID §4.1: leaf cA=false; §4.3: see _LEAF_KEY_USAGE.
            .add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
            .add_extension(_LEAF_KEY_USAGE[self.key_type], critical=True)
            # X509-SVID §4.4: extendedKeyUsage MAY carry serverAuth and clientAuth.
            .add_extension(_LEAF_EKU, critical=False)
            # X509-SVID §2: exactly one URI SAN, the SPIFFE ID (DNS SANs may follow).
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(gen.authority_key_id, critical=False)
            .sign(gen.key, _SIGNATURE_HASH)
        )
        chain: tuple[x509.Certificate, ...] = (leaf,)
        if self.upstream is not None:
            chain = (leaf, gen.certificate, *self.upstream.intermediates)
        return X509Svid(spiffe_id, chain, key, now)

    def mint_jwt_svid(self, spiffe_id: SpiffeId, audience: Sequence[str], ttl: timedelta) -> str:
        """Mint an ES256 JWT-SVID signed by the newest generation's JWT key."""
        self._check_member(spiffe_id)
        now = self._clock()
        gen = self.current
        expires = min(now + ttl, gen.not_after)
        return sign_jwt_svid(gen.jwt_key, spiffe_id, audience, issued_at=now, expires_at=expires)

    def __repr__(self) -> str:
        return f"LocalCa(trust_domain={self.trust_domain.name!r}, generations={len(self._generations)})"
