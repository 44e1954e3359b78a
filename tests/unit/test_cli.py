"""The ``meshbridge`` entry point through a real subprocess: subcommands, exit codes, one error line each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MESHBRIDGE = [sys.executable, "-m", "bridge.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MESHBRIDGE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_help_lists_every_subcommand() -> None:
    done = _run("--help")
    assert done.returncode == 0
    for command in ("workload-api", "sds", "render", "check", "istio", "spire", "scone", "demo"):
        assert command in done.stdout


def test_unknown_subcommand_is_a_usage_error() -> None:
    done = _run("no-such-command")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_package_error_prints_one_error_line_per_problem_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "wl.yaml"
    config.write_text(
        "trust_domain: Example.org\n"
        "entries:\n"
        "  - spiffe_id: spiffe://example.org//a\n"
        "    selectors: ['unix:uid:0']\n"
    )
    done = _run("workload-api", "serve", "--config", str(config), "--socket", str(tmp_path / "s.sock"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) >= 2, done.stderr
    assert all(line.startswith("error: ") for line in lines), done.stderr
    assert any("trust_domain" in line and "'Example.org'" in line for line in lines)
    assert any("entries[0].spiffe_id" in line and "empty segments" in line for line in lines)
    assert "Traceback" not in done.stderr
