"""Helpers for tests that put real Envoy between real peers: an echo backend and an mTLS HTTP client."""

from __future__ import annotations

import http.client
import http.server
import json
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@dataclass
class EchoBackend:
    port: int
    server: http.server.ThreadingHTTPServer


@contextmanager
def echo_backend() -> Iterator[EchoBackend]:
    """A plain HTTP server on 127.0.0.1:0 answering GET with its request headers as JSON."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever, name="echo-backend", kwargs={"poll_interval": 0.05}
    )
    thread.start()
    try:
        yield EchoBackend(server.server_address[1], server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    server_cert: x509.Certificate

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data

    @property
    def server_spiffe_id(self) -> str:
        san = self.server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.UniformResourceIdentifier)[0]


def mtls_context(
    ca_pem: bytes, chain_pem: bytes | None = None, key_pem: bytes | None = None
) -> ssl.SSLContext:
    """Client context: trust ``ca_pem``, present ``chain_pem``/``key_pem`` if given; no hostname check
    (SVIDs carry no DNS SAN; callers check the server's SPIFFE ID instead)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_pem.decode())
    if chain_pem is not None and key_pem is not None:
        with tempfile.TemporaryDirectory(prefix="mb-cli-") as d:
            cert_path, key_path = Path(d) / "c.pem", Path(d) / "k.pem"
            cert_path.write_bytes(chain_pem)
            key_path.write_bytes(key_pem)
            key_path.chmod(0o600)
            ctx.load_cert_chain(cert_path, key_path)
    return ctx


def https_get(port: int, ctx: ssl.SSLContext, path: str = "/headers", timeout: float = 5.0) -> Response:
    """GET over TLS to 127.0.0.1:port; raises ``ssl.SSLError`` / ``OSError`` when refused."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        return Response(resp.status, body, x509.load_der_x509_certificate(der))
    finally:
        conn.close()


def http_get(port: int, path: str = "/headers", timeout: float = 5.0) -> tuple[int, bytes]:
    """Plain HTTP GET to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
