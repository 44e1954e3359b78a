"""Specs that once crashed ``check``/``render`` instead of being refused: one ``error:`` line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.errors import SpecError
from bridge.spec import load_spec

MESHBRIDGE = [sys.executable, "-m", "bridge.cli"]
HEAD = "apiVersion: meshbridge.io/v1alpha1\nkind: Bridge\ntrustDomain: example.org\n"


def _block_nesting(depth: int) -> str:
    lines = [HEAD + "mesh:"]
    lines += ["  " * (i + 1) + "a:" for i in range(depth)]
    lines.append("  " * (depth + 1) + "b: 1")
    return "\n".join(lines) + "\n"


def _flow_nesting(depth: int) -> str:
    return HEAD + "mesh: " + "{a: " * depth + "1" + "}" * depth + "\n"


@pytest.mark.parametrize("text", [_block_nesting(500), _flow_nesting(500)], ids=["block", "flow"])
def test_deep_nesting_is_a_spec_error(text: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(text)
    assert info.value.problems == ["<spec>: the spec nests too deeply (a bridge spec is a few levels deep)"]


@pytest.mark.parametrize("command", ["check", "render"])
def test_deep_nesting_exits_2_with_one_line(tmp_path: Path, command: str) -> None:
    spec = tmp_path / "deep.yaml"
    spec.write_text(_block_nesting(500))
    args = [*MESHBRIDGE, command, "-f", str(spec)] + (["-o", str(tmp_path / "out")] if command == "render" else [])
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {spec}: the spec nests too deeply (a bridge spec is a few levels deep)\n"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
