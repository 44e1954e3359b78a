"""What the SDS server serves: one immutable :class:`SecretSnapshot`, swapped whole on every change.

A snapshot is built from the Workload API's X.509 context (SVIDs + bundles, own and federated) and
resolves every resource name Envoy may ask for to one encoded ``Secret`` with its own content version:

* ``names.default`` (``default``) → the default SVID as ``tls_certificate``, chosen deterministically:
  the SVID whose SPIFFE ID is ``names.default_spiffe_id`` if set (absent → no ``default`` is served,
  never another identity); else the first SVID whose Workload API ``hint`` equals ``names.default_hint``;
  else the *first* SVID of the response (SPIFFE Workload API §5.2 "the first is the default");
* ``names.rootca`` (``ROOTCA``) → the bundle of the default SVID's trust domain as ``trusted_ca`` —
  or, with ``rootca_all_bundles`` (Istio's federation setup, SPIRE ``default_bundle_name = "null"``,
  ``default_all_bundles_name = "ROOTCA"``), every bundle as a SPIFFE validator;
* ``names.all`` (``ALL``) → every bundle as a SPIFFE validator (``envoy.tls.cert_validator.spiffe``);
* a SPIFFE ID → that SVID; a trust domain (``example.org`` or ``spiffe://example.org``) → its bundle.

An SVID whose ``NotAfter`` has passed is never put in a snapshot (X509-SVID §4 validity: an expired
SVID must not be presented); it is listed in :attr:`SecretSnapshot.expired` so the caller can alert.
An SVID whose ``NotBefore`` is still ahead (beyond a small clock-skew grace) is not served either
(a peer would reject it); it is listed in :attr:`SecretSnapshot.pending` and the source keeps serving
what it served before under those names until it becomes valid (:meth:`SecretSnapshot.carry`).

Configured names win over trust-domain names: a trust domain whose name equals ``names.default`` /
``rootca`` / ``all`` is not reachable under that bare name (still as ``spiffe://<td>``), and the
collision is listed in :attr:`SecretSnapshot.shadowed` so the server can say so.

Per-node validation (SPIRE ``sdsv3/handler.go`` ``isSPIFFECertValidationDisabled``): a node whose
metadata sets ``disable_spiffe_cert_validation`` gets ``trusted_ca`` where others get the SPIFFE
validator: :meth:`SecretSnapshot.get` with ``plain=True`` resolves ``ROOTCA`` (all-bundles mode) to
the own trust domain's ``trusted_ca``; ``ALL`` has no ``trusted_ca`` form (SPIRE refuses it too:
several trust domains in one ``trusted_ca`` would let any of them vouch for any SPIFFE ID) and is
absent for such nodes.
The snapshot ``version`` is a sha256 over the sorted (name, content version) pairs, so the same
secrets after a restart give the same version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from sds_server import secrets
from sds_server.errors import SdsConfigError
from sds_server.spiffe_id import SCHEME_PREFIX


@dataclass(frozen=True, slots=True)
class Svid:
    """One X509-SVID as served: PEM chain (leaf first), PKCS#8 PEM key, and facts for logs/metrics."""

    spiffe_id: str
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    not_after: datetime
    serial: int
    not_before: datetime | None = None  # None: read from the leaf in ``chain_pem`` when needed
    hint: str = ""  # Workload API ``X509SVID.hint`` (operator guidance; empty when the source has none)

    def valid_from(self) -> datetime:
        """``NotBefore`` of the leaf (given, or parsed from the first certificate of ``chain_pem``)."""
        if self.not_before is not None:
            return self.not_before
        return x509.load_pem_x509_certificate(self.chain_pem).not_valid_before_utc

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id[len(SCHEME_PREFIX) :].split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Bundle:
    """The X.509 authorities of one trust domain, concatenated PEM."""

    trust_domain: str
    roots_pem: bytes


