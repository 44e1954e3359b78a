"""Two-stage signals (sds_server.lifecycle) on the real processes: a first SIGTERM/SIGINT drains and exits
0; a second one during the drain exits with status 1 at once — and the sockets are removed either way.

A drain here takes about a millisecond, too short to aim a second signal into. So the process is stopped
(SIGSTOP), sent SIGTERM and SIGINT, and continued: both arrive in the same loop iteration, the first
sets ``stop`` and the second cancels the serving task, as a second Ctrl-C during a long drain would.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from sds_server.lifecycle import EXIT_FORCED
from tests.sds_server.wl import mesh_config
from tests.support.workload_api import log_events, running_sds_serve, running_workload_api


def _events(log: Path) -> list[str]:
    return [record["event"] for record in log_events(log.read_text()) if "event" in record]


def _signal_twice(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    return proc.wait(10)


def test_sds_serve_one_signal_drains_and_exits_0(tmp_path: Path, short_dir: Path) -> None:
    sock, log = short_dir / "sds.sock", tmp_path / "sds.log"
    with (
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        running_sds_serve(api.address("mesh"), sock, log) as proc,
    ):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert _events(log)[-2:] == ["sds.signal", "sds.stopped"]
        assert not sock.exists()


def test_sds_serve_second_signal_exits_1_and_removes_the_socket(tmp_path: Path, short_dir: Path) -> None:
    sock, log = short_dir / "sds.sock", tmp_path / "sds.log"
    with (
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        running_sds_serve(api.address("mesh"), sock, log) as proc,
    ):
        assert _signal_twice(proc) == EXIT_FORCED, log.read_text()
        assert [e for e in _events(log) if e.startswith("sds.signal")] == ["sds.signal", "sds.signal.again"]
        assert not sock.exists()


def test_workload_api_serve_second_signal_exits_1_and_removes_the_sockets(tmp_path: Path) -> None:
    with running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api:
        paths = [api.socket("mesh"), api.socket("ext")]
        assert api.process is not None
        assert _signal_twice(api.process) == EXIT_FORCED, api.logs()
        assert api.events("workload_api.stopping")
        assert api.events("workload_api.exit_now")
        assert not any(p.exists() for p in paths)
