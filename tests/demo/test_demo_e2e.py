"""``meshbridge demo`` end to end: real Workload API, SDS server, Envoy, Ghostunnel, httpbin; every check.

The demo runs as a subprocess exactly as ``make demo`` runs it; its stdout is the evidence. A second run
with a broken rendering (the mesh SVID without the DNS names its ClusterSPIFFEID should declare) proves
the checks can fail: the clients that authenticate httpbin by name are refused and the demo exits 1.
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.demo.errors import DemoError
from bridge.demo.report import FAIL, OK, Reporter
from bridge.demo.run import EXAMPLE_DIR, DemoOptions, run
from bridge.rendering import Rendering

pytestmark = pytest.mark.slow

EXPECTED_CHECKS = (
    "Workload API: each side gets only its own identity",
    "shielded-client (network shield) → httpbin",
    "tunnel-client (ghostunnel, files) → httpbin",
    "tunnel-client (ghostunnel, workload-api) → httpbin",
    "no client certificate → sidecar refuses",
    "non-admitted spiffe://example.org/external/not-admitted (same CA) → refused",
    "foreign CA claiming spiffe://example.org/external/shielded-client → refused",
    "tunnel-client (ghostunnel, wrong-server-id) expecting "
    "spiffe://example.org/ns/default/sa/not-httpbin → refused",
    "rotation: sidecar serves the new SVID over SDS",
    "rotation: tunnel-client (ghostunnel, files) presents a new client certificate",
    "rotation: tunnel-client (ghostunnel, workload-api) presents a new client certificate",
    "rotation: requests kept succeeding",
    "rotation: no process restarted",
)


def check_lines(stdout: str) -> dict[str, tuple[str, str]]:
    """check name → (mark, evidence) from the demo's ``  ✓ name — evidence`` lines."""
    out: dict[str, tuple[str, str]] = {}
    for line in stdout.splitlines():
        stripped = line.strip()
        if stripped[:1] in (OK, FAIL):
            name, _, evidence = stripped[2:].partition(" — ")
            out[name] = (stripped[0], evidence)
    return out


def test_demo_passes_every_check(tmp_path: Path, envoy_bin: Path, ghostunnel_bin: Path) -> None:
    out_dir = tmp_path / "demo-out"
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "demo", "-o", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = check_lines(proc.stdout)
    assert set(checks) == set(EXPECTED_CHECKS), proc.stdout
    assert all(mark == OK for mark, _ in checks.values()), proc.stdout
    ev = {name: evidence for name, (_, evidence) in checks.items()}
    assert (
        "HTTP 200, X-Forwarded-Client-Cert URI=spiffe://example.org/external/shielded-client"
        in ev["shielded-client (network shield) → httpbin"]
    )
    for variant in ("files", "workload-api"):
        assert (
            "X-Forwarded-Client-Cert URI=spiffe://example.org/external/tunnel-client"
            in ev[f"tunnel-client (ghostunnel, {variant}) → httpbin"]
        )
    assert ev["non-admitted spiffe://example.org/external/not-admitted (same CA) → refused"].startswith(
        "HTTP 403"
    )
    assert (
        "control: same probe, real SVID"
        in ev["foreign CA claiming spiffe://example.org/external/shielded-client → refused"]
    )
    assert "principal not allowed" in ev[EXPECTED_CHECKS[7]]
    assert "+DNS httpbin.default.svc.cluster.local,httpbin.default.svc" in ev[EXPECTED_CHECKS[0]]
    assert "checks passed — all checks passed" in proc.stdout
    # step 7: every rendered artifact written and listed with what it is for
    written = sorted(
        str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() and p.name[0] != "."
    )
    assert "scone/shielded-client/session.yaml" in written
    listed = proc.stdout.split("rendered artifacts in", 1)[1]
    for path in written:
        assert f"  {path}  " in listed, path


def _without_dns_names(rendering: Rendering) -> Rendering:
    """The ClusterSPIFFEID as if rendered without dnsNameTemplates (a URI-only mesh SVID)."""
    docs = dict(rendering.documents)
    broken = copy.deepcopy(rendering.yaml_documents("spire/cluster-spiffeids.yaml"))
    for doc in broken:
        spec = doc["spec"]
        assert isinstance(spec, dict)
        spec.pop("dnsNameTemplates", None)
    docs["spire/cluster-spiffeids.yaml"] = broken
    return Rendering(docs, rendering.warnings)


def test_demo_fails_when_the_mesh_svid_lacks_the_dns_name(
    tmp_path: Path, envoy_bin: Path, ghostunnel_bin: Path
) -> None:
    buf = io.StringIO()
    opts = DemoOptions(
        spec=EXAMPLE_DIR / "bridge.yaml",
        manifests=EXAMPLE_DIR / "httpbin.yaml",
        out_dir=tmp_path / "out",
        edit_rendering=_without_dns_names,
    )
    assert run(opts, Reporter(out=buf)) == 1
    checks = check_lines(buf.getvalue())
    # name-checking clients refuse the URI-only SVID; the Workload-API Ghostunnel (ID check only) gets in
    assert checks["shielded-client (network shield) → httpbin"][0] == FAIL, buf.getvalue()
    assert checks["tunnel-client (ghostunnel, files) → httpbin"][0] == FAIL, buf.getvalue()
    assert checks["tunnel-client (ghostunnel, workload-api) → httpbin"][0] == OK, buf.getvalue()
    assert "check(s) FAILED" in buf.getvalue()
    evidence = checks["tunnel-client (ghostunnel, files) → httpbin"][1]
    assert "not valid for" in evidence, evidence  # Ghostunnel's own words point at the missing DNS SAN
    assert "fail_verify_san" in checks["shielded-client (network shield) → httpbin"][1]


def _shield_session_without_server_auth(rendering: Rendering) -> Rendering:
    docs = dict(rendering.documents)
    session = copy.deepcopy(docs["scone/shielded-client/session.yaml"])
    assert isinstance(session, dict)
    env = session["services"][0]["environment"]
    del env["SCONE_NETWORK_SHIELD_CLIENT_1_SERVER_AUTH"]
    docs["scone/shielded-client/session.yaml"] = session
    return Rendering(docs, rendering.warnings)


def test_a_wrong_session_fails_the_demo_and_stops_everything(
    tmp_path: Path, envoy_bin: Path, ghostunnel_bin: Path
) -> None:
    opts = DemoOptions(
        spec=EXAMPLE_DIR / "bridge.yaml",
        manifests=EXAMPLE_DIR / "httpbin.yaml",
        out_dir=tmp_path / "out",
        edit_rendering=_shield_session_without_server_auth,
    )
    with pytest.raises(DemoError, match="SCONE_NETWORK_SHIELD_CLIENT_1_SERVER_AUTH: missing"):
        run(opts, Reporter(out=io.StringIO()))
    # the autouse guard (tests/conftest.py) fails this test if any started process survived