@dataclass(frozen=True, slots=True)
class ResourceNames:
    """SDS resource names (defaults = Istio's and SPIRE agent's ``sds {}`` defaults)."""

    default: str = "default"
    rootca: str = "ROOTCA"
    all: str = "ALL"
    rootca_all_bundles: bool = False
    default_spiffe_id: str | None = None
    default_hint: str = "default"

    def __post_init__(self) -> None:
        for label, value in (("default", self.default), ("rootca", self.rootca), ("all", self.all)):
            if not value:
                raise SdsConfigError(f"names.{label}: {value!r}: a resource name cannot be empty")
            if value.startswith(SCHEME_PREFIX):
                raise SdsConfigError(
                    f"names.{label}: {value!r}: must not look like a SPIFFE ID (those name SVIDs/bundles)"
                )
            if value.startswith(FILE_NAME_PREFIXES):
                raise SdsConfigError(
                    f"names.{label}: {value!r}: must not start with file-cert: or file-root: "
                    "(istio-agent's file-mounted credential names)"
                )
        if self.default_spiffe_id is not None and not self.default_spiffe_id.startswith(SCHEME_PREFIX):
            raise SdsConfigError(
                f"names.default_spiffe_id: {self.default_spiffe_id!r}: must be a SPIFFE ID (spiffe://...)"
            )
        if len({self.default, self.rootca, self.all}) != 3:
            raise SdsConfigError(
                f"names: {(self.default, self.rootca, self.all)!r}: default, ROOTCA and ALL names must differ"
            )


@dataclass(frozen=True, slots=True)
class Resource:
    """One resolved SDS resource: the encoded ``Secret`` (its ``name`` = this name) and its version."""

    name: str
    secret: bytes = field(repr=False)
    version: str
    kind: str  # "tls_certificate" | "trusted_ca" | "spiffe_validator"
    serial: str = ""  # tls_certificate: the leaf's serial (hex), for status and logs
    not_after: datetime | None = None  # tls_certificate: the leaf's NotAfter


def combined_pairs_version(pairs: Sequence[tuple[str, str]]) -> str:
    """The version of a set of (name, version) pairs: sha256 over them, sorted."""
    h = hashlib.sha256()
    for name, version in sorted(pairs):
        h.update(f"{name}\0{version}\n".encode())
    return h.hexdigest()


def combined_version(resources: Sequence[Resource]) -> str:
    """The version of a set of resources: sha256 over sorted (name, version) pairs."""
    return combined_pairs_version([(r.name, r.version) for r in resources])


FILE_NAME_PREFIXES = ("file-cert:", "file-root:")


def _version(resource: Resource | None) -> str:
    return "" if resource is None else resource.version


def _snapshot_version(resources: Mapping[str, Resource], plain: Mapping[str, Resource | None]) -> str:
    """A snapshot's version: its resources and the per-node plain (``trusted_ca``) variants."""
    pairs = [(r.name, r.version) for r in resources.values()]
    pairs += [("plain\0" + n, _version(r)) for n, r in plain.items()]
    return combined_pairs_version(pairs)


NOT_BEFORE_GRACE = timedelta(seconds=1)  # clock skew tolerated before a not-yet-valid SVID is served


def make_resource(
    name: str, kind: str, secret: Secret, *, serial: str = "", not_after: datetime | None = None
) -> Resource:
    """A :class:`Resource` for ``secret`` (encoded deterministically; version = content hash)."""
    data = secrets.encode_secret(secret)
    return Resource(
        name=name,
        secret=data,
        version=secrets.content_version(data),
        kind=kind,
        serial=serial,
        not_after=not_after,
    )


def _svid_resource(name: str, s: Svid) -> Resource:
    return make_resource(
        name,
        "tls_certificate",
        secrets.tls_certificate_secret(name, s.chain_pem, s.key_pem),
        serial=format(s.serial, "x"),
        not_after=s.not_after,
    )


def _choose_default(svids: Sequence[Svid], names: ResourceNames) -> Svid | None:
    if not svids:
        return None
    if names.default_spiffe_id is not None:
        return next((s for s in svids if s.spiffe_id == names.default_spiffe_id), None)
    if names.default_hint:
        return next((s for s in svids if s.hint == names.default_hint), svids[0])
    return svids[0]


