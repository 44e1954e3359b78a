"""Every process the demo starts, and the guarantee that none outlives it.

Why a supervisor: the demo runs a Workload API server, an SDS server, two or more Envoys, Ghostunnels
and httpbin at once. Each child is started

- in its own process group (``process_group=0``), so a Ctrl-C in the terminal reaches only the demo,
  which then stops the children in reverse start order (servers remove their sockets on SIGTERM);
- with ``PR_SET_PDEATHSIG = SIGTERM`` (Linux ``prctl(2)``), so even a SIGKILL of the demo makes the
  kernel send each child SIGTERM (and a small janitor child then removes the temp dir). The death
  signal fires when the *thread* that forked the child exits, so children are only ever started from
  the thread that owns the supervisor (the main thread).

Stopping is two-stage: SIGTERM, then SIGKILL after a grace period. The supervisor owns one private
temp dir (0700, short path under /tmp because Unix socket paths are limited to 107 bytes) and removes
it last. ``Supervisor`` is a context manager; nothing here is thread-safe (single owner thread).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import structlog

from bridge.demo.errors import DemoError
from bridge.processes import stop_process

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 5.0

# The janitor: killed quietly on a normal close; if the demo dies (even by SIGKILL) its death signal
# (SIGTERM) arrives, it waits up to 3 s for the servers to remove their sockets (they got the same
# signal), then removes the whole temp dir — key files included. Plain ``-I -c`` code: no imports of ours.
_JANITOR = """
import os, shutil, signal, sys, time
d = sys.argv[1]
def bye(*_):
    end = time.monotonic() + 3
    while time.monotonic() < end and any(f.endswith(".sock") for _, _, fs in os.walk(d) for f in fs):
        time.sleep(0.05)
    time.sleep(0.2)
    shutil.rmtree(d, ignore_errors=True)
    os._exit(0)
signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
while True:
    signal.pause()
