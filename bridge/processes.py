"""Child processes, written once for the SPIRE harness, the Envoy runner and the demo's supervisor:
stopping one (a shutdown, not an outage — SIGTERM, a grace period, then SIGKILL; always reaped) and a
free loopback port for programs that cannot report a port-0 bind back."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable
from typing import AnyStr

__all__ = ["free_port", "stop_process"]


def stop_process(
    proc: subprocess.Popen[AnyStr], timeout: float = 10.0, *, on_kill: Callable[[], object] | None = None
) -> int:
    """SIGTERM ``proc``, then SIGKILL it if it is still running after ``timeout`` seconds (calling
    ``on_kill`` first); reap it and return its exit code. A process that already exited is only reaped.
    (``Popen.send_signal`` ignores a process that is gone meanwhile.)"""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if on_kill is not None:
                on_kill()
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def free_port() -> int:
    """A loopback port free right now (for programs that cannot report a port-0 bind back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
