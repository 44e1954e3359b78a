"""The ``meshbridge`` entry point through a real subprocess: subcommands, exit codes, one ``error:`` line per
problem, no traceback, no debris. What the commands print is tested in-process (``test_cli_inprocess.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.bridge.strategies import EXAMPLE
from tests.support.kube import free_ports

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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["istio", "policy", "--service", "Http_bin", "--allow", "spiffe://x//y"],
            [
                "error: --service: 'Http_bin': must be a DNS-1035 label (Kubernetes Service name): lowercase "
                "letters, digits and '-', starting with a letter and ending with a letter or digit",
                "error: --allow: 'spiffe://x//y': path cannot contain empty segments ('//')",
            ],
        ),
        (
            ["scone", "ghostunnel", "--session", "ns/a b", "--mrenclave", "xyz", "--target", "foo"],
            [
                "error: --session: 'ns/a b': SCONE session names are '/'-separated segments of letters, "
                "digits, '_' and '-'",
                "error: --mrenclave: 'xyz': MRENCLAVE must be 64 hexadecimal digits (SHA-256 of the enclave)",
                "error: --target: 'foo': must be SVC.NAMESPACE:PORT[=SPIFFE_ID]",
            ],
        ),
        (
            ["render", "-f", str(EXAMPLE), "-o", "never-written", "--session-hash", "ns/a"],
            ["error: --session-hash: 'ns/a': must be SESSION=HASH (e.g. ns/app=<64 hex digits>)"],
        ),
    ],
)
def test_bad_flags_exit_2_with_one_line_per_problem(
    tmp_path: Path, argv: list[str], expected: list[str]
) -> None:
    result = run(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert _error_lines(result.stderr) == expected
    assert list(tmp_path.iterdir()) == []


def test_check_problems_exit_2() -> None:
    spec = EXAMPLE.read_text().replace(
        "    labels: {app: httpbin}\n", "    labels: {app: httpbin}\n    svidDnsNames: false\n"
    )
    result = run("check", "-f", "-", stdin=spec)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len([ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]) == 2


def test_render_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    result = run("render", "-f", str(EXAMPLE), "-o", str(tmp_path))
    assert result.returncode == 2
    assert _error_lines(result.stderr)[0].endswith("refusing to replace it: choose another directory")
    assert (tmp_path / "keep.txt").read_text() == "precious"


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


def test_apply_reports_spec_errors_before_contacting_a_cluster(tmp_path: Path) -> None:
    result = run("apply", "-f", "-", "--kubeconfig", str(tmp_path / "missing"), stdin="kind: Bridge\n")
    assert result.returncode == 2
    assert all("kubeconfig" not in line for line in _error_lines(result.stderr))


def test_help_lists_every_subcommand() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in (
        "workload-api",
        "sds",
        "render",
        "check",
        "apply",
        "diff",
        "istio",
        "spire",
        "scone",
        "demo",
    ):
        assert command in done.stdout


def test_unknown_subcommand_is_a_usage_error() -> None:
    done = run("no-such-command")
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
    done = run("workload-api", "serve", "--config", str(config), "--socket", str(tmp_path / "s.sock"))
    assert done.returncode == 2, done.stderr
    lines = _error_lines(done.stderr)
    assert len(lines) >= 2, done.stderr
    assert any("trust_domain" in line and "'Example.org'" in line for line in lines)
    assert any("entries[0].spiffe_id" in line and "empty segments" in line for line in lines)


def test_debug_shows_the_traceback() -> None:
    result = run("--debug", "istio", "policy", "--service", "Http_bin", "--allow", "spiffe://example.org/a")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("bridge.flags.FlagError: --service: 'Http_bin'")
