"""``meshbridge render|check|istio|spire|scone`` through real subprocesses: output, exit codes, no debris."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.bridge.strategies import EXAMPLE
from tests.support.kube import free_ports
from tests.support.schemas import problems, scone_problems

MESHBRIDGE = [sys.executable, "-m", "bridge.cli"]
HEX = "ab" * 32


def run(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [*MESHBRIDGE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        cwd=cwd,
    )


def _error_lines(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines, "expected error lines on stderr"
    assert all(ln.startswith("error: ") for ln in lines), stderr
    assert "Traceback" not in stderr
    return lines


def test_render_writes_the_tree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("render", "-f", str(EXAMPLE), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "README.md" in files
    assert "spire/register-entries.sh" in files
    assert ".meshbridge-render" in files
    assert os.stat(out / "spire/register-entries.sh").st_mode & 0o777 == 0o755
    assert os.stat(out / "istio/istio-operator.yaml").st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dirs left next to it
    # rendering again replaces the directory whole
    (out / "stale.txt").write_text("old")
    assert run("render", "-f", str(EXAMPLE), "-o", str(out)).returncode == 0
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_render_from_stdin_with_session_hashes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(
        "render",
        "-f",
        "-",
        "-o",
        str(out),
        "--session-hash",
        f"meshbridge/shielded-client={HEX}",
        "--session-hash",
        f"meshbridge/tunnel-client={HEX}",
        stdin=EXAMPLE.read_text(),
    )
    assert result.returncode == 0, result.stderr
    entries = json.loads((out / "spire/entries.json").read_text())
    assert [e["spiffe_id"] for e in entries["entries"]] == [
        "spiffe://example.org/external/shielded-client",
        "spiffe://example.org/external/tunnel-client",
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            EXAMPLE.read_text().replace("targets: [httpbin]", "targets: [httpbinn]"),
            ["error: externalApps[0].targets[0]: no mesh service 'httpbinn' (did you mean 'httpbin'?)"],
        ),
        (
            "kind: [\n",
            ["error: <spec>:2:1: invalid YAML: did not find expected node content"],
        ),
        (
            "apiVersion: meshbridge.io/v1alpha1\nkind: Bridge\n",
            [
                "error: trustDomain: required (e.g. 'example.org')",
                "error: meshServices: required (a non-empty list)",
                "error: externalApps: required (a non-empty list)",
                "error: spire: required (SVIDStore plugin and CAS connection)",
            ],
        ),
    ],
)
def test_invalid_spec_exits_2_and_leaves_nothing(tmp_path: Path, spec: str, expected: list[str]) -> None:
    out = tmp_path / "out"
    result = run("render", "-f", "-", "-o", str(out), stdin=spec)
    assert result.returncode == 2
    assert _error_lines(result.stderr) == expected
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_invalid_spec_keeps_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("render", "-f", str(EXAMPLE), "-o", str(out)).returncode == 0
    before = (out / "README.md").read_text()
    result = run("render", "-f", "-", "-o", str(out), stdin="kind: Bridge\n")
    assert result.returncode == 2
    assert (out / "README.md").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_render_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    result = run("render", "-f", str(EXAMPLE), "-o", str(tmp_path))
    assert result.returncode == 2
    assert _error_lines(result.stderr)[0].endswith("refusing to replace it: choose another directory")
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_check_ok_and_warnings() -> None:
    result = run("check", "-f", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 1 mesh service(s), 2 external app(s), 13 documents consistent\n"
    insecure = EXAMPLE.read_text().replace(
        "    targets: [httpbin]\n", "    targets: [httpbin]\n    serverAuth: false\n"
    )
    result = run("check", "-f", "-", stdin=insecure)
    assert result.returncode == 0
    assert "warning: externalApps[0] (shielded-client): server_auth: 'false': " in result.stderr


def test_istio_commands() -> None:
    overlay = run("istio", "overlay", "--trust-domain", "example.org")
    assert overlay.returncode == 0, overlay.stderr
    doc = yaml.safe_load(overlay.stdout)
    assert problems(doc) == []
    assert doc["spec"]["meshConfig"]["trustDomain"] == "example.org"
    policy = run(
        "istio", "policy", "--service", "httpbin", "--allow", "spiffe://example.org/external/a", "-o", "json"
    )
    assert policy.returncode == 0, policy.stderr
    listed = json.loads(policy.stdout)
    assert listed["kind"] == "List"
    for item in listed["items"]:
        assert problems(item) == []
    assert listed["items"][1]["spec"]["rules"][0]["from"][0]["source"]["principals"] == [
        "example.org/external/a"
    ]
    bad = run("istio", "policy", "--service", "Http_bin", "--allow", "spiffe://x//y")
    assert bad.returncode == 2
    assert _error_lines(bad.stderr) == [
        "error: --service: 'Http_bin': must be a DNS-1035 label (Kubernetes Service name): lowercase "
        "letters, "
        "digits and '-', starting with a letter and ending with a letter or digit",
        "error: --allow: 'spiffe://x//y': path cannot contain empty segments ('//')",
    ]


def test_spire_commands() -> None:
    base = [
        "spire",
        "entries",
        "--spiffe-id",
        "spiffe://example.org/external/a",
        "--parent-id",
        "spiffe://example.org/agent",
        "--cas-session",
        "ns/a",
    ]
    missing = run(*base)
    assert missing.returncode == 2
    assert _error_lines(missing.stderr)[0].startswith("error: --session-hash: required for JSON/YAML entries")
    ok = run(*base, "--session-hash", HEX)
    entry = json.loads(ok.stdout)["entries"][0]
    assert {"type": "sconecas_sessionmanager", "value": f"session_hash:{HEX}"} in entry["selectors"]
    script = run(*base, "--script")
    assert script.returncode == 0
    assert script.stdout.startswith("#!/usr/bin/env bash")
    hcl = run(
        "spire",
        "svidstore",
        "--cas",
        "https://cas:8081",
        "--client-cert",
        "/c",
        "--client-key",
        "/k",
        "--trust-anchor",
        "/t",
    )
    assert hcl.returncode == 0
    assert hcl.stdout.startswith('SVIDStore "sconecas_sessionmanager" {')
    template = run(
        "spire",
        "svidstore",
        "--cas",
        "https://cas:8081",
        "--client-cert",
        "/c",
        "--client-key",
        "/k",
        "--trust-anchor",
        "/t",
        "--template",
        "bundle",
        "--bundle-session",
        "ns/bundle",
    )
    assert template.stdout.startswith("name: ns/bundle\n")


def test_scone_commands(ghostunnel_bin: Path) -> None:
    common = [
        "--session",
        "ns/app",
        "--mrenclave",
        HEX,
        "--target",
        "httpbin.default:8000",
        "--trust-domain",
        "example.org",
    ]
    shield = run("scone", "network-shield", *common, "--service", "app", "--command", "python3 app.py")
    assert shield.returncode == 0
    assert shield.stderr == ""
    session = yaml.safe_load(shield.stdout)
    assert scone_problems(session) == []
    env = session["services"][0]["environment"]
    assert env["SCONE_NETWORK_SHIELD_CLIENT_1_DESTINATION"] == "TCP:httpbin.default.svc.cluster.local:8000"
    insecure = run(
        "scone", "network-shield", *common, "--service", "app", "--command", "x", "--no-server-auth"
    )
    assert insecure.returncode == 0
    assert insecure.stderr.startswith("warning: server_auth: 'false'")
    gt = run("scone", "ghostunnel", *common, "--listen-port", "9000", "--command-line")
    assert gt.returncode == 0, gt.stderr
    argv = gt.stdout.split()
    assert "--verify-uri=spiffe://example.org/ns/default/sa/httpbin" in argv
    assert "--listen=127.0.0.1:9000" in argv
    helped = subprocess.run(
        [str(ghostunnel_bin), *argv[1:], "--help"], capture_output=True, timeout=30, check=False
    )
    assert helped.returncode == 0
    gsession = yaml.safe_load(run("scone", "ghostunnel", *common).stdout)
    assert scone_problems(gsession) == []
    bad = run(
        "scone",
        "ghostunnel",
        "--session",
        "ns/a b",
        "--mrenclave",
        "xyz",
        "--target",
        "foo",
        "--command-line",
    )
    assert bad.returncode == 2
    assert _error_lines(bad.stderr) == [
        "error: --session: 'ns/a b': SCONE session names are '/'-separated segments of letters, digits, "
        "'_' and '-'",
        "error: --mrenclave: 'xyz': MRENCLAVE must be 64 hexadecimal digits (SHA-256 of the enclave)",
        "error: --target: 'foo': must be SVC.NAMESPACE:PORT[=SPIFFE_ID]",
    ]


def test_check_reports_dns_name_missing_from_the_svid(tmp_path: Path) -> None:
    spec = EXAMPLE.read_text().replace(
        "    labels: {app: httpbin}\n", "    labels: {app: httpbin}\n    svidDnsNames: false\n"
    )
    result = run("check", "-f", "-", stdin=spec)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    warnings = [ln for ln in lines if ln.startswith("warning: ")]
    prefix = "warning: meshServices[0] (default/httpbin): svidDnsNames: false, but "
    assert any(w.startswith(prefix) for w in warnings)
    assert [ln for ln in lines if ln not in warnings] == [
        "error: externalApps[0] (shielded-client): 'httpbin.default.svc.cluster.local': authenticated by "
        "DNS name "
        "but no ClusterSPIFFEID of default/httpbin puts it in the SVID (dnsNameTemplates): the handshake "
        "would fail",
        "error: externalApps[1] (tunnel-client): 'httpbin.default.svc.cluster.local': authenticated by DNS "
        "name "
        "but no ClusterSPIFFEID of default/httpbin puts it in the SVID (dnsNameTemplates): the handshake "
        "would fail",
    ]
    # render still writes (the operator opted out explicitly) but says so
    rendered = run("render", "-f", "-", "-o", str(tmp_path / "out"), stdin=spec)
    assert rendered.returncode == 0
    assert "warning: meshServices[0] (default/httpbin): svidDnsNames: false" in rendered.stderr


def test_apply_and_diff_without_a_reachable_cluster_exit_2(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there once the probe socket is closed
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    for command in (["apply"], ["apply", "--dry-run=server", "--prune"], ["diff"]):
        result = run(*command, "-f", str(EXAMPLE), "--kubeconfig", str(kubeconfig))
        assert result.returncode == 2, result
        assert _error_lines(result.stderr) == [
            f"error: https://127.0.0.1:{port}: no Kubernetes API server reachable (MaxRetryError); "
            "check the kubeconfig's context (--context) and that the cluster is up"
        ]
    result = run("apply", "-f", str(EXAMPLE), "--kubeconfig", str(kubeconfig), "--context", "nope")
    assert result.returncode == 2
    (line,) = _error_lines(result.stderr)
    assert line.startswith(f"error: kubeconfig {kubeconfig} context 'nope': no usable cluster: ")
    result = run("diff", "-f", str(EXAMPLE), "--kubeconfig", str(tmp_path / "missing"))
    assert result.returncode == 2
    (line,) = _error_lines(result.stderr)
    assert line.startswith(f"error: kubeconfig {tmp_path / 'missing'}: no usable cluster: ")


def test_apply_says_the_istio_operator_is_for_istioctl(tmp_path: Path) -> None:
    result = run("apply", "-f", str(EXAMPLE), "--kubeconfig", str(tmp_path / "missing"))
    assert result.stdout.splitlines() == [
        "istio/istio-operator.yaml: IstioOperator meshbridge-spire is not applied: it is for "
        "'istioctl install -f istio/istio-operator.yaml' (no API server object behind it)"
    ]


def test_apply_reports_spec_errors_before_contacting_a_cluster(tmp_path: Path) -> None:
    result = run("apply", "-f", "-", "--kubeconfig", str(tmp_path / "missing"), stdin="kind: Bridge\n")
    assert result.returncode == 2
    assert all("kubeconfig" not in line for line in _error_lines(result.stderr))
