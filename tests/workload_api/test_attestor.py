"""Attestation from the kernel: SO_PEERCRED over a real Unix socket pair, SPIRE's unix selector names."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import socket
import subprocess
import sys
import tempfile

from sds_server.spiffe_id import SpiffeId
from sds_server.workload_api.attestor import PeerCredentials, UnixAttestor, peer_credentials
from sds_server.workload_api.config import Entry


def test_peer_credentials_are_the_kernels() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_credentials(a) == PeerCredentials(os.getpid(), os.geteuid(), os.getegid())


def test_selectors_of_another_process() -> None:
    """A child connects to our listening socket; we attest it as SPIRE's unix attestor would."""
    d = tempfile.mkdtemp(prefix="mb-", dir="/tmp")
    path = os.path.join(d, "s.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    child = subprocess.Popen([sys.executable, "-c",
                              f"import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect({path!r}); "
                              "sys.stdin.read()"], stdin=subprocess.PIPE)
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
        srv.close()
        os.unlink(path)
        os.rmdir(d)
    exe = os.readlink(f"/proc/{os.getpid()}/exe")  # the child runs the same interpreter
    with open(exe, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    uid, gid = os.geteuid(), os.getegid()
    expected = {
        f"unix:uid:{uid}", f"unix:gid:{gid}", f"unix:user:{pwd.getpwuid(uid).pw_name}",
        f"unix:group:{grp.getgrgid(gid).gr_name}", f"unix:path:{exe}", f"unix:sha256:{digest}", "socket:mesh",
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