"""


_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


def _dying_with_parent(gid: int | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: (switch to group ``gid``, then) ask for SIGTERM when this process dies. The
    order matters: the kernel clears ``PR_SET_PDEATHSIG`` on any change of the effective group ID
    (``prctl(2)``). A parent that died between the fork and the ``prctl`` sends no signal any more:
    then the child's parent is no longer this process, and it ends itself before ``exec``."""
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover - runs in the forked child before exec
        if gid is not None:
            in_group(gid)()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent around the fork
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def in_group(gid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that switches the child to group ``gid`` (no supplementary groups; needs root)."""

    def preexec() -> None:  # pragma: no cover - runs in the forked child before exec
        os.setgroups([])
        os.setgid(gid)

    return preexec


def _fresh(directory: Path, name: str, suffix: str = "") -> Path:
    """``directory/<name><suffix>``, or ``<name>-2<suffix>``… when that is taken."""
    path, n = directory / f"{name}{suffix}", 1
    while path.exists():
        n += 1
        path = directory / f"{name}-{n}{suffix}"
    return path


@dataclass(slots=True)
class Child:
    """A running child process with its captured output file."""

    name: str
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output_tail(self, limit: int = 2000) -> str:
        """The last ``limit`` characters the child wrote (stdout and stderr), for error messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")


class Supervisor:
    """Owns a private temp dir and every child process of one demo run."""

    def __init__(self) -> None:
        self._children: list[Child] = []
        self._dir: Path | None = None
        self._owner = threading.get_ident()
        self._janitor: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Supervisor:
        self._dir = Path(tempfile.mkdtemp(prefix="mb-demo-", dir="/tmp"))
        self._dir.chmod(0o700)
        try:
            self._janitor = self._start_janitor(self._dir)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        return self

    @staticmethod
    def _start_janitor(directory: Path) -> subprocess.Popen[bytes]:
        """A tiny child that removes the temp dir if the demo is SIGKILLed (see ``_JANITOR``)."""
        popen = subprocess.Popen(
            [sys.executable, "-I", "-c", _JANITOR, str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=_dying_with_parent(),  # noqa: PLW1509 - prctl must run in the child
            close_fds=True,
        )
        assert popen.stdout is not None
        if popen.stdout.readline() != b"ready\n":
            popen.kill()
            popen.wait()
            raise DemoError("supervisor: the temp-dir janitor did not start")
        return popen

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def dir(self) -> Path:
        if self._dir is None:
            raise DemoError("supervisor: used outside its 'with' block")
        return self._dir

    @property
    def children(self) -> tuple[Child, ...]:
        return tuple(self._children)

    def subdir(self, name: str) -> Path:
        """A fresh 0700 directory inside the private temp dir (``name-2``… if taken)."""
        path = _fresh(self.dir, name)
        path.mkdir(mode=0o700)
        path.chmod(0o700)
        return path

    # -- children -----------------------------------------------------------------------------
    def start(
        self, name: str, argv: Sequence[str], *, stdout_pipe: bool = False, gid: int | None = None
    ) -> Child:
        """Start ``argv`` as a supervised child; its output goes to ``<tmp>/logs/<name>.log``.

        With ``stdout_pipe`` the child's stdout is a pipe the caller reads (stderr still to the log).
        With ``gid`` the child runs in that group (needs root): how the SPIRE mode tells workloads apart
        (the ``unix`` attestor's ``gid`` selector).
        """
        if threading.get_ident() != self._owner:
            raise DemoError(f"supervisor: {name!r}: children must be started from the owner thread")
        logs = self.dir / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        log_path = _fresh(logs, name, ".log")
        preexec = _dying_with_parent(gid)
        # Ctrl-C / SIGTERM are held back while forking: with a preexec_fn, CPython runs its at-fork
        # hooks (logging's lock release) in the parent, and a KeyboardInterrupt raised inside one is
        # printed as "Exception ignored" and lost — the demo then ran on to the end after a Ctrl-C.
        # Unblocked right after, the pending signal is delivered here, where it unwinds as it should.
        with log_path.open("ab") as out:
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE if stdout_pipe else out,
                    stderr=out,
                    process_group=0,
                    preexec_fn=preexec,  # noqa: PLW1509 - prctl (and setgid) must run in the child
                    close_fds=True,
                )
            except OSError as exc:
                raise DemoError(f"{name}: {argv[0]!r}: cannot start: {exc.strerror}") from exc
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child = Child(name=name, argv=tuple(argv), popen=popen, log_path=log_path)
        self._children.append(child)
        log.debug("demo.child.started", name=name, pid=popen.pid)
        return child

    def stop(self, child: Child, grace: float = _STOP_GRACE_S) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL. Returns the exit code."""
        code = stop_process(
            child.popen, grace, on_kill=lambda: log.warning("demo.child.kill", name=child.name, pid=child.pid)
        )
        if child.popen.stdout is not None:
            child.popen.stdout.close()
        if child in self._children:
            self._children.remove(child)
        return code

    def check_alive(self) -> None:
        """Raise ``DemoError`` naming any child that exited on its own (with its last output)."""
        for child in self._children:
            code = child.popen.poll()
            if code is not None:
                raise DemoError(f"{child.name}: exited with code {code} unexpectedly:\n{child.output_tail()}")

    def close(self) -> None:
        """Stop children newest first, remove the temp dir. Idempotent.

        A second Ctrl-C / SIGTERM while cleaning up is ignored (the owner thread only): interrupting the
        cleanup is what would leave processes and sockets behind.
        """
        if threading.get_ident() == threading.main_thread().ident:
            previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                self._close()
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
        else:
            self._close()

    def _close(self) -> None:
        janitor, self._janitor = self._janitor, None
        if janitor is not None:  # the normal path cleans up itself: the janitor is only for SIGKILL
            janitor.kill()
            janitor.wait()
            if janitor.stdout is not None:
                janitor.stdout.close()
        # Signal everyone first (fast), then wait, so total time is one grace period, not N.
        for child in reversed(self._children):
            child.popen.send_signal(signal.SIGTERM)
        for child in reversed(list(self._children)):
            self.stop(child)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
