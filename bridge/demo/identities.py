"""Identities for the demo: the embedded Workload API's config, and SVIDs fetched from it with py-spiffe.

Single-machine scoping: every side gets its own Workload API socket and an entry selected by
``socket:<name>`` (the socket the caller reached), so the sidecar's SDS server sees only httpbin's
identity and each external app only its own — as SPIRE's attestors would on separate hosts/pods.
py-spiffe (grpcio) is the client, as everywhere a Python program reads the Workload API here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from bridge.demo.errors import DemoError
from sds_server.workload_api.ca import key_usage
from sds_server.x509svid import certificates_pem, private_key_pem

if TYPE_CHECKING:
    from spiffe.workloadapi.x509_context import X509Context


@dataclass(frozen=True, slots=True)
class Identity:
    """One registration entry of the embedded Workload API, reachable on its own socket."""

    socket_name: str
    spiffe_id: str
    dns_names: tuple[str, ...] = ()
    federates_with: tuple[str, ...] = ()
    """Foreign trust domains whose bundles this entry receives (SPIRE ``federatesWith``)."""

    @property
    def trust_domain(self) -> str:
        return trust_domain_of(self.spiffe_id)


def trust_domain_of(spiffe_id: str) -> str:
    return spiffe_id.removeprefix("spiffe://").split("/", 1)[0]


def by_trust_domain(identities: Sequence[Identity]) -> dict[str, list[Identity]]:
    """``identities`` grouped by trust domain (one Workload API server or SPIRE each), refused when one
    federates with a trust domain that none of them has."""
    grouped: dict[str, list[Identity]] = {}
    for ident in identities:
        grouped.setdefault(ident.trust_domain, []).append(ident)
    unknown = sorted({td for i in identities for td in i.federates_with} - set(grouped))
    if unknown:
        raise DemoError(f"federatesWith {unknown}: no trust domain of this demo serves that bundle")
    return grouped


@dataclass(frozen=True, slots=True)
class SvidMaterial:
    """An X509-SVID and the bundle of its trust domain, as PEM (the key only in memory / 0600 files)."""

    spiffe_id: str
    chain_pem: str
    """Leaf first, then intermediates."""
    key_pem: str
    """PKCS#8 PEM."""
    bundle_pem: str
    serial: int
    dns_names: tuple[str, ...]
    leaf_sha256: str
    """Hex SHA-256 of the leaf's DER: what Envoy puts in ``x-forwarded-client-cert`` as ``Hash``."""
    all_ids: tuple[str, ...]
    """SPIFFE IDs of every X509-SVID the socket returned (scoping: exactly one expected)."""
    federated: Mapping[str, str]
    """Trust domain → PEM bundle of every federated trust domain the socket returned."""

    @property
    def federated_pem(self) -> str:
        """Every federated bundle, by trust domain (what the SVIDStore plugin posts as federated bundles)."""
        return "".join(self.federated[td] for td in sorted(self.federated))


def workload_api_config(
    trust_domain: str,
    identities: Sequence[Identity],
    directory: Path,
    *,
    upstream: tuple[Path, Path] | None = None,
    federation: Mapping[str, Path] | None = None,
) -> dict[str, object]:
    """The ``meshbridge workload-api serve --config`` document: one socket and one entry per identity.

    ``upstream`` (cert, key) makes the trust domain's bundle that CA (known before the server starts, so
    a partner's config can name it); ``federation`` maps foreign trust domains to their bundle files.
    """
    config: dict[str, object] = {
        "trust_domain": trust_domain,
        "svid_ttl": "1h",
        "sockets": [
            {"name": i.socket_name, "path": str(directory / f"{i.socket_name}.sock"), "mode": "0700"}
            for i in identities
        ],
        "entries": [
            {
                "spiffe_id": i.spiffe_id,
                "selectors": [f"socket:{i.socket_name}"],
                **({"dns_names": list(i.dns_names)} if i.dns_names else {}),
                **({"federates_with": list(i.federates_with)} if i.federates_with else {}),
            }
            for i in identities
        ],
    }
    if upstream is not None:
        config["ca"] = {"upstream": {"cert": str(upstream[0]), "key": str(upstream[1])}}
    if federation:
        config["federation"] = {td: str(path) for td, path in sorted(federation.items())}
    return config


