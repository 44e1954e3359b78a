"""The Ghostunnel command as rendered, changed only where one machine forces it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bridge.demo.errors import DemoError
from bridge.demo.tunnel import (
    GhostunnelCommand,
    LocalTunnel,
    localize,
    parse_duration,
    to_workload_api_variant,
    with_verify_uri,
)

RENDERED = (
    "/usr/bin/ghostunnel client --listen=127.0.0.1:8000 --target=httpbin.default.svc.cluster.local:8000 "
    "--verify-uri=spiffe://example.org/ns/default/sa/httpbin --cert=/run/tls/svid.pem "
    "--key /run/tls/svid-key.pem --cacert=/run/tls/bundle.pem --timed-reload=1m --status=127.0.0.1:6060"
)
FILES = {
    "/run/tls/svid.pem": Path("/tmp/x/svid.pem"),
    "/run/tls/svid-key.pem": Path("/tmp/x/key.pem"),
    "/run/tls/bundle.pem": Path("/tmp/x/bundle.pem"),
}
LOCAL = LocalTunnel(
    sidecar_port=4443, listen_port=5000, status_port=5001, files=FILES, workload_api_addr="unix:///s"
)


def test_parse_accepts_both_flag_forms() -> None:
    cmd = GhostunnelCommand.parse(RENDERED, what="cmd")
    assert cmd.get("key") == "/run/tls/svid-key.pem"
    assert cmd.get("timed-reload") == "1m"
    assert cmd.program == "/usr/bin/ghostunnel"


def test_localize_changes_only_what_one_machine_forces() -> None:
    out = localize(GhostunnelCommand.parse(RENDERED, what="cmd"), LOCAL, what="cmd").argv("ghostunnel")
    assert out == [
        "ghostunnel",
        "client",
        "--listen=127.0.0.1:5000",
        "--target=127.0.0.1:4443",
        "--override-server-name=httpbin.default.svc.cluster.local",
        "--verify-uri=spiffe://example.org/ns/default/sa/httpbin",
        "--cert=/tmp/x/svid.pem",
        "--key=/tmp/x/key.pem",
        "--cacert=/tmp/x/bundle.pem",
        "--timed-reload=1m",
        "--status=127.0.0.1:5001",
    ]


def test_a_file_cas_does_not_inject_is_an_error() -> None:
    cmd = GhostunnelCommand.parse(
        RENDERED.replace("--cacert=/run/tls/bundle.pem", "--cacert=/etc/ca.pem"), what="c"
    )
    with pytest.raises(DemoError, match=r"--cacert=/etc/ca.pem: no injection file with that path"):
        localize(cmd, LOCAL, what="c")


def test_workload_api_variant_and_wrong_server_id() -> None:
    cmd = GhostunnelCommand.parse(RENDERED, what="cmd")
    wa = localize(to_workload_api_variant(cmd), LOCAL, what="cmd")
    assert not any(wa.has(f) for f in ("cert", "key", "cacert", "timed-reload"))
    assert wa.get("use-workload-api-addr") == "unix:///s"
    wrong = with_verify_uri(cmd, "spiffe://example.org/ns/default/sa/other")
    assert wrong.all("verify-uri") == ["spiffe://example.org/ns/default/sa/other"]


def test_the_real_ghostunnel_accepts_the_localized_flags(ghostunnel_bin: Path) -> None:
    for cmd in (
        GhostunnelCommand.parse(RENDERED, what="c"),
        to_workload_api_variant(GhostunnelCommand.parse(RENDERED, what="c")),
    ):
        argv = localize(cmd, LOCAL, what="c").argv(str(ghostunnel_bin))
        proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=20, check=False)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("text", "seconds"), [("1m", 60.0), ("500ms", 0.5), ("1h30m", 5400.0), ("2s", 2.0)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, what="d") == seconds


@pytest.mark.parametrize("bad", ["", "1", "1x", "m1"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(DemoError, match="a duration like"):
        parse_duration(bad, what="d")


def test_not_a_client_command() -> None:
    with pytest.raises(DemoError, match="must be '<ghostunnel> client"):
        GhostunnelCommand.parse("ghostunnel server --listen=x", what="c")
