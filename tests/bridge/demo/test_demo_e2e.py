"""``meshbridge demo`` end to end: real Workload API, SDS server, Envoy, Ghostunnel, httpbin; every check.

The demo runs as a subprocess exactly as ``make demo`` runs it; its stdout is the evidence. It runs the
federated spec (apps in their own trust domain). Runs with a broken rendering prove the checks can fail:
the mesh SVID without the DNS names its ClusterSPIFFEID should declare (one-trust-domain spec), policies
naming the declared apps only (an undeclared identity of the apps' trust domain then gets 200), the
overlay without the apps' trust domain in Istio's SAN check; inventory trusting the apps' trust domain
moves the refusal to its DENY policy (the demo still passes).
"""

from __future__ import annotations

import copy
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.demo.errors import DemoError
from bridge.demo.report import FAIL, OK, Reporter
from bridge.demo.run import EXAMPLE_DIR, MANIFESTS, DemoOptions, run
from bridge.rendering import Rendering

pytestmark = pytest.mark.slow

APPS = "spiffe://apps.example.org/external"
INVENTORY_REFUSED = "external identities → inventory (no app targets it) refused at the TLS handshake"
INVENTORY_DENY = "external identities → inventory (no app targets it) refused at the AuthorizationPolicy"
UNDECLARED = f"undeclared {APPS}/not-admitted (the apps' trust domain and CA) → httpbin refused"
WORKLOAD_API = "Workload API: each side gets only its own identity"
WRONG_SERVER = (
    "tunnel-client (ghostunnel, wrong-server-id) expecting "
    "spiffe://example.org/ns/default/sa/not-httpbin → refused"
)
MESH_CALLER = "in-mesh caller spiffe://example.org/ns/default/sa/sleep (no meshCallers entry) → httpbin"
EXPECTED_CHECKS = (
    WORKLOAD_API,
    "shielded-client (network shield) → httpbin",
    "tunnel-client (ghostunnel, files) → httpbin",
    "tunnel-client (ghostunnel, workload-api) → httpbin",
    "no client certificate → sidecar refuses",
    UNDECLARED,
    f"foreign CA claiming {APPS}/shielded-client → refused",
    WRONG_SERVER,
    MESH_CALLER,
    INVENTORY_REFUSED,
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
        f"HTTP 200, X-Forwarded-Client-Cert URI={APPS}/shielded-client"
        in ev["shielded-client (network shield) → httpbin"]
    )
    for variant in ("files", "workload-api"):
        assert (
            f"X-Forwarded-Client-Cert URI={APPS}/tunnel-client"
            in ev[f"tunnel-client (ghostunnel, {variant}) → httpbin"]
        )
    assert "control: same probe, real SVID" in ev[f"foreign CA claiming {APPS}/shielded-client → refused"]
    assert "principal not allowed" in ev[WRONG_SERVER]
    assert "+DNS httpbin.default.svc.cluster.local,httpbin.default.svc" in ev[WORKLOAD_API]
    # two federated trust domains: each side gets the other's bundle only where its entry federates
    assert "mesh.sock→spiffe://example.org/ns/default/sa/httpbin" in ev[WORKLOAD_API]
    assert (
        "+bundle apps.example.org; mesh-inventory.sock→spiffe://example.org/ns/default/sa/inventory;"
        in (ev[WORKLOAD_API])
    )
    assert f"app-tunnel-client.sock→{APPS}/tunnel-client +bundle example.org" in ev[WORKLOAD_API]
    assert "HTTP 200, X-Forwarded-Client-Cert URI=spiffe://example.org/ns/default/sa/sleep" in ev[MESH_CALLER]
    # issue 14 §1: an identity the apps' SPIRE issues but the spec never declares: TLS passes (httpbin
    # trusts the apps' CA), the DENY of the apps' trust domain answers 403; a declared app gets 200
    assert "HTTP 403 (RBAC: access denied), Envoy rbac.denied +1 (TLS accepted;" in ev[UNDECLARED]
    assert "DENY apps.example.org/* except apps.example.org/external/shielded-client" in ev[UNDECLARED]
    assert f"control: declared {APPS}/shielded-client → HTTP 200" in ev[UNDECLARED]
    refused = ev[INVENTORY_REFUSED]
    for who in ("shielded-client", "tunnel-client", "not-admitted"):
        assert f"{who}: no HTTP response" in refused, refused
    assert "ssl.fail_verify_error +3, ssl.fail_verify_san +0, rbac.denied +0" in refused
    assert "control: in-mesh spiffe://example.org/ns/default/sa/sleep → HTTP 200" in refused
    assert "checks passed — all checks passed" in proc.stdout
    # step 7: every rendered artifact written and listed with what it is for
    written = sorted(
        str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() and p.name[0] != "."
    )
    assert "scone/shielded-client/session.yaml" in written
    listed = proc.stdout.split("rendered artifacts in", 1)[1]
    for path in written:
        assert f"  {path}  " in listed, path


def _edit_docs(rendering: Rendering, path: str, edit: Callable[[list[dict[str, object]]], None]) -> Rendering:
    docs = dict(rendering.documents)
    changed = copy.deepcopy(rendering.yaml_documents(path))
    edit(changed)
    docs[path] = changed
    return Rendering(docs, rendering.warnings)


def _without_dns_names(rendering: Rendering) -> Rendering:
    """The ClusterSPIFFEID as if rendered without dnsNameTemplates (a URI-only mesh SVID)."""

    def drop(docs: list[dict[str, object]]) -> None:
        for doc in docs:
            doc["spec"].pop("dnsNameTemplates", None)  # type: ignore[attr-defined]

    return _edit_docs(rendering, "spire/cluster-spiffeids.yaml", drop)


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


