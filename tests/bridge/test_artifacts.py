"""What ``render`` produces for the httpbin example: golden files, real schemas, the real Ghostunnel.

Golden files live in ``tests/bridge/golden/httpbin/`` and, for ``bridge-federated.yaml``,
``tests/bridge/golden/httpbin-federated/`` (the same layout ``meshbridge render -o`` writes).
They are reviewed by reading, not regenerated blindly: after an intended change run

    MESHBRIDGE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/bridge/test_artifacts.py

and read ``git diff tests/bridge/golden`` before committing.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
import yaml

import scone
from bridge import render as layout
from bridge.render import render
from bridge.rendering import Rendering
from bridge.spec import load_spec
from bridge.writer import serialize
from tests.bridge.strategies import EXAMPLE
from tests.support.pki import key_pem, pem, self_signed_ca
from tests.support.schemas import problems, scone_problems

GOLDEN = Path(__file__).parent / "golden" / "httpbin"
UPDATE = os.environ.get("MESHBRIDGE_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def rendering() -> Rendering:
    return render(load_spec(EXAMPLE))


@pytest.mark.parametrize(
    ("golden", "spec"),
    [(GOLDEN, EXAMPLE), (GOLDEN.with_name("httpbin-federated"), EXAMPLE.with_name("bridge-federated.yaml"))],
    ids=["httpbin", "httpbin-federated"],
)
def test_golden_files(golden: Path, spec: Path) -> None:
    texts = {path: serialize(path, doc) for path, doc in render(load_spec(spec)).items()}
    if UPDATE:
        for old in golden.rglob("*"):
            if old.is_file() and str(old.relative_to(golden)) not in texts:
                old.unlink()
        for path, text in texts.items():
            (golden / path).parent.mkdir(parents=True, exist_ok=True)
            (golden / path).write_text(text)
        pytest.skip("golden files regenerated: review `git diff tests/bridge/golden` before committing")
    on_disk = sorted(str(p.relative_to(golden)) for p in golden.rglob("*") if p.is_file())
    assert on_disk == sorted(texts)
    for path, text in texts.items():
        assert (golden / path).read_text() == text, f"{path} differs from its golden file"


def test_layout(rendering: Rendering) -> None:
    assert next(iter(rendering)) == "README.md"
    assert set(rendering) == {
        "README.md",
        "istio/istio-operator.yaml",
        "istio/peer-authentication.yaml",
        "istio/authorization-policies.yaml",
        "spire/cluster-spiffeids.yaml",
        "spire/register-entries.sh",
        "spire/agent-svidstore.hcl",
        "spire/svidstore-templates/svid-session.template",
        "spire/svidstore-templates/bundle-session.template",
        "spire/svidstore-templates/federated-bundles-session.template",
        "scone/shielded-client/session.yaml",
        "scone/tunnel-client/session.yaml",
        "scone/tunnel-client/ghostunnel-command.txt",
    }
    assert rendering.warnings == ()
    with pytest.raises(TypeError):
        rendering.documents["x"] = "y"  # type: ignore[index]


def test_kubernetes_documents_validate_strictly(rendering: Rendering) -> None:
    paths = [
        layout.ISTIO_OPERATOR,
        layout.PEER_AUTHENTICATION,
        layout.AUTHORIZATION_POLICIES,
        layout.CLUSTER_SPIFFEIDS,
    ]
    kinds = []
    for path in paths:
        # validate what is written, read back as the consumer reads it
        for doc in yaml.safe_load_all(serialize(path, rendering[path])):
            assert problems(doc) == [], path
            kinds.append(doc["kind"])
    # two ClusterSPIFFEIDs: httpbin's and the ingress gateway's (the overlay puts the gateway on SPIRE)
    assert kinds == [
        "IstioOperator",
        "PeerAuthentication",
        "AuthorizationPolicy",
        "ClusterSPIFFEID",
        "ClusterSPIFFEID",
    ]


def test_sessions_validate_against_the_scone_schema(rendering: Rendering) -> None:
    for app in ("shielded-client", "tunnel-client"):
        path = layout.session_path(app)
        session = yaml.safe_load(serialize(path, rendering[path]))
        assert scone_problems(session) == [], path


@pytest.mark.parametrize("plugin", ["sconecas_sessionmanager", "scone_cas_secretsmanager"])
def test_svidstore_templates_filled_are_valid_sessions(plugin: str) -> None:
    bridge = load_spec(EXAMPLE)
    rendering = render(
        dataclasses.replace(bridge, spire=dataclasses.replace(bridge.spire, svidstore_plugin=plugin))
    )
    ca, ca_key = self_signed_ca("test")
    cert, key = pem(ca).decode(), key_pem(ca_key).decode()
    values = {
        "svid": cert,
        "svid-key": key,
        "intermediate-svid-cas": cert,
        "session-name-selector": "meshbridge/shielded-client",
        "session-hash-selector": "a" * 64,
        "predecessor": "~",
        "trust-bundle": cert,
        "trust-bundle-ca": cert,
        "federated-bundles": cert,
    }
    names = []
    for path in layout.SVIDSTORE_TEMPLATES.values():
        template = rendering.text(path)
        filled = scone.fill_template(template, {k: values[k] for k in scone.placeholder_names(template)})
        session = yaml.safe_load(filled)
        assert scone_problems(session) == [], path
        names.append(session["name"])
    # the app sessions import from exactly these session names
    shield = rendering.yaml_documents(layout.session_path("shielded-client"))[0]
    imports = {s["name"]: s["import"]["session"] for s in shield["secrets"]}  # type: ignore[index, union-attr]
    assert imports == {"svid": names[0], "spire-ca": names[1]}


def test_entries_script_is_executable_bash(rendering: Rendering, tmp_path: Path) -> None:
    script = tmp_path / "register-entries.sh"
    script.write_text(rendering.text(layout.ENTRIES_SCRIPT))
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    # without session hashes it refuses to create anything
    fake = tmp_path / "spire-server"
    fake.write_text('#!/bin/sh\n[ "$2" = show ] || echo called >> "$0.log"\n')
    fake.chmod(0o755)
    env = {**os.environ, "SPIRE_SERVER": str(fake)}
    refused = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, check=False, timeout=30
    )
    assert refused.returncode == 2
    assert "no session hash" in refused.stderr
    assert not Path(f"{fake}.log").exists()
    ok = subprocess.run(
        [
            "bash",
            str(script),
            f"meshbridge/shielded-client={'1' * 64}",
            f"meshbridge/tunnel-client={'2' * 64}",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert Path(f"{fake}.log").read_text().count("called") == 2


def test_ghostunnel_command_is_accepted_by_the_real_binary(
    rendering: Rendering, ghostunnel_bin: Path
) -> None:
    (line,) = rendering.text(layout.ghostunnel_command_path("tunnel-client")).splitlines()
    argv = line.split()
    assert argv[0] == "/usr/bin/ghostunnel"
    assert argv[1] == "client"
    result = subprocess.run(
        [str(ghostunnel_bin), *argv[1:], "--help"], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "--verify-uri=spiffe://example.org/ns/default/sa/httpbin" in argv
    assert "--target=httpbin.default.svc.cluster.local:8000" in argv
    # the CAS session runs the same command
    session = rendering.yaml_documents(layout.session_path("tunnel-client"))[0]
    assert session["services"][0]["command"] == line  # type: ignore[index]


def test_shielded_example_app_speaks_plain_http(rendering: Rendering) -> None:
    """The network shield adds TLS to the app's connection: an app URL with https:// to a shielded
    destination would run the app's own TLS inside the shield's (the sidecar would hand httpbin a TLS
    ClientHello). The example's shielded client must dial its targets with http://."""
    bridge = load_spec(EXAMPLE)
    shielded = [a for a in bridge.apps if a.mode == "network-shield"]
    assert shielded
    for app in shielded:
        (service,) = rendering.yaml_documents(layout.session_path(app.name))[0]["services"]  # type: ignore[misc]
        command = service["command"]
        for t in app.targets:
            host = f"{t.service.fqdn}:{t.service.port}"
            assert f"https://{host}" not in command, command
        assert any(f"http://{t.service.fqdn}:{t.service.port}" in command for t in app.targets), command
