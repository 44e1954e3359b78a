"""What the SDS server serves: one immutable :class:`SecretSnapshot`, swapped whole on every change.

A snapshot is built from the Workload API's X.509 context (SVIDs + bundles, own and federated) and
resolves every resource name Envoy may ask for to one encoded ``Secret`` with its own content version:

* ``names.default`` (``default``) → the default SVID, i.e. the *first* SVID of the Workload API
  response (SPIFFE Workload API §5.2 "the first is the default") as ``tls_certificate``;
* ``names.rootca`` (``ROOTCA``) → the bundle of the default SVID's trust domain as ``trusted_ca`` —
  or, with ``rootca_all_bundles`` (Istio's federation setup, SPIRE ``default_bundle_name = "null"``,
  ``default_all_bundles_name = "ROOTCA"``), every bundle as a SPIFFE validator;
* ``names.all`` (``ALL``) → every bundle as a SPIFFE validator (``envoy.tls.cert_validator.spiffe``);
* a SPIFFE ID → that SVID; a trust domain (``example.org`` or ``spiffe://example.org``) → its bundle.

An SVID whose ``NotAfter`` has passed is never put in a snapshot (X509-SVID §4 validity: an expired
SVID must not be presented); it is listed in :attr:`SecretSnapshot.expired` so the caller can alert.
The snapshot ``version`` is a sha256 over the sorted (name, content version) pairs, so the same
secrets after a restart give the same version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

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

    @property
    def pem(self) -> tuple[bytes, bytes]:
        """(chain PEM, key PEM)."""
        return self.chain_pem, self.key_pem

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

    def __post_init__(self) -> None:
        for label, value in (("default", self.default), ("rootca", self.rootca), ("all", self.all)):
            if not value:
                raise SdsConfigError(f"names.{label}: {value!r}: a resource name cannot be empty")
            if value.startswith(SCHEME_PREFIX):
                raise SdsConfigError(
                    f"names.{label}: {value!r}: must not look like a SPIFFE ID (those name SVIDs/bundles)"
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


def combined_pairs_version(pairs: Sequence[tuple[str, str]]) -> str:
    """The version of a set of (name, version) pairs: sha256 over them, sorted."""
    return _combined_version(pairs)


def _combined_version(pairs: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, version in sorted(pairs):
        h.update(name.encode())
        h.update(b"\0")
        h.update(version.encode())
        h.update(b"\n")
    return h.hexdigest()


def combined_version(resources: Sequence[Resource]) -> str:
    """The version of a set of resources: sha256 over sorted (name, version) pairs."""
    return _combined_version([(r.name, r.version) for r in resources])


def _resource(name: str, kind: str, secret: Secret) -> Resource:
    data = secrets.encode_secret(secret)
    return Resource(name=name, secret=data, version=secrets.content_version(data), kind=kind)


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

    @classmethod
    def build(
        cls,
        svids: Sequence[Svid],
        bundles: Sequence[Bundle],
        names: ResourceNames,
        now: datetime,
    ) -> SecretSnapshot:
        """Resolve every servable name. ``now`` decides which SVIDs are expired (withheld)."""
        live = tuple(s for s in svids if s.not_after > now)
        expired = tuple(s for s in svids if s.not_after <= now)
        by_td: dict[str, bytes] = {}
        for b in bundles:
            by_td[b.trust_domain] = by_td.get(b.trust_domain, b"") + b.roots_pem
        own_td = svids[0].trust_domain if svids else None
        res: dict[str, Resource] = {}

        def put(name: str, kind: str, secret: Secret) -> None:
            res[name] = _resource(name, kind, secret)

        if svids and svids[0].not_after > now:
            d = svids[0]
            put(names.default, "tls_certificate", secrets.tls_certificate_secret(names.default, *d.pem))
        for s in live:
            if s.spiffe_id not in res:
                put(s.spiffe_id, "tls_certificate", secrets.tls_certificate_secret(s.spiffe_id, *s.pem))
        for td, pem in by_td.items():
            for alias in (td, SCHEME_PREFIX + td):
                put(alias, "trusted_ca", secrets.trusted_ca_secret(alias, pem))
        if by_td:
            put(names.all, "spiffe_validator", secrets.spiffe_validator_secret(names.all, by_td))
        if names.rootca_all_bundles and by_td:
            put(names.rootca, "spiffe_validator", secrets.spiffe_validator_secret(names.rootca, by_td))
        elif own_td is not None and own_td in by_td:
            put(names.rootca, "trusted_ca", secrets.trusted_ca_secret(names.rootca, by_td[own_td]))
        version = _combined_version([(r.name, r.version) for r in res.values()])
        return cls(
            svids=tuple(svids),
            bundles=tuple(sorted(bundles, key=lambda b: b.trust_domain)),
            trust_domain=own_td,
            names=names,
            resources=MappingProxyType(res),
            expired=expired,
            version=version,
        )

    @property
    def default_svid(self) -> Svid | None:
        """The default SVID if it is servable (present and not expired)."""
        if self.names.default in self.resources and self.svids:
            return self.svids[0]
        return None

    def get(self, name: str) -> Resource | None:
        """The resource for ``name``, or ``None`` (not available yet: the caller holds the name)."""
        return self.resources.get(name)

    def changed_names(self, previous: SecretSnapshot | None) -> frozenset[str]:
        """Names whose content differs from ``previous`` (added, changed or gone)."""
        if previous is None:
            return frozenset(self.resources)
        names = set(self.resources) | set(previous.resources)
        return frozenset(
            n
            for n in names
            if (self.resources.get(n) or _MISSING).version != (previous.resources.get(n) or _MISSING).version
        )


_MISSING = Resource(name="", secret=b"", version="", kind="")
