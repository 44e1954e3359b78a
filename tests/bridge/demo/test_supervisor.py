"""The supervisor: children stopped on close, on errors, and even when the demo itself is SIGKILLed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bridge.demo.errors import DemoError
from bridge.demo.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)",
]


def test_close_stops_children_and_removes_the_temp_dir() -> None:
    with Supervisor() as sup:
        tmp = sup.dir
        assert oct(tmp.stat().st_mode & 0o777) == "0o700"
        kids = [sup.start(f"s{i}", SLEEPER) for i in range(3)]
        assert all(k.alive() for k in kids)
    assert not tmp.exists()
    assert all(not k.alive() for k in kids)


def test_a_child_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    with Supervisor() as sup:
        child = sup.start("stubborn", STUBBORN, stdout_pipe=True)
        assert child.popen.stdout is not None
        assert child.popen.stdout.readline() == b"ready\n"
        code = sup.stop(child, grace=0.5)
    assert code == -signal.SIGKILL


def test_children_survive_no_error_path() -> None:
    children = []

    def failing_run() -> None:
        with Supervisor() as sup:
            children.append(sup.start("s", SLEEPER))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing_run()
    assert children
    assert not children[0].alive()


def test_check_alive_names_a_child_that_died() -> None:
    with Supervisor() as sup:
        child = sup.start("quitter", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"])
        child.popen.wait(5)
        with pytest.raises(DemoError, match=r"quitter: exited with code 3 unexpectedly:\nbye"):
            sup.check_alive()


def test_children_die_when_the_demo_is_sigkilled() -> None:
    script = (
        "import sys, time\n"
        "from bridge.demo.supervisor import Supervisor\n"
        "sup = Supervisor().__enter__()\n"
        f"c = sup.start('s', {SLEEPER!r})\n"
        "print('PID', c.pid, sup.dir, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd())
    assert parent.stdout is not None
    line = b""
    while not line.startswith(b"PID "):
        line = parent.stdout.readline()
        assert line, "the supervisor script ended early"
    pid = int(line.split()[1])
    leftover = Path(line.split()[2].decode())
    assert psutil.pid_exists(pid)
    parent.kill()
    parent.wait(5)
    parent.stdout.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("child outlived a SIGKILLed supervisor")
    deadline = time.monotonic() + 5
    while leftover.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    exists = leftover.exists()
    shutil.rmtree(leftover, ignore_errors=True)
    assert not exists, "the janitor did not remove the temp dir after the SIGKILL"
