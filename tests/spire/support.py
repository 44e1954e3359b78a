"""Helpers for the suites against a real SPIRE: ``meshbridge sds serve`` as a process, Ghostunnel run as
another uid (the SPIRE unix attestor tells workloads apart by uid), plain HTTP over a Unix socket."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bridge.spire_local import SpireServer, connectable, stop_process
from tests.support.workload_api import log_events, running_sds_serve

NOBODY = 65534
STRANGER = 65533  # a uid no entry selects
MESH_ID = "spiffe://example.org/ns/default/sa/httpbin"
CLIENT_ID = "spiffe://example.org/external/scone-app"
T = TypeVar("T")

# The marks of a suite that runs a whole mesh: Envoy, SPIRE, and Ghostunnel clients under other uids.
WHOLE_MESH = [
    pytest.mark.usefixtures("envoy_bin", "spire_server_bin", "spire_agent_bin", "ghostunnel_bin"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients under uids the entries select"),
    pytest.mark.slow,
]


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class SdsProcess:
    """A running ``meshbridge sds serve`` (JSON logs at debug level, metrics on a free port)."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return log_events(self.log_path.read_text(errors="replace"), name)

    def metrics(self) -> dict[str, float]:
        port = self.events("sds.listening")[0]["metrics_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


@contextmanager
def sds_serve(
    workload_api: str, listen: Path, log_path: Path, extra: Sequence[str] = ()
) -> Iterator[SdsProcess]:
    """:func:`running_sds_serve` with debug logs and a metrics port, once it serves a default SVID."""
    args = ("--metrics", "127.0.0.1:0", *extra)
    with running_sds_serve(workload_api, listen, log_path, *args, log_level="debug") as proc:
        yield SdsProcess(proc, log_path)


def runnable_copy(binary: Path, directory: Path) -> Path:
    """A copy of ``binary`` another uid can execute: the checkout may sit where others cannot enter
    (e.g. a clone under /root), so its ``.peers/bin`` is out of their reach."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    target = directory / binary.name
    if not target.exists():
        shutil.copy2(binary, target)
        target.chmod(0o755)
    return target


def _drop_to(uid: int) -> Callable[[], None]:
    def demote() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return demote


@contextmanager
def ghostunnel_client(
    ghostunnel: Path,
    *,
    uid: int,
    workload_api: str,
    target_port: int,
    verify_uri: str,
    directory: Path,
    name: str = "client",
    wait: bool = True,
    api_timeout: str = "10s",
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``ghostunnel client`` running as ``uid``, SVID from ``workload_api``; listens on a Unix socket.

    Yields the process and the listening socket path (waited for unless ``wait=False``).
    """
    binary = runnable_copy(ghostunnel, directory / "bin")
    run_dir = directory / f"gt-{name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(run_dir, uid, uid)
    listen = run_dir / "listen.sock"
    log_path = directory / f"gt-{name}.log"
    cmd = [
        str(binary),
        "client",
        f"--listen=unix:{listen}",
        f"--target=127.0.0.1:{target_port}",
        f"--use-workload-api-addr={workload_api}",
        f"--use-workload-api-timeout={api_timeout}",
        f"--verify-uri={verify_uri}",
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=run_dir,
            preexec_fn=_drop_to(uid),  # noqa: PLW1509 - single-threaded enough: setuid only
        )
    try:
        if wait:

            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"ghostunnel {name} exited {proc.returncode}:\n{log_path.read_text()}"
                    )
                return connectable(listen)

            wait_for(f"ghostunnel {name} listening", up, 30)
        yield proc, listen
    finally:
        stop_process(proc, 10)


def http_get_unix(
    path: Path, request_path: str = "/headers", timeout: float = 10.0
) -> tuple[int, dict[str, Any]]:
    """GET over a plain Unix socket (a Ghostunnel client's listener); returns (status, JSON body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(f"GET {request_path} HTTP/1.1\r\nHost: httpbin\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        return 0, {}
    status = int(head.split(b" ", 2)[1])
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {"raw": body.decode(errors="replace")}
    return status, data


def create_mesh_entries(
    server: SpireServer,
    *,
    mesh_ttl: int | None = None,
    client_ttl: int | None = None,
    federates_with: Sequence[str] = (),
) -> None:
    """The mesh sidecar's SDS server runs as root (uid 0); the external client as 'nobody'."""
    server.entry_create(MESH_ID, ["unix:uid:0"], x509_svid_ttl=mesh_ttl, federates_with=federates_with)
    server.entry_create(CLIENT_ID, [f"unix:uid:{NOBODY}"], x509_svid_ttl=client_ttl)