@dataclass(frozen=True, slots=True)
class SecretSnapshot:
    """Everything servable at one moment. Build with :meth:`build`; never mutated."""

    svids: tuple[Svid, ...]
    bundles: tuple[Bundle, ...]
    trust_domain: str | None
    names: ResourceNames
    resources: Mapping[str, Resource]
    expired: tuple[Svid, ...]
    version: str
    default: Svid | None = None  # the chosen default SVID if it is served
    pending: tuple[Svid, ...] = ()  # NotBefore still ahead: not served yet
    shadowed: tuple[str, ...] = ()  # trust-domain names hidden by a configured name
    plain: Mapping[str, Resource | None] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls,
        svids: Sequence[Svid],
        bundles: Sequence[Bundle],
        names: ResourceNames,
        now: datetime,
    ) -> SecretSnapshot:
        """Resolve every servable name. ``now`` decides which SVIDs are expired or not yet valid."""
        expired = tuple(s for s in svids if s.not_after <= now)
        pending = tuple(s for s in svids if s.not_after > now and s.valid_from() > now + NOT_BEFORE_GRACE)
        live = tuple(s for s in svids if s not in expired and s not in pending)
        by_td: dict[str, bytes] = {}
        for b in bundles:
            by_td[b.trust_domain] = by_td.get(b.trust_domain, b"") + b.roots_pem
        chosen = _choose_default(svids, names)
        own_td = chosen.trust_domain if chosen is not None else (svids[0].trust_domain if svids else None)
        res: dict[str, Resource] = {}
        plain: dict[str, Resource | None] = {}
        configured = {names.default, names.rootca, names.all}
        shadowed: list[str] = []

        def put(name: str, kind: str, secret: Secret) -> None:
            res[name] = make_resource(name, kind, secret)

        for td, pem in by_td.items():
            for alias in (td, SCHEME_PREFIX + td):
                if alias in configured:
                    shadowed.append(alias)  # configured names win (module docstring)
                    continue
                put(alias, "trusted_ca", secrets.trusted_ca_secret(alias, pem))
        for s in live:
            if s.spiffe_id not in res:
                res[s.spiffe_id] = _svid_resource(s.spiffe_id, s)
        default = chosen if chosen is not None and chosen in live else None
        if default is not None:
            res[names.default] = _svid_resource(names.default, default)
        if by_td:
            put(names.all, "spiffe_validator", secrets.spiffe_validator_secret(names.all, by_td))
            plain[names.all] = None
        own_ca = (
            secrets.trusted_ca_secret(names.rootca, by_td[own_td])
            if own_td is not None and own_td in by_td
            else None
        )
        if names.rootca_all_bundles and by_td:
            put(names.rootca, "spiffe_validator", secrets.spiffe_validator_secret(names.rootca, by_td))
            plain[names.rootca] = (
                None if own_ca is None else make_resource(names.rootca, "trusted_ca", own_ca)
            )
        elif own_ca is not None:
            put(names.rootca, "trusted_ca", own_ca)
        return cls(
            svids=tuple(svids),
            bundles=tuple(sorted(bundles, key=lambda b: b.trust_domain)),
            trust_domain=own_td,
            names=names,
            resources=MappingProxyType(res),
            expired=expired,
            version=_snapshot_version(res, plain),
            default=default,
            pending=pending,
            shadowed=tuple(sorted(shadowed)),
            plain=MappingProxyType(plain),
        )

    def carry(self, previous: SecretSnapshot | None, now: datetime) -> SecretSnapshot:
        """This snapshot, serving ``previous``'s resources under names a *pending* SVID would take.

        Used while a new SVID's NotBefore is ahead: the old one keeps being served until it expires (a
        replacement whose NotBefore lies beyond the old NotAfter leaves the name unserved in between).
        """
        if not self.pending or previous is None:
            return self
        names = {s.spiffe_id for s in self.pending}
        chosen = _choose_default(self.svids, self.names)
        if chosen is not None and chosen in self.pending:
            names.add(self.names.default)
        carried = {
            n: r
            for n in names - self.resources.keys()
            if (r := previous.resources.get(n)) is not None and (r.not_after is None or r.not_after > now)
        }
        if not carried:
            return self
        res = {**self.resources, **carried}
        default = self.default
        if default is None and self.names.default in res and previous.default is not None:
            default = previous.default
        return replace(
            self, resources=MappingProxyType(res), version=_snapshot_version(res, self.plain), default=default
        )

    @property
    def default_svid(self) -> Svid | None:
        """The default SVID if it is servable (present and not expired)."""
        return self.default if self.names.default in self.resources else None

    def get(self, name: str, *, plain: bool = False) -> Resource | None:
        """The resource for ``name`` (``plain``: for a node that disabled SPIFFE validation), or ``None``
        (not available: the caller holds the name)."""
        if plain and name in self.plain:
            return self.plain[name]
        return self.resources.get(name)

    def changed_names(self, previous: SecretSnapshot | None) -> frozenset[str]:
        """Names whose content differs from ``previous`` (added, changed or gone), either form."""
        if previous is None:
            return frozenset(self.resources) | frozenset(self.plain)

        def differs(name: str, plain: bool) -> bool:
            return _version(self.get(name, plain=plain)) != _version(previous.get(name, plain=plain))

        return frozenset(
            {n for n in self.resources.keys() | previous.resources.keys() if differs(n, False)}
            | {n for n in self.plain.keys() | previous.plain.keys() if differs(n, True)}
        )