def upstream_ca(trust_domain: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed upstream CA for ``trust_domain`` (SPIRE's ``UpstreamAuthority "disk"``): the trust
    domain's bundle, fixed before its server starts so the other trust domain can federate with it."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"demo upstream CA {trust_domain}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"upstream-{trust_domain}.pem"
    key_path = cert_path.with_suffix(".key")
    cert_path.write_bytes(certificates_pem([cert]))
    key_path.touch(mode=0o600)
    key_path.write_bytes(private_key_pem(key))
    return cert_path, key_path


def svid_material(
    spiffe_id: str,
    chain: Sequence[x509.Certificate],
    key: PrivateKeyTypes,
    bundle: Iterable[x509.Certificate],
    *,
    all_ids: tuple[str, ...],
    federated: Mapping[str, Iterable[x509.Certificate]],
) -> SvidMaterial:
    """An X509-SVID as the demo keeps it, however it was fetched (py-spiffe here, ``spire-agent api fetch``
    in the SPIRE mode): PEM, bundles ordered by serial, the leaf's serial and DNS SANs."""
    leaf = chain[0]
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    return SvidMaterial(
        spiffe_id=spiffe_id,
        chain_pem=certificates_pem(chain).decode(),
        key_pem=private_key_pem(key).decode(),
        bundle_pem=_bundle_pem(bundle),
        serial=leaf.serial_number,
        dns_names=dns,
        leaf_sha256=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        all_ids=all_ids,
        federated={td: _bundle_pem(certs) for td, certs in federated.items()},
    )


def _bundle_pem(certs: Iterable[x509.Certificate]) -> str:
    return certificates_pem(sorted(certs, key=lambda c: c.serial_number)).decode()


def _material(ctx: X509Context, trust_domain: str) -> SvidMaterial:
    from spiffe import TrustDomain  # noqa: PLC0415 - keep grpc out of module import time

    bundles = ctx.x509_bundle_set
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain(trust_domain))
    if bundle is None:
        raise DemoError(f"workload API: no bundle for trust domain {trust_domain!r}")
    svid = ctx.default_svid
    return svid_material(
        str(svid.spiffe_id),
        svid.cert_chain,
        svid.private_key,
        bundle.x509_authorities,
        all_ids=tuple(str(s.spiffe_id) for s in ctx.x509_svids),
        federated={
            str(b.trust_domain.name): b.x509_authorities
            for b in bundles.bundles
            if b.trust_domain.name != trust_domain
        },
    )


def fetch_svid(
    sock: Path, trust_domain: str, *, timeout: float = 10.0, not_serial: int | None = None
) -> SvidMaterial:
    """Fetch the default X509-SVID on ``sock`` (retrying until the server is up, or until its serial
    differs from ``not_serial`` after a forced rotation)."""
    from spiffe import WorkloadApiClient  # noqa: PLC0415 - grpc import is slow; only when used
    from spiffe.errors import PySpiffeError  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    last = "socket not there yet"
    while time.monotonic() < deadline:
        if sock.exists():
            client = None
            try:
                client = WorkloadApiClient(socket_path=f"unix://{sock}", default_timeout=2.0)
                material = _material(client.fetch_x509_context(), trust_domain)
                if not_serial is None or material.serial != not_serial:
                    return material
                last = f"still serial {not_serial:x}"
            except PySpiffeError as exc:
                last = str(exc)
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
        time.sleep(0.1)
    raise DemoError(f"workload API {sock}: no X509-SVID after {timeout:.0f}s: {last}")
