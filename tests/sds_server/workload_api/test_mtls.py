"""Two workloads with different identities complete mutual TLS (python ``ssl``, loopback) with the SVIDs
and bundle they fetched from the Workload API; a third, holding an SVID from a foreign CA, is refused."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from spiffe import WorkloadApiClient

from sds_server.x509svid import certificates_pem, private_key_pem
from tests.support.pki import key_pem, pem, self_signed_ca, sign_leaf
from tests.support.workload_api import WorkloadApiHandle, entry, running_workload_api

A = "spiffe://example.org/ns/default/sa/a"
B = "spiffe://example.org/ns/default/sa/b"
MALLORY = "spiffe://example.org/ns/default/sa/a"  # claims A's identity, but from a foreign CA


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path
    bundle: Path


def _write_identity(d: Path, name: str, chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> Identity:
    d.mkdir(mode=0o700, exist_ok=True)
    ident = Identity(d / f"{name}.crt", d / f"{name}.key", d / f"{name}-bundle.pem")
    ident.cert.write_bytes(chain_pem)
    ident.key.touch(mode=0o600)
    ident.key.write_bytes(key_pem)
    ident.bundle.write_bytes(bundle_pem)
    return ident


def _fetch_identity(api: WorkloadApiHandle, socket_name: str, d: Path) -> Identity:
    with WorkloadApiClient(api.address(socket_name)) as client:
        ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    assert bundle is not None
    return _write_identity(
        d,
        socket_name,
        certificates_pem(svid.cert_chain),
        private_key_pem(svid.private_key),
        certificates_pem(bundle.x509_authorities),
    )


def _foreign_identity(d: Path, real_bundle: Path) -> Identity:
    """Mallory knows the (public) trust bundle but holds an SVID for A's ID signed by her own CA."""
    ca_cert, ca_key = self_signed_ca("mallory root")
    leaf, key = sign_leaf(ca_cert, ca_key, [x509.UniformResourceIdentifier(MALLORY)])
    return _write_identity(d, "mallory", pem(leaf), key_pem(key), real_bundle.read_bytes())


def _context(ident: Identity, side: ssl._SSLMethod) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ident.cert, ident.key)
    ctx.load_verify_locations(cafile=str(ident.bundle))
    ctx.check_hostname = False  # SPIFFE authorizes by the URI SAN, not the host name (X509-SVID §5)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _peer_spiffe_id(conn: ssl.SSLSocket) -> str:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    sans = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    (uri,) = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uri


def _mtls(server: Identity, client: Identity) -> tuple[str | Exception, str | Exception]:
    """One mutual-TLS exchange over loopback; each side reports the peer's SPIFFE ID or its error."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    result: dict[str, str | Exception] = {}

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            with _context(server, ssl.PROTOCOL_TLS_SERVER).wrap_socket(raw, server_side=True) as conn:
                peer = _peer_spiffe_id(conn)
                result["server"] = peer
                conn.sendall(b"hello " + peer.encode())
        except (OSError, ssl.SSLError) as exc:
            result["server"] = exc

    thread = threading.Thread(target=serve, name="mtls-server")
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            _context(client, ssl.PROTOCOL_TLS_CLIENT).wrap_socket(raw) as conn,
        ):
            peer = _peer_spiffe_id(conn)
            data = conn.recv(1024)  # TLS 1.3: a refused client certificate surfaces here
            assert data.startswith(b"hello ")
            client_result: str | Exception = peer
    except (OSError, ssl.SSLError, AssertionError) as exc:
        client_result = exc
    finally:
        thread.join(15)
        listener.close()
    return result["server"], client_result


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Identity]]:
    workdir = tmp_path_factory.mktemp("wl-mtls")
    config = {"trust_domain": "example.org", "entries": [entry(A, "socket:a"), entry(B, "socket:b")]}
    with running_workload_api(config, workdir, sockets=("a", "b")) as api:
        a = _fetch_identity(api, "a", workdir / "ids")
        b = _fetch_identity(api, "b", workdir / "ids")
        yield {"a": a, "b": b, "mallory": _foreign_identity(workdir / "ids", a.bundle)}


def test_two_workloads_complete_mutual_tls_and_see_each_others_ids(identities: dict[str, Identity]) -> None:
    server_saw, client_saw = _mtls(identities["a"], identities["b"])
    assert (server_saw, client_saw) == (B, A)


def test_a_client_with_a_foreign_ca_is_refused(identities: dict[str, Identity]) -> None:
    server_saw, client_saw = _mtls(identities["a"], identities["mallory"])
    assert isinstance(server_saw, ssl.SSLError)
    assert "certificate verify failed" in str(server_saw)
    assert isinstance(client_saw, Exception)


def test_a_server_with_a_foreign_ca_is_refused(identities: dict[str, Identity]) -> None:
    server_saw, client_saw = _mtls(identities["mallory"], identities["b"])
    assert isinstance(client_saw, ssl.SSLCertVerificationError)
    assert isinstance(server_saw, Exception)
