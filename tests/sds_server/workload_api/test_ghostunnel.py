"""The real Ghostunnel (go-spiffe Workload API client) gets its identities from our server: a request
crosses ``ghostunnel client`` → mutual TLS → ``ghostunnel server`` → a local HTTP backend, end to end, and a
client holding a non-allowed identity is refused.

Addresses: the backend and the client's plain listener are Unix sockets; only the TLS hop is TCP on
127.0.0.1, on a port picked free just before use (retried if another process grabs it first).
"""

from __future__ import annotations

import http.server
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bridge.processes import free_port, stop_process
from tests.support.workload_api import WorkloadApiHandle, entry, running_workload_api

SERVER_ID = "spiffe://example.org/ns/default/sa/httpbin"
CLIENT_ID = "spiffe://example.org/external/scone-app"
ROGUE_ID = "spiffe://example.org/external/rogue"


class _Backend(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello through ghostunnel\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:  # Unix peers have no address
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def http_backend(path: Path) -> Iterator[None]:
    server = _Backend(str(path), _Hello)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="backend")
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _wait_connectable(family: int, address: object, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            try:
                s.connect(address)  # type: ignore[arg-type]
            except OSError:
                time.sleep(0.1)
                continue
        return True
    return False


@contextmanager
def ghostunnel(cmd: list[str], log: Path, ready: tuple[int, object]) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        if not _wait_connectable(ready[0], ready[1], proc, 30):
            raise RuntimeError(f"ghostunnel not ready: {cmd}\n{log.read_text(errors='replace')}")
        yield proc
    finally:
        stop_process(proc, 10)


def _http_get(unix_path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(str(unix_path))
        s.sendall(b"GET /hello HTTP/1.0\r\nHost: httpbin\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextmanager
def tunnel_server(gt: Path, api: WorkloadApiHandle, backend: Path, log: Path) -> Iterator[int]:
    """``ghostunnel server`` with the server identity, on a free 127.0.0.1 port (retried on a lost race)."""
    for attempt in range(3):
        port = free_port()
        cmd = [
            str(gt),
            "server",
            f"--listen=127.0.0.1:{port}",
            f"--target=unix:{backend}",
            f"--use-workload-api-addr={api.address('server')}",
            "--use-workload-api-timeout=30s",
            f"--allow-uri={CLIENT_ID}",
            "--quiet=handshake-errs",
        ]
        try:
            with ghostunnel(cmd, log, (socket.AF_INET, ("127.0.0.1", port))):
                yield port
                return
        except RuntimeError:
            if attempt == 2:
                raise


def test_request_passes_end_to_end_through_ghostunnel(
    ghostunnel_bin: Path, tmp_path: Path, short_dir: Path
) -> None:
    config = {
        "trust_domain": "example.org",
        "entries": [
            entry(SERVER_ID, "socket:server"),
            entry(CLIENT_ID, "socket:client"),
            entry(ROGUE_ID, "socket:rogue"),
        ],
    }
    backend = short_dir / "backend.sock"
    with (
        running_workload_api(config, tmp_path, sockets=("server", "client", "rogue")) as api,
        http_backend(backend),
        tunnel_server(ghostunnel_bin, api, backend, tmp_path / "gt-server.log") as port,
    ):
        results = {}
        for name in ("client", "rogue"):
            listen = short_dir / f"{name}.sock"
            cmd = [
                str(ghostunnel_bin),
                "client",
                f"--listen=unix:{listen}",
                f"--target=127.0.0.1:{port}",
                f"--use-workload-api-addr={api.address(name)}",
                "--use-workload-api-timeout=30s",
                f"--verify-uri={SERVER_ID}",
            ]
            with ghostunnel(cmd, tmp_path / f"gt-{name}.log", (socket.AF_UNIX, str(listen))):
                try:
                    results[name] = _http_get(listen)
                except OSError as exc:
                    results[name] = repr(exc).encode()
        # both Ghostunnels fetched their SVIDs from our Workload API (go-spiffe client)
        calls = {e["socket"] for e in api.events("workload_api.call") if e["rpc"] == "FetchX509SVID"}
        assert {"server", "client", "rogue"} <= calls
    assert results["client"].startswith(b"HTTP/1.0 200"), results["client"]
    assert results["client"].endswith(b"hello through ghostunnel\n")
    assert b"hello through ghostunnel" not in results["rogue"]  # not in --allow-uri: refused
    assert "tls: bad certificate" in (tmp_path / "gt-rogue.log").read_text(errors="replace")
