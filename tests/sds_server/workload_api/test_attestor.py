"""Attestation from the kernel: SO_PEERCRED over a real Unix socket pair, SPIRE's unix selector names."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sds_server.spiffe_id import SpiffeId
from sds_server.workload_api.attestor import SO_PEERPIDFD, PeerCredentials, UnixAttestor, peer_credentials
from sds_server.workload_api.config import Entry
from sds_server.workload_api.errors import CallerChangedError


@pytest.fixture
def listener(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A listening Unix socket and its path."""
    path = str(short_dir / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen(2)
        yield srv, path


def _connected_child(path: str) -> subprocess.Popen[bytes]:
    """A child process that connects to ``path`` and waits until its stdin is closed."""
    code = f"import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect({path!r}); sys.stdin.read()"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)


def test_peer_credentials_are_the_kernels() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == PeerCredentials(os.getpid(), os.geteuid(), os.getegid())


def test_selectors_of_another_process(listener: tuple[socket.socket, str]) -> None:
    """A child connects to our listening socket; we attest it as SPIRE's unix attestor would."""
    srv, path = listener
    child = _connected_child(path)
    try:
        conn, _ = srv.accept()
        with conn:
            creds = peer_credentials(conn)
            assert creds.pid == child.pid
            selectors = UnixAttestor().attest(creds, "mesh")
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    exe = os.readlink(f"/proc/{os.getpid()}/exe")  # the child runs the same interpreter
    digest = hashlib.sha256(Path(exe).read_bytes()).hexdigest()
    uid, gid = os.geteuid(), os.getegid()
    expected = {
        f"unix:uid:{uid}",
        f"unix:gid:{gid}",
        f"unix:user:{pwd.getpwuid(uid).pw_name}",
        f"unix:group:{grp.getgrgid(gid).gr_name}",
        f"unix:path:{exe}",
        f"unix:sha256:{digest}",
        "socket:mesh",
    }
    assert expected <= selectors
    supplementary = {s for s in selectors if s.startswith("unix:supplementary_gid:")}
    assert supplementary == {f"unix:supplementary_gid:{g}" for g in os.getgroups()}
    assert all(s.split(":")[0] in ("unix", "socket") for s in selectors)


def test_entry_matches_when_all_its_selectors_are_the_callers() -> None:
    entry = Entry(SpiffeId.parse("spiffe://example.org/a"), frozenset({"unix:uid:1", "socket:mesh"}))
    assert entry.matches(frozenset({"unix:uid:1", "unix:gid:1", "socket:mesh"}))
    assert not entry.matches(frozenset({"unix:uid:1", "socket:ext"}))
    assert not entry.matches(frozenset({"socket:mesh"}))


def _peerpidfd_supported() -> bool:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        try:
            os.close(a.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
        except OSError:
            return False
    return True


@pytest.mark.skipif(
    not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK) or not _peerpidfd_supported(),
    reason="needs root (ns_last_pid, to hand the caller's PID to another process) and SO_PEERPIDFD",
)
def test_a_reused_pid_is_not_attested_as_the_caller(listener: tuple[socket.socket, str]) -> None:
    """The caller connects and exits; its PID goes to another program (``sleep``). Attestation must not
    describe that other program as the caller: refused, as SPIRE's peertracker does ("caller exit
    suspected"); the server answers Unauthenticated and drops the connection."""
    srv, path = listener
    squatter: subprocess.Popen[bytes] | None = None
    try:
        live = _connected_child(path)
        conn_live, _ = srv.accept()
        with conn_live:
            creds, selectors = UnixAttestor().attest_connection(conn_live, "mesh")
            assert creds.pid == live.pid
            assert f"unix:path:{os.readlink('/proc/self/exe')}" in selectors  # a live caller: full set
        assert live.stdin is not None
        live.stdin.close()
        live.wait(10)

        gone = subprocess.Popen(
            [sys.executable, "-c", f"import socket; socket.socket(socket.AF_UNIX).connect({path!r})"]
        )
        conn, _ = srv.accept()
        gone.wait(10)
        with conn:
            for _ in range(20):  # make the next PID the caller's (others may fork meanwhile: retry)
                with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
                    fh.write(str(gone.pid - 1))
                squatter = subprocess.Popen(["sleep", "60"])
                if squatter.pid == gone.pid:
                    break
                squatter.kill()
                squatter.wait(10)
                squatter = None
            if squatter is None:
                pytest.skip("could not hand the PID to another process (busy machine)")
            assert os.readlink(f"/proc/{gone.pid}/exe").endswith("/sleep")  # the PID is someone else's now
            with pytest.raises(CallerChangedError, match=f"caller exit suspected: pid {gone.pid} is gone"):
                UnixAttestor().attest_connection(conn, "mesh")
    finally:
        if squatter is not None:
            squatter.kill()
            squatter.wait(10)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid after connecting")
def test_a_caller_that_changed_uid_after_connecting_is_refused_like_spire(
    listener: tuple[socket.socket, str],
) -> None:
    """Connected as root, then became 65534: not attested as root (SPIRE peertracker: "process uid …
    does not match original caller"); the server answers Unauthenticated (tests/spire differential)."""
    srv, path = listener
    code = (
        f"import os, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); "
        "os.setgroups([]); os.setgid(65534); os.setuid(65534); print('dropped', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/"
    )
    try:
        conn, _ = srv.accept()
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"dropped"
        message = "process uid 65534 does not match original caller 0"
        with conn, pytest.raises(CallerChangedError, match=message):
            UnixAttestor().attest_connection(conn, "mesh")
    finally:
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.close()
        child.stdout.close()
        child.wait(10)
