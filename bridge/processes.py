"""Stopping a child process, written once for the SPIRE harness, the Envoy runner and the demo's
supervisor: a shutdown, not an outage — SIGTERM, a grace period, then SIGKILL; always reaped."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from typing import AnyStr

__all__ = ["stop_process"]


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
