"""The command line and its sockets: exit codes, stale/live sockets, modes, graceful stop."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from spiffe import WorkloadApiClient

from sds_server.x509svid import validate_x509_svid
from tests.support.pki import make_upstream
from tests.support.workload_api import UID, entry, meshbridge_argv, running_workload_api

A = "spiffe://example.org/a"
CONFIG = {"trust_domain": "example.org", "entries": [entry(A, UID)]}


def _serve(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``meshbridge workload-api serve --config CONFIG ARGS`` run to its end (each of these fails)."""
    argv = meshbridge_argv("workload-api", "serve", "--config", str(config), *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_errors_exit_2_with_every_path(tmp_path: Path, short_dir: Path) -> None:
    bad = _write(
        tmp_path / "bad.yaml",
        {
            "trust_domain": "example.org",
            "svid_ttl": "fortnight",
            "entries": [
                {"spiffe_id": "spiffe://example.org/ok", "selectors": ["unix:uid:0"]},
                {"spiffe_id": "spiffe://example.org/a", "selectors": ["socket:nope"]},
                {"spiffe_id": "spiffe://x//a", "selectors": ["unix:uid:0"]},
            ],
        },
    )
    out = _serve(bad, "--socket", str(short_dir / "s.sock"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"error: {bad}: 3 problems:\n"), out.stderr
    assert (
        "  svid_ttl: 'fortnight': must be a duration like '90s', '10m', '1h' or integer seconds" in out.stderr
    )
    assert "  entries[2].spiffe_id: 'spiffe://x//a': path cannot contain empty segments ('//')" in out.stderr
    assert "  entries[1].selectors: 'socket:nope': no socket named 'nope' (sockets: default)" in out.stderr
    assert "  entries[2].spiffe_id: 'spiffe://x//a': must be in the trust domain" not in out.stderr
    assert "Traceback" not in out.stderr
    assert not (short_dir / "s.sock").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--socket-mode", "rwx"], "--socket-mode: 'rwx': must be an octal file mode like '0777'"),
        (["--socket", "=x"], "--socket[0]: '=x': expected PATH or NAME=PATH"),
        ([], "sockets: []: no socket to serve: give --socket PATH or 'sockets:' in the config"),
    ],
)
def test_bad_socket_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    cfg = _write(tmp_path / "c.yaml", CONFIG)
    out = _serve(cfg, *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_stale_socket_is_replaced(tmp_path: Path, short_dir: Path) -> None:
    path = short_dir / "api.sock"
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(str(path))  # a server that died without cleaning up leaves exactly this
    crashed.close()
    assert stat.S_ISSOCK(path.lstat().st_mode)
    config = {**CONFIG, "sockets": [{"name": "default", "path": str(path)}]}
    with running_workload_api(config, tmp_path) as api:
        assert api.events("socket.stale_replaced")
        with WorkloadApiClient(api.address()) as client:
            assert str(client.fetch_x509_svid().spiffe_id) == A


def test_live_socket_is_refused_and_left_alone(tmp_path: Path) -> None:
    with running_workload_api(CONFIG, tmp_path) as api:
        cfg = _write(tmp_path / "second.yaml", CONFIG)
        out = _serve(cfg, "--socket", str(api.socket()))
        assert out.returncode == 2, out.stderr
        assert f"error: socket '{api.socket()}': in use by a live server" in out.stderr
        with WorkloadApiClient(api.address()) as client:  # the first server is untouched
            assert str(client.fetch_x509_svid().spiffe_id) == A


def test_a_regular_file_at_the_socket_path_is_not_replaced(tmp_path: Path, short_dir: Path) -> None:
    path = short_dir / "api.sock"
    path.write_text("precious")
    cfg = _write(tmp_path / "c.yaml", CONFIG)
    out = _serve(cfg, "--socket", str(path))
    assert out.returncode == 2, out.stderr
    assert "exists and is not a socket" in out.stderr
    assert path.read_text() == "precious"


def test_socket_mode_option(tmp_path: Path) -> None:
    with running_workload_api(CONFIG, tmp_path, socket_mode="0600") as api:
        assert stat.S_IMODE(api.socket().stat().st_mode) == 0o600


def test_sigterm_stops_gracefully_removes_sockets_and_exits_0(tmp_path: Path) -> None:
    with running_workload_api(CONFIG, tmp_path, sockets=("a", "b")) as api:
        assert api.process is not None
        with WorkloadApiClient(api.address("a")) as client:
            client.fetch_x509_svid()
        api.process.send_signal(signal.SIGTERM)
        assert api.process.wait(15) == 0
        assert not api.socket("a").exists()
        assert not api.socket("b").exists()
        assert api.events("workload_api.stopped")


def test_restart_with_data_dir_keeps_the_bundle(tmp_path: Path) -> None:
    config = {**CONFIG, "data_dir": "state"}
    with running_workload_api(config, tmp_path) as api:
        with WorkloadApiClient(api.address()) as client:
            before = client.fetch_x509_bundles()
        bundle_pem = api.bundle_pem()
        api.restart()
        with WorkloadApiClient(api.address()) as client:
            after = client.fetch_x509_bundles()
    td = next(iter(before.bundles)).trust_domain
    b1, b2 = before.get_bundle_for_trust_domain(td), after.get_bundle_for_trust_domain(td)
    assert b1 is not None
    assert b2 is not None
    assert b1.x509_authorities == b2.x509_authorities
    assert api.bundle_pem() == bundle_pem
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "ca.json").st_mode) == 0o600


def test_upstream_ca_and_rsa_keys_through_the_server(tmp_path: Path) -> None:
    cert_path, _ = make_upstream(tmp_path)  # writes up.pem / up.key into tmp_path (the config's dir)
    root = x509.load_pem_x509_certificate(cert_path.read_bytes())
    config = {**CONFIG, "ca": {"key_type": "rsa-2048", "upstream": {"cert": "up.pem", "key": "up.key"}}}
    with running_workload_api(config, tmp_path) as api, WorkloadApiClient(api.address()) as client:
        ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    assert len(svid.cert_chain) == 2  # leaf + our intermediate
    assert svid.cert_chain[1].issuer == root.subject
    assert isinstance(svid.private_key, rsa.RSAPrivateKey)
    bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    assert bundle is not None
    assert bundle.x509_authorities == {root}
    validate_x509_svid(list(svid.cert_chain))
