"""Small helpers shared by the Workload API integration tests (real server process, real clients)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from spiffe._proto import workload_pb2, workload_pb2_grpc

from tests.workload_api.certs import key_usage

UID = f"unix:uid:{os.getuid()}"
HEADER = (("workload.spiffe.io", "true"),)
T = TypeVar("T")


def entry(spiffe_id: str, *selectors: str, **extra: Any) -> dict[str, Any]:
    return {"spiffe_id": spiffe_id, "selectors": list(selectors), **extra}


@contextmanager
def raw_stub(socket_path: Path) -> Iterator[Any]:
    """A plain grpcio stub of SpiffeWorkloadAPI (py-spiffe's generated code), for status-code checks."""
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    try:
        yield workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]
    finally:
        channel.close()


def rpc_calls(stub: Any, metadata: Sequence[tuple[str, str]] | None) -> dict[str, Callable[[], object]]:
    """One call of each of the five RPCs (streams: their first message)."""
    md = tuple(metadata) if metadata is not None else None
    return {
        "FetchX509SVID": lambda: next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=md,
                                                         timeout=10)),
        "FetchX509Bundles": lambda: next(stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=md,
                                                               timeout=10)),
        "FetchJWTSVID": lambda: stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["svc"]), metadata=md,
                                                  timeout=10),
        "FetchJWTBundles": lambda: next(stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=md,
                                                             timeout=10)),
        "ValidateJWTSVID": lambda: stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="svc", svid="a.b.c"), metadata=md, timeout=10),
    }


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def self_signed_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