FEDERATED = EXAMPLE_DIR / "bridge-federated.yaml"


def _inventory_federates(docs: list[dict[str, object]]) -> None:
    """inventory's ClusterSPIFFEID as if it federated with the apps' trust domain (its ROOTCA gets it)."""
    for doc in docs:
        spec = doc["spec"]
        assert isinstance(spec, dict)
        if spec["podSelector"] == {"matchLabels": {"app": "inventory"}}:
            spec["federatesWith"] = ["apps.example.org"]


def _run_federated(
    tmp_path: Path, edit: Callable[[Rendering], Rendering]
) -> tuple[int, dict[str, tuple[str, str]], str]:
    buf = io.StringIO()
    opts = DemoOptions(spec=FEDERATED, manifests=MANIFESTS, out_dir=tmp_path / "out", edit_rendering=edit)
    code = run(opts, Reporter(out=buf))
    return code, check_lines(buf.getvalue()), buf.getvalue()


def test_inventory_trusting_the_apps_still_refuses_every_one_of_them_by_its_deny_policy(
    tmp_path: Path, envoy_bin: Path, ghostunnel_bin: Path
) -> None:
    """The reason is checked, not just the refusal. Once inventory's ROOTCA carries the apps' bundle the
    handshake passes, and its DENY of the apps' whole trust domain answers 403 to every one of them —
    the undeclared identity included (Envoy counts rbac.denied +3): defence in depth, the demo passes."""

    def federates(r: Rendering) -> Rendering:
        return _edit_docs(r, "spire/cluster-spiffeids.yaml", _inventory_federates)

    code, checks, out = _run_federated(tmp_path, federates)
    assert code == 0, out
    assert INVENTORY_REFUSED not in checks
    mark, evidence = checks[INVENTORY_DENY]
    assert mark == OK, out
    for who in ("shielded-client", "tunnel-client", "not-admitted"):
        assert f"{who}: HTTP 403 (RBAC: access denied)" in evidence, evidence
    assert "ssl.fail_verify_error +0, ssl.fail_verify_san +0, rbac.denied +3" in evidence


def _declared_apps_only(docs: list[dict[str, object]]) -> None:
    """The policies before issue 14's fix: no DENY at the target, DENYs naming the declared apps only."""
    docs[:] = [d for d in docs if d["metadata"]["name"] != "httpbin-meshbridge-deny"]  # type: ignore[index]
    for doc in docs:
        doc["spec"]["rules"] = [  # type: ignore[index]
            {
                "from": [
                    {
                        "source": {
                            "principals": [
                                f"apps.example.org/external/{a}" for a in ("shielded-client", "tunnel-client")
                            ]
                        }
                    }
                ]
            }
        ]


def test_policies_naming_the_declared_apps_only_admit_an_undeclared_identity_and_fail_the_demo(
    tmp_path: Path, envoy_bin: Path, ghostunnel_bin: Path
) -> None:
    """The gap issue 14 §1 names, rendered the old way: an undeclared identity of the apps' trust domain
    gets 200 from httpbin (no DENY selects it) and from inventory once it trusts the apps — the new
    checks fail, whatever the rendered policies claim."""

    def old_shape(r: Rendering) -> Rendering:
        r = _edit_docs(r, "spire/cluster-spiffeids.yaml", _inventory_federates)
        return _edit_docs(r, "istio/authorization-policies.yaml", _declared_apps_only)

    code, checks, out = _run_federated(tmp_path, old_shape)
    assert code == 1, out
    mark, evidence = checks[UNDECLARED]
    assert mark == FAIL, out
    assert evidence.startswith("HTTP 200"), evidence
    assert "rbac.denied +0" in evidence, evidence
    mark, evidence = checks[INVENTORY_DENY]
    assert mark == FAIL, out
    assert "shielded-client: HTTP 403 (RBAC: access denied)" in evidence
    assert "tunnel-client: HTTP 403 (RBAC: access denied)" in evidence
    assert "not-admitted: HTTP 200" in evidence
    assert "ssl.fail_verify_error +0, ssl.fail_verify_san +0, rbac.denied +2" in evidence
    assert checks[MESH_CALLER][0] == OK, out  # in-mesh callers unaffected either way


def test_apps_refused_at_httpbin_when_the_overlay_omits_their_trust_domain(
    tmp_path: Path, envoy_bin: Path, ghostunnel_bin: Path
) -> None:
    """Istio's SAN check: without caCertificates[].trustDomains the apps' trust domain is not admitted,
    although httpbin's ROOTCA (--rootca-all-bundles, federatesWith) trusts their CA."""

    def without_ca_trust_domains(docs: list[dict[str, object]]) -> None:
        mesh = docs[0]["spec"]["meshConfig"]  # type: ignore[index]
        mesh.pop("caCertificates")

    code, checks, out = _run_federated(
        tmp_path, lambda r: _edit_docs(r, "istio/istio-operator.yaml", without_ca_trust_domains)
    )
    assert code == 1, out
    for tunnel in ("shielded-client (network shield)", "tunnel-client (ghostunnel, files)"):
        assert checks[f"{tunnel} → httpbin"][0] == FAIL, out
    assert checks[MESH_CALLER][0] == OK, out  # in-mesh callers unaffected
    assert checks[INVENTORY_REFUSED][0] == OK, out
