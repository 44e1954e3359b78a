"""Killing ``meshbridge demo`` mid-run leaves nothing behind: no process, no socket, no temp dir.

SIGINT (Ctrl-C) and SIGTERM unwind the demo, which stops every child and removes its temp dir; SIGKILL
cannot be caught, so the children die by their parent-death signal (``PR_SET_PDEATHSIG``), the servers
among them remove their own sockets on that SIGTERM, and the supervisor's janitor removes the temp dir.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

_TMP_MARK = "sockets and every other file of this run: "


def start_demo(out_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "demo", "-o", str(out_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
    )


def tmp_dir(output: str) -> Path:
    """The run's temp dir, as the demo's output names it."""
    return Path(
        next(ln.split(_TMP_MARK, 1)[1].split(" ")[0] for ln in output.splitlines() if _TMP_MARK in ln)
    )


def read_until(proc: subprocess.Popen[bytes], marker: str, timeout: float = 60.0) -> Path:
    """Read the demo's output (unbuffered: select and a buffered reader do not mix) until ``marker``;
    return the run's temp dir."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} within {timeout}s:\n{data.decode(errors='replace')}"
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 65536) if ready else b""
        assert chunk or proc.poll() is None, f"demo ended early ({proc.returncode}):\n{data.decode()}"
        data += chunk
    return tmp_dir(data.decode(errors="replace"))


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(procs: list[psutil.Process], timeout: float = 15.0) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    survivors = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in survivors:
        p.kill()
    assert not survivors, f"processes outlived the demo: {[p.pid for p in survivors]}"


@pytest.mark.parametrize(
    ("sig", "when", "code", "extra"),
    [
        (signal.SIGINT, "[5]", 130, ()),  # Ctrl-C while the external side is starting
        (signal.SIGTERM, "Still running", 143, ("--keep-running",)),
    ],
    ids=["sigint-mid-setup", "sigterm-keep-running"],
)
def test_signal_stops_every_process_and_removes_sockets(
    tmp_path: Path,
    envoy_bin: Path,
    ghostunnel_bin: Path,
    sig: int,
    when: str,
    code: int,
    extra: tuple[str, ...],
) -> None:
    proc = start_demo(tmp_path / "out", *extra)
    try:
        tmp = read_until(proc, when)
        kids = _descendants(proc.pid)
        assert len(kids) >= 4, [k.cmdline() for k in kids]  # Workload API, httpbin, SDS, Envoy, …
        proc.send_signal(sig)
        raw, _ = proc.communicate(timeout=30)
        rest = raw.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, rest
    assert_all_gone(kids)
    assert not tmp.exists(), f"{tmp} left behind: {list(tmp.rglob('*'))}"
    assert "Traceback" not in rest


def test_sigkill_of_the_demo_takes_its_children_along(
    tmp_path: Path, envoy_bin: Path, ghostunnel_bin: Path
) -> None:
    proc = start_demo(tmp_path / "out")
    try:
        tmp = read_until(proc, "[7]")
        kids = _descendants(proc.pid)
        sockets = list(tmp.rglob("*.sock"))
        assert sockets, "the demo's Unix sockets should exist while it runs"
        proc.kill()
        proc.communicate(timeout=10)
        assert_all_gone(kids)
        left = [s for s in sockets if s.exists()]
        assert not left, f"sockets not removed after the parent's death: {left}"
        deadline = time.monotonic() + 5
        while tmp.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tmp.exists(), f"the janitor left {list(tmp.rglob('*'))}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(tmp, ignore_errors=True)
