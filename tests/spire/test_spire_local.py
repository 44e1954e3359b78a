"""``bridge.spire_local`` on its own: the rendered configs are valid HCL saying what we mean, the public
surface is pinned, a missing binary is one clear error, and the lifecycle leaves nothing behind."""

from __future__ import annotations

import socket
from pathlib import Path

import hcl  # type: ignore[import-untyped]
import pytest

import bridge.spire_local as spire_local
from bridge.spire_local import (
    AgentSettings,
    ServerSettings,
    SpireError,
    SpireServer,
    local_spire,
    render_agent_hcl,
    render_server_hcl,
)


def test_public_surface() -> None:
    assert spire_local.__all__ == sorted(spire_local.__all__)
    assert set(spire_local.__all__) == {
        "AgentSettings",
        "Entry",
        "LocalSpire",
        "ServerSettings",
        "SpireAgent",
        "SpireError",
        "SpireServer",
        "agent_alias",
        "connectable",
        "local_spire",
        "log_since",
        "render_agent_hcl",
        "render_server_hcl",
        "stop_process",
    }


def test_server_config_is_hcl_with_sqlite_join_token_and_short_ttls(tmp_path: Path) -> None:
    text = render_server_hcl(
        trust_domain="example.org",
        port=41234,
        data_dir=tmp_path / 'd "quoted"',
        socket_path=tmp_path / "s.sock",
        settings=ServerSettings(ca_ttl="10m", default_x509_svid_ttl="30s"),
    )
    doc = hcl.loads(text)
    server = doc["server"]
    assert server["bind_address"] == "127.0.0.1"
    assert server["bind_port"] == "41234"
    assert server["ca_ttl"] == "10m"
    assert server["default_x509_svid_ttl"] == "30s"
    assert server["data_dir"] == str(tmp_path / 'd "quoted"')  # escaped, not broken
    plugins = doc["plugins"]
    assert plugins["DataStore"]["sql"]["plugin_data"]["database_type"] == "sqlite3"
    assert "join_token" in plugins["NodeAttestor"]
    assert "memory" in plugins["KeyManager"]


def test_agent_config_is_hcl_with_unix_attestor_disk_keys_and_default_sds_names(tmp_path: Path) -> None:
    doc = hcl.loads(
        render_agent_hcl(
            trust_domain="example.org",
            server_port=41234,
            data_dir=tmp_path / "d",
            socket_path=tmp_path / "a.sock",
            trust_bundle_path=tmp_path / "b.pem",
            join_token="tok",
            settings=AgentSettings(),
        )
    )
    agent = doc["agent"]
    assert agent["server_port"] == "41234"
    assert agent["join_token"] == "tok"
    assert agent["sds"] == {
        "default_svid_name": "default",
        "default_bundle_name": "ROOTCA",
        "default_all_bundles_name": "ALL",
    }
    plugins = doc["plugins"]
    assert plugins["WorkloadAttestor"]["unix"]["plugin_data"]["discover_workload_path"] is True
    assert plugins["KeyManager"]["disk"]["plugin_data"]["directory"] == str(tmp_path / "d")


def test_missing_binary_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHBRIDGE_SPIRE_SERVER", str(tmp_path / "absent"))
    with pytest.raises(
        SpireError, match=r"^spire-server: not found \(\$MESHBRIDGE_SPIRE_SERVER, .*make peers"
    ):
        SpireServer("example.org", tmp_path)


@pytest.mark.usefixtures("spire_server_bin", "spire_agent_bin")
def test_lifecycle_cli_and_clean_stop() -> None:
    with local_spire("example.org") as spire:
        base = spire.directory
        assert spire.server.port > 0
        entry = spire.server.entry_create(
            "spiffe://example.org/x",
            ["unix:uid:4242"],
            x509_svid_ttl=90,
            hint="h",
            dns_names=["x.example.org"],
        )
        assert entry.parent_id == "spiffe://example.org/agent/local"
        assert entry.selectors == ("unix:uid:4242",)
        assert (entry.x509_svid_ttl, entry.hint, entry.dns_names) == (90, "h", ("x.example.org",))
        assert spire.server.entry_show(spiffe_id="spiffe://example.org/x") == [entry]
        with pytest.raises(SpireError, match="entry create"):
            spire.server.entry_create("not-an-id", ["unix:uid:1"])
        spire.server.entry_delete(entry.id)
        assert spire.server.entry_show(spiffe_id="spiffe://example.org/x") == []
        assert "BEGIN CERTIFICATE" in spire.server.bundle_show("pem")
        assert spire.server.pid is not None
        assert spire.agent.pid is not None
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(spire.agent.socket_path))
    assert not base.exists()
