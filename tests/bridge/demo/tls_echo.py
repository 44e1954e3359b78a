"""A real TLS server on 127.0.0.1:0 in a thread: answers each connection with what it saw of the client."""

from __future__ import annotations

import socket
import ssl
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from cryptography import x509


class TlsEcho:
    """Requires a client certificate from ``client_ca_pem``; replies ``serial=<n> alpn=<p>\\n``."""

    def __init__(
        self, cert_pem: str, key_pem: str, client_ca_pem: str, alpn: list[str] | None = None
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="mb-tls-", dir="/tmp")
        d = Path(self._dir.name)
        (d / "c.pem").write_text(cert_pem)
        (d / "k.pem").write_text(key_pem)
        (d / "ca.pem").write_text(client_ca_pem)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(d / "c.pem", d / "k.pem")
        self.ctx.load_verify_locations(d / "ca.pem")
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        if alpn:
            self.ctx.set_alpn_protocols(alpn)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tls-echo")

    def __enter__(self) -> TlsEcho:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self._dir.cleanup()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(3)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(100)
                    der = tls.getpeercert(binary_form=True)
                    serial = x509.load_der_x509_certificate(der).serial_number if der else None
                    tls.sendall(f"serial={serial} alpn={tls.selected_alpn_protocol()}\n".encode())
            except (ssl.SSLError, OSError):
                conn.close()
