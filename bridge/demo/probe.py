"""HTTP clients the checks use: plain HTTP to a local tunnel, and mTLS straight to the sidecar.

The "enclave app" side is plain HTTP to its tunnel's loopback port (exactly what the app inside the
enclave does). Direct mTLS probes play the intruders (no certificate, a non-admitted SPIFFE ID, a
foreign CA) and read the certificate the sidecar presents (its serial) — verifying the chain against
the trust bundle, never the host name (SPIFFE verification is by ID, not name).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from sds_server.files import atomic_write


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int | None
    body: str
    error: str | None = None
    server_serial: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    def describe(self) -> str:
        if self.status is not None:
            first = self.body.strip().splitlines()[0][:60] if self.body.strip() else ""
            return f"HTTP {self.status}" + (f" ({first})" if self.status != 200 and first else "")
        return f"no HTTP response: {self.error}"

    def xfcc(self) -> str | None:
        """The ``X-Forwarded-Client-Cert`` httpbin's ``/headers`` echoed, if any."""
        try:
            headers = json.loads(self.body)["headers"]
        except (ValueError, KeyError, TypeError):
            return None
        return next((str(v) for k, v in headers.items() if k.lower() == "x-forwarded-client-cert"), None)


def _error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLEOFError):
        return "TLS handshake aborted by the peer (connection closed)"
    if isinstance(exc, ssl.SSLError):
        return f"TLS alert {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the peer"
    return f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__


def http_get(port: int, path: str = "/headers", *, timeout: float = 5.0) -> HttpResult:
    """Plain HTTP GET to ``127.0.0.1:port`` (what the app does against its local tunnel)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "httpbin"})
        resp = conn.getresponse()
        return HttpResult(resp.status, resp.read().decode("utf-8", "replace"))
    except (OSError, http.client.HTTPException) as exc:
        return HttpResult(None, "", _error(exc))
    finally:
        conn.close()


class TlsProbe:
    """Direct mTLS to the sidecar with an optional client certificate (PEM files under ``workdir``)."""

    def __init__(
        self, workdir: Path, *, ca_pem: str, chain_pem: str | None = None, key_pem: str | None = None
    ) -> None:
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._ctx.check_hostname = False  # SPIFFE: verify the chain and the ID, not a host name
        self._ctx.verify_mode = ssl.CERT_REQUIRED
        self._ctx.load_verify_locations(cadata=ca_pem)
        if chain_pem and key_pem:
            workdir.mkdir(mode=0o700, exist_ok=True)
            cert, key = workdir / "cert.pem", workdir / "key.pem"
            atomic_write(cert, chain_pem.encode())
            atomic_write(key, key_pem.encode())
            self._ctx.load_cert_chain(cert, key)

    def get(self, port: int, path: str = "/headers", *, sni: str, timeout: float = 5.0) -> HttpResult:
        serial: int | None = None
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
                self._ctx.wrap_socket(raw, server_hostname=sni) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
                if der:
                    serial = x509.load_der_x509_certificate(der).serial_number
                request = f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n"
                tls.sendall(request.encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        except (OSError, ssl.SSLError) as exc:
            return HttpResult(None, "", _error(exc), serial)
        head, _, body = data.partition(b"\r\n\r\n")
        if not head:
            # TLS 1.3: a refused client certificate surfaces as a closed stream after the handshake.
            return HttpResult(None, "", "connection closed by the sidecar (no HTTP response)", serial)
        status = int(head.split(b" ", 2)[1])
        return HttpResult(status, body.decode("utf-8", "replace"), None, serial)
