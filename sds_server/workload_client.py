"""A SPIFFE Workload API client on grpclib: the X.509 half of ``SpiffeWorkloadAPI``, on the caller's loop.

Why not py-spiffe here: py-spiffe's client is blocking grpcio (its own threads, and grpcio's runtime
costs ~10 MB of RSS in a process that is otherwise one asyncio loop), and importing *any* ``spiffe``
module — even ``spiffe._proto.workload_pb2`` — runs ``spiffe/__init__.py``, which imports grpcio. The
messages come from :mod:`sds_server.workload_proto` (same wire format, private descriptor pool).

What the spec asks of a client (SPIFFE Workload Endpoint, "Transport"; SPIFFE Workload API, "X.509-SVID
profile"), and where it is done:

* every call carries the security header ``workload.spiffe.io: true`` (:data:`SECURITY_HEADER`);
* ``FetchX509SVID`` is a server stream: each response is the complete current set of SVIDs (the first is
  the default), each with its own trust domain's bundle, plus the federated bundles keyed by trust domain
  ID; ``FetchX509Bundles`` streams the bundles alone (:meth:`WorkloadApiClient.fetch_x509_bundles`);
* chains and bundles are concatenated ASN.1 DER certificates, keys are PKCS#8 DER.

Foreign errors are mapped here, once (house style §5): grpclib's ``GRPCError``, a stream or connection
that breaks, and an ``OSError`` from the socket become :class:`WorkloadApiCallError` with the gRPC status
name in ``code`` (a connection that cannot be made or is lost reads ``UNAVAILABLE``, as grpcio reports
it); a response that does not parse or breaks the X509-SVID profile becomes
:class:`WorkloadApiResponseError`. The conversion to the served data model
(:class:`~sds_server.snapshot.Svid`, :class:`~sds_server.snapshot.Bundle`, PEM) lives here only:
:func:`x509_update_from_response`.

Asyncio model: everything runs on the loop that calls it; no threads. Create the client on that loop
(grpclib binds a channel to the loop current at construction).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from grpclib.client import Channel, Stream
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from h2.exceptions import H2Error

from sds_server.errors import (
    SpiffeIdError,
    SvidError,
    WorkloadApiCallError,
    WorkloadApiResponseError,
)
from sds_server.snapshot import Bundle, Svid
from sds_server.spiffe_id import TrustDomain
from sds_server.workload_proto import (
    X509BundlesRequest,
    X509BundlesResponse,
    X509SVIDRequest,
    X509SVIDResponse,
)
from sds_server.x509svid import certificates_pem, der_certificates, private_key_pem, validate_x509_svid

__all__ = [
    "FETCH_X509_BUNDLES",
    "FETCH_X509_SVID",
    "SECURITY_HEADER",
    "WorkloadApiCallError",
    "WorkloadApiClient",
    "WorkloadApiResponseError",
    "X509Update",
    "parse_address",
    "x509_update_from_response",
]

SECURITY_HEADER: Final = ("workload.spiffe.io", "true")
"""SPIFFE Workload Endpoint: every request carries it; a server refuses calls without it."""

FETCH_X509_SVID: Final = "/SpiffeWorkloadAPI/FetchX509SVID"
FETCH_X509_BUNDLES: Final = "/SpiffeWorkloadAPI/FetchX509Bundles"


# ---- conversion to the served data model -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class X509Update:
    """One ``FetchX509SVID`` response as served values: SVIDs in the server's order (first = default),
    bundles sorted by trust domain (own and federated; an SVID's own bundle wins for its trust domain)."""

    svids: tuple[Svid, ...]
    bundles: tuple[Bundle, ...]


@contextlib.contextmanager
def _refused(where: str = "") -> Iterator[None]:
    """The X509-SVID profile's and the SPIFFE ID parser's errors → :class:`WorkloadApiResponseError`,
    prefixed with ``where``."""
    try:
        yield
    except (SvidError, SpiffeIdError) as exc:
        raise WorkloadApiResponseError(f"{where}{exc}") from exc


def _bundle(trust_domain: str, der: bytes, what: str) -> Bundle:
    with _refused():
        certs = der_certificates(der, what)
    authorities = {c.public_bytes(serialization.Encoding.DER): c for c in certs}
    if not authorities:
        raise WorkloadApiResponseError(f"{what}: b'': a bundle needs at least one X.509 authority")
    return Bundle(
        trust_domain=trust_domain, roots_pem=certificates_pem(authorities[k] for k in sorted(authorities))
    )


def _svid(msg: Any, index: int) -> tuple[Svid, Bundle | None]:
    where = f"svids[{index}]"
    with _refused():
        chain = der_certificates(bytes(msg.x509_svid), f"{where}.x509_svid")
    with _refused(f"{where}.x509_svid: "):
        spiffe_id = validate_x509_svid(chain)
    try:
        key = serialization.load_der_private_key(bytes(msg.x509_svid_key), password=None)
    except (ValueError, TypeError) as exc:  # cryptography: not PKCS#8 DER / unsupported / encrypted
        raise WorkloadApiResponseError(
            f"{where}.x509_svid_key: {str(exc)!r}: not an unencrypted PKCS#8 DER private key"
        ) from exc
    leaf = chain[0]
    svid = Svid(
        spiffe_id=str(spiffe_id),
        chain_pem=certificates_pem(chain),
        key_pem=private_key_pem(key),
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        hint=str(msg.hint),
    )
    own = bytes(msg.bundle)
    bundle = _bundle(spiffe_id.trust_domain.name, own, f"{where}.bundle") if own else None
    return svid, bundle


def _bundle_map(bundles: Mapping[str, bytes], what: str) -> dict[str, Bundle]:
    out: dict[str, Bundle] = {}
    for key in sorted(bundles):
        where = f"{what}[{key!r}]"
        with _refused(f"{where}: "):
            td = TrustDomain.parse(key).name
        out[td] = _bundle(td, bytes(bundles[key]), where)
    return out


def x509_update_from_response(resp: Any) -> X509Update:
    """A ``X509SVIDResponse`` → served values (PEM chain leaf first, PKCS#8 PEM key, sorted bundles).

    Every SVID is checked against the X509-SVID profile (:func:`~sds_server.x509svid.validate_x509_svid`)
    and its key must parse; anything else raises :class:`WorkloadApiResponseError` (the whole response
    is refused, as py-spiffe refuses it: serving part of an update would be a state the server never had).
    """
    by_td = _bundle_map(resp.federated_bundles, "federated_bundles")
    svids = []
    for index, msg in enumerate(resp.svids):
        svid, bundle = _svid(msg, index)
        svids.append(svid)
        if bundle is not None:
            by_td[bundle.trust_domain] = bundle
    return X509Update(svids=tuple(svids), bundles=tuple(by_td[td] for td in sorted(by_td)))


# ---- the client -------------------------------------------------------------------------------------


def parse_address(address: str) -> str:
    """``unix:///path``, ``unix:/path`` or ``/path`` → the socket path (SPIFFE_ENDPOINT_SOCKET forms)."""
    path = address.removeprefix("unix://" if address.startswith("unix://") else "unix:")
    if not path.startswith("/") or len(path) < 2:
        raise WorkloadApiCallError(
            "INVALID_ARGUMENT", f"{address!r}: expected unix:///absolute/path (a Unix socket)"
        )
    return path


@contextlib.contextmanager
def _call_errors() -> Iterator[None]:
    """grpclib's, h2's and the socket's errors → :class:`WorkloadApiCallError` (a lost or impossible
    connection reads ``UNAVAILABLE``, as grpcio reports it)."""
    try:
        yield
    except GRPCError as exc:
        raise WorkloadApiCallError(exc.status.name, exc.message or "") from exc
    except (StreamTerminatedError, ProtocolError, H2Error, OSError) as exc:
        raise WorkloadApiCallError("UNAVAILABLE", f"{type(exc).__name__}: {exc}") from exc


class WorkloadApiClient:
    """``SpiffeWorkloadAPI`` X.509 calls over one grpclib channel to a Unix socket (reconnects lazily).

    Construct on the loop that will use it; :meth:`close` when done.
    """

    def __init__(self, address: str) -> None:
        self._channel = Channel(path=parse_address(address))

    def close(self) -> None:
        self._channel.close()

    def _request(self, method: str, request: Any, reply: Any) -> Stream[Any, Any]:
        return self._channel.request(
            method, Cardinality.UNARY_STREAM, request, reply, metadata=dict([SECURITY_HEADER])
        )

    async def watch_x509(self) -> AsyncGenerator[X509Update, None]:
        """One ``FetchX509SVID`` stream: yield every update until the server ends the stream.

        Raises :class:`WorkloadApiCallError` when the call fails or the stream breaks (also when it ends
        with status OK: the spec's stream is endless, so an end is a loss to the caller) and
        :class:`WorkloadApiResponseError` for a response that does not parse.
        """
        with _call_errors():
            async with self._request(FETCH_X509_SVID, X509SVIDRequest, X509SVIDResponse) as stream:
                await stream.send_message(X509SVIDRequest(), end=True)
                while (msg := await stream.recv_message()) is not None:
                    yield x509_update_from_response(msg)
                await stream.recv_trailing_metadata()
        raise WorkloadApiCallError("UNAVAILABLE", "the FetchX509SVID stream ended")

    async def fetch_x509_bundles(self) -> tuple[Bundle, ...]:
        """The first ``FetchX509Bundles`` response: every trust domain's bundle, sorted by trust domain.

        Bound it with ``asyncio.timeout`` if the server may be slow; it raises like :meth:`watch_x509`."""
        with _call_errors():
            async with self._request(FETCH_X509_BUNDLES, X509BundlesRequest, X509BundlesResponse) as stream:
                await stream.send_message(X509BundlesRequest(), end=True)
                msg = await stream.recv_message()
                await stream.cancel()
        if msg is None:
            raise WorkloadApiCallError("UNAVAILABLE", "the FetchX509Bundles stream ended without a response")
        by_td = _bundle_map(msg.bundles, "bundles")
        return tuple(by_td[td] for td in sorted(by_td))
