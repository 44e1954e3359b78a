"""Workload API socket files: bind a listening Unix socket safely.

* A socket file left by a crashed server (nobody accepts on it: ``ECONNREFUSED``) is replaced.
* A socket a live server answers on is never taken over: :class:`SocketError` (exit 2 from the CLI).
* Anything else at the path (a regular file, a directory) is never removed.
* The mode is applied between ``bind()`` and ``listen()``: until ``listen()`` nobody can connect, so the
  socket is never reachable with a wider mode than configured. The default, 0777, matches SPIRE's agent
  socket: attestation (``attestor.py``), not file permissions, decides who gets which identity — except in
  the single-machine socket-scoped mode, where each socket's mode (or its directory's) is the gate.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

import structlog

from sds_server.workload_api.errors import SocketError

__all__ = ["bind_unix_socket"]

log = structlog.get_logger(__name__)


def bind_unix_socket(path: Path, mode: int) -> socket.socket:
    """Bind a listening Unix socket; replace a stale socket file, refuse one a live server answers on."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketError(f"socket {str(path)!r}: exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
            log.warning("socket.stale_replaced", path=str(path))
        except OSError as exc:
            raise SocketError(f"socket {str(path)!r}: cannot probe the existing socket ({exc})") from exc
        else:
            raise SocketError(
                f"socket {str(path)!r}: in use by a live server; stop it or choose another path"
            )
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # chmod before listen(): until listen() nobody can connect, so the mode is never too open.
        os.chmod(path, mode)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SocketError(f"socket {str(path)!r}: cannot bind ({exc.strerror or exc})") from exc
    return sock
