"""``meshbridge demo --workload-api spire``: the demo's checks against real SPIRE (v1.13) instead of the
embedded Workload API — a spire-server + spire-agent per trust domain, federated with ``bundle show|set``,
one entry per side selected by ``unix:uid:0`` + ``unix:gid:<side's group>``.

Run as a subprocess exactly as an operator would type it; its stdout is the evidence. The check list is
the embedded run's (``EXPECTED_CHECKS``): SPIRE mode adds none and drops none. Ctrl-C mid-run stops the
SPIRE processes too. Without root the mode refuses with exit 2 (it must start processes in other groups).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from bridge.demo.report import OK
from bridge.demo.spire_mode import GID_BASE, NEEDS_ROOT
from tests.bridge.demo.test_demo_cleanup import assert_all_gone, read_until, start_demo, tmp_dir
from tests.bridge.demo.test_demo_e2e import EXPECTED_CHECKS, check_lines

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("envoy_bin", "spire_server_bin", "spire_agent_bin", "ghostunnel_bin"),
]

_SPIRE = ("--workload-api", "spire")


def _processes_naming(path: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in arg for arg in p.info["cmdline"] or ()):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_demo_on_real_spire_passes_the_same_checks(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "demo", *_SPIRE, "-o", str(tmp_path / "demo-out")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if os.geteuid() != 0:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert NEEDS_ROOT in proc.stderr
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = check_lines(proc.stdout)
    assert set(checks) == set(EXPECTED_CHECKS), proc.stdout
    assert len(checks) == len(EXPECTED_CHECKS)
    assert all(mark == OK for mark, _ in checks.values()), proc.stdout
    out = proc.stdout
    # real SPIRE, federated both ways, one entry per side selected by its group
    assert "real SPIRE: a spire-server + spire-agent per trust domain (example.org, apps.example.org)" in out
    assert "bundle show -format spiffe | bundle set, both ways" in out
    assert "-federatesWith spiffe://apps.example.org" in out
    scoping = checks["Workload API: each side gets only its own identity"][1]
    assert f"gid {GID_BASE} (mesh)→spiffe://example.org/ns/default/sa/httpbin" in scoping
    assert "+bundle apps.example.org" in scoping
    assert "spire/apps.example.org/agent/api.sock" in out  # Ghostunnel's Workload API is the agent's
    assert "spire-server entry update of every entry" in out
    # every process stopped, the temp dir (SPIRE data, sockets, keys) removed
    tmp = tmp_dir(out)
    assert not tmp.exists(), list(tmp.rglob("*"))
    assert not _processes_naming(tmp)
    assert time.monotonic() - started < 120, "SPIRE mode should finish well within two minutes"


def test_ctrl_c_mid_run_stops_spire_too(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root: covered by the exit-2 branch of the test above")
    proc = start_demo(tmp_path / "out", *_SPIRE)
    try:
        tmp = read_until(proc, "[5]", timeout=90)  # SPIRE up, first sidecar started
        kids = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(k.cmdline()) for k in kids)
        assert "spire-server" in names, names
        assert "spire-agent" in names, names
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, rest.decode(errors="replace")
    assert_all_gone(kids)
    assert not tmp.exists()
