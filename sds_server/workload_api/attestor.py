"""Workload attestation from the kernel: SO_PEERCRED on the Unix socket, then SPIRE's unix selectors.

The caller's credentials come from ``getsockopt(SOL_SOCKET, SO_PEERCRED)`` on the accepted connection:
the kernel records pid/uid/gid at ``connect()`` time, so a caller cannot lie about them. From those we
derive the selectors exactly as SPIRE's unix workload attestor names them (spire
``pkg/agent/plugin/workloadattestor/unix``):

=============================  ==============================================================
``unix:uid:N``                 effective uid
``unix:user:NAME``             its user name (if it has one)
``unix:gid:N``                 effective gid
``unix:group:NAME``            its group name (if it has one)
``unix:supplementary_gid:N``   every gid in ``/proc/PID/status`` ``Groups:``
``unix:supplementary_group:X`` their names
``unix:path:/exe``             ``readlink /proc/PID/exe`` (SPIRE: ``discover_workload_path``)
``unix:sha256:HEX``            SHA-256 of that executable (cached by path, inode, mtime, size)
=============================  ==============================================================

**Single-machine mode.** On one machine every workload may run as the same user, so uid/gid selectors
cannot tell them apart. The server may therefore listen on several sockets and adds ``socket:<name>``
naming the socket the caller reached. Entries scoped with ``socket:<name>`` are then governed by that
socket's file permissions (``mode``; directory permissions work too): whoever can connect to
``mesh.sock`` gets the ``socket:mesh`` identities. This is a deliberate trust decision by the operator,
not attestation; production uses SPIRE's agent with real workload attestors.

``/proc/PID/exe`` of another user's process is unreadable without privileges; then the path and sha256
selectors are omitted (an entry needing them simply does not match) and
``workload_api.attest.exe_unreadable`` is logged.

**PID reuse.** SO_PEERCRED's pid is the process that *connected*; attestation runs later (per call, on a
long-lived connection). If that process has exited — e.g. after handing the connection to another
process — its PID may already belong to someone else, and ``/proc/PID`` would describe that other
process (its executable, its groups). Like SPIRE's agent (``peertracker``: "the workload exited"),
:meth:`UnixAttestor.attest_connection` holds a pidfd of the connecting process (``SO_PEERPIDFD``, Linux
≥ 6.5) and, *after* reading ``/proc``, checks that the process is still alive; if it is not,
``workload_api.attest.caller_exited`` is logged and :class:`CallerChangedError` raised: the call is
refused and the connection dropped, as SPIRE does ("caller exit suspected"), rather than attested from
what the kernel recorded at ``connect()``. On kernels without ``SO_PEERPIDFD`` this check is not
possible and is skipped.

**Changed credentials.** SO_PEERCRED's uid/gid are those of ``connect()``; a process may change them
later (a daemon that connects as root, then drops to ``nobody``, keeps its connection). Like SPIRE's agent
(``pkg/common/peertracker/tracker_linux.go`` ``IsAlive``: "process uid … does not match original
caller"), :meth:`UnixAttestor.attest_connection` compares the owner of ``/proc/PID`` with the recorded
uid/gid and raises :class:`CallerChangedError` if they differ — the server answers ``Unauthenticated``,
as SPIRE does, instead of handing the connect-time identity to a process that no longer holds it.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import pwd
import signal
import socket

import structlog

from sds_server.grpc_server import PeerCredentials, peer_credentials
from sds_server.workload_api.errors import CallerChangedError

__all__ = ["PeerCredentials", "UnixAttestor", "peer_credentials"]  # the first and last from grpc_server

log = structlog.get_logger(__name__)

#: ``SO_PEERPIDFD`` (Linux ≥ 6.5; Python 3.11 has no constant for it): a pidfd of the connecting process.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_HASH_CHUNK = 1 << 20
_CACHE_MAX = 256


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _supplementary_gids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except OSError:
        log.warning("workload_api.attest.status_unreadable", pid=pid)
    return []


def _check_same_owner(creds: PeerCredentials) -> None:
    """Raise :class:`CallerChangedError` if ``/proc/PID`` is now owned by another uid/gid than the one
    recorded at ``connect()`` (see "Changed credentials"). A vanished ``/proc/PID`` is left to the
    pidfd check."""
    try:
        st = os.stat(f"/proc/{creds.pid}")
    except OSError:
        return
    for what, now, then in (("uid", st.st_uid, creds.uid), ("gid", st.st_gid, creds.gid)):
        if now != then:
            fields = {f"expect_{what}": then, f"received_{what}": now}
            log.warning("workload_api.attest.caller_changed", pid=creds.pid, **fields)
            raise CallerChangedError(
                f"new process detected: process {what} {now} does not match original caller {then}"
            )


def _caller_exited(creds: PeerCredentials) -> CallerChangedError:
    log.warning("workload_api.attest.caller_exited", pid=creds.pid, uid=creds.uid)
    return CallerChangedError(f"caller exit suspected: pid {creds.pid} is gone")


class UnixAttestor:
    """Turns peer credentials into selectors; caches executable hashes by (path, inode, mtime, size)."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[str, int, int, int], str] = {}

    def _exe_sha256(self, pid: int, path: str) -> str | None:
        proc_exe = f"/proc/{pid}/exe"
        try:
            # Open through /proc so we hash the very file the process runs, even if the path was replaced.
            fd = os.open(proc_exe, os.O_RDONLY)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            key = (path, st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._hashes.get(key)
            if cached is not None:
                return cached
            digest = hashlib.sha256()
            while chunk := os.read(fd, _HASH_CHUNK):
                digest.update(chunk)
        finally:
            os.close(fd)
        if len(self._hashes) >= _CACHE_MAX:
            self._hashes.clear()
        self._hashes[key] = digest.hexdigest()
        return self._hashes[key]

    def attest_connection(
        self, sock: socket.socket, socket_name: str | None = None, *, with_sha256: bool = True
    ) -> tuple[PeerCredentials, frozenset[str]]:
        """Attest the process that connected ``sock``: its credentials and selectors (PID-reuse safe).

        See "PID reuse" in the module docstring: ``/proc`` is read, then the pidfd says whether the
        connecting process is still the one holding that PID; if not, or if it changed uid/gid since it
        connected, :class:`CallerChangedError` (the server answers ``Unauthenticated``, as SPIRE does).
        """
        creds = peer_credentials(sock)
        pidfd: int | None = None
        try:
            pidfd = int(sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD))
        except OSError as exc:
            if exc.errno not in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):  # else kernel < 6.5: no pidfd
                raise _caller_exited(creds) from exc
        try:
            selectors = self.attest(creds, socket_name, with_sha256=with_sha256)
            if pidfd is not None:
                try:
                    signal.pidfd_send_signal(pidfd, 0)  # signal 0: existence check only
                except ProcessLookupError as exc:
                    raise _caller_exited(creds) from exc
                except PermissionError:
                    pass  # it exists (we may just not signal it)
            _check_same_owner(creds)
            return creds, selectors
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def attest(
        self, creds: PeerCredentials, socket_name: str | None = None, *, with_sha256: bool = True
    ) -> frozenset[str]:
        """The caller's selectors (see the module docstring).

        ``with_sha256=False`` skips hashing the executable (the server passes it when no entry uses a
        ``unix:sha256`` selector: hashing a large binary is the one costly step of attestation).
        """
        selectors = {f"unix:uid:{creds.uid}", f"unix:gid:{creds.gid}"}
        if (user := _user_name(creds.uid)) is not None:
            selectors.add(f"unix:user:{user}")
        if (group := _group_name(creds.gid)) is not None:
            selectors.add(f"unix:group:{group}")
        for gid in _supplementary_gids(creds.pid):
            selectors.add(f"unix:supplementary_gid:{gid}")
            if (name := _group_name(gid)) is not None:
                selectors.add(f"unix:supplementary_group:{name}")
        try:
            exe = os.readlink(f"/proc/{creds.pid}/exe")
        except OSError:
            log.info("workload_api.attest.exe_unreadable", pid=creds.pid, uid=creds.uid)
        else:
            selectors.add(f"unix:path:{exe}")
            sha = self._exe_sha256(creds.pid, exe) if with_sha256 else None
            if sha is not None:
                selectors.add(f"unix:sha256:{sha}")
        if socket_name is not None:
            selectors.add(f"socket:{socket_name}")
        return frozenset(selectors)
