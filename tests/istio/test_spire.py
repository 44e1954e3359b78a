"""SPIRE registration: ClusterSPIFFEIDs (strict schema), entry JSON, and the entries script run by bash."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from istio import (
    ClusterSpiffeIdParams,
    EntriesParams,
    ExternalAppEntry,
    Gateway,
    IstioError,
    MeshService,
    Selector,
    labels,
    mesh_spiffe_id,
    render_cluster_spiffe_id,
    render_entries_json,
    render_entries_script,
    render_gateway_cluster_spiffe_id,
    service_dns_names,
)
from tests.support.schemas import problems

HTTPBIN = MeshService("httpbin", "default", "httpbin", 8000, labels({"app": "httpbin"}))
PARENT = "spiffe://example.org/spire/agent/x509pop/host-1"
HASH_A = "3" * 64
HASH_B = "03aa3f5e2779b625a455651b54866447f995a2970d164581b4073044435359ed"
SHIELD = ExternalAppEntry("spiffe://example.org/external/shield", PARENT, cas_session="apps/shield")
TUNNEL = ExternalAppEntry(
    "spiffe://example.org/external/tunnel",
    PARENT,
    cas_session="apps/tunnel",
    dns_names=("tunnel.example",),
    x509_svid_ttl=3600,
    federates_with=("other.org",),
    hint="tunnel",
)
WL_API = ExternalAppEntry(
    "spiffe://example.org/external/gt",
    PARENT,
    selectors=(Selector("unix", "uid:1000"),),
)
BASH = shutil.which("bash")
# Istio's SPIRE guide: the ID Istio expects, as a spire-controller-manager template
ISTIO_ID_TEMPLATE = (
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
)


def test_mesh_spiffe_id_and_dns_names() -> None:
    assert mesh_spiffe_id("example.org", HTTPBIN) == "spiffe://example.org/ns/default/sa/httpbin"
    assert service_dns_names(HTTPBIN) == ("httpbin.default.svc.cluster.local", "httpbin.default.svc")
    assert service_dns_names(HTTPBIN, "corp.local")[0] == "httpbin.default.svc.corp.local"


def test_cluster_spiffe_id_uses_the_istio_template_and_pins_the_namespace() -> None:
    doc = render_cluster_spiffe_id(ClusterSpiffeIdParams(HTTPBIN))
    assert problems(doc) == []
    assert doc == {
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": "meshbridge-default-httpbin"},
        "spec": {
            "spiffeIDTemplate": ISTIO_ID_TEMPLATE,
            "podSelector": {"matchLabels": {"app": "httpbin"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}},
        },
    }


def test_cluster_spiffe_id_carries_dns_names_when_authenticated_by_name() -> None:
    doc = render_cluster_spiffe_id(
        ClusterSpiffeIdParams(
            HTTPBIN,
            dns_names=True,
            class_name="spire-system-spire",
            federates_with=("b.org", "a.org", "b.org"),
            ttl="1h",
        )
    )
    assert problems(doc) == []
    spec = doc["spec"]
    assert spec["dnsNameTemplates"] == ["httpbin.default.svc.cluster.local", "httpbin.default.svc"]  # type: ignore[index]
    assert spec["className"] == "spire-system-spire"  # type: ignore[index]
    assert spec["federatesWith"] == ["a.org", "b.org"]  # type: ignore[index]
    assert spec["ttl"] == "1h"  # type: ignore[index]


def test_cluster_spiffe_id_refuses_an_empty_pod_selector() -> None:
    with pytest.raises(IstioError, match=r"service.pod_labels: \(\): at least one label"):
        render_cluster_spiffe_id(ClusterSpiffeIdParams(replace(HTTPBIN, pod_labels=())))


def test_entries_json_current_plugin() -> None:
    params = EntriesParams((SHIELD, TUNNEL, WL_API))
    doc = render_entries_json(params, {"apps/shield": HASH_A, "apps/tunnel": HASH_B})
    assert doc == {
        "entries": [
            {
                "spiffe_id": "spiffe://example.org/external/shield",
                "parent_id": PARENT,
                "selectors": [
                    {"type": "sconecas_sessionmanager", "value": "session_name:apps/shield"},
                    {"type": "sconecas_sessionmanager", "value": f"session_hash:{HASH_A}"},
                ],
                "store_svid": True,
            },
            {
                "spiffe_id": "spiffe://example.org/external/tunnel",
                "parent_id": PARENT,
                "selectors": [
                    {"type": "sconecas_sessionmanager", "value": "session_name:apps/tunnel"},
                    {"type": "sconecas_sessionmanager", "value": f"session_hash:{HASH_B}"},
                ],
                "x509_svid_ttl": 3600,
                "dns_names": ["tunnel.example"],
                "federates_with": ["spiffe://other.org"],
                "hint": "tunnel",
                "store_svid": True,
            },
            {
                "spiffe_id": "spiffe://example.org/external/gt",
                "parent_id": PARENT,
                "selectors": [{"type": "unix", "value": "uid:1000"}],
            },
        ]
    }
    json.dumps(doc)  # plain JSON data


def test_entries_json_tutorial_plugin() -> None:
    params = EntriesParams((SHIELD,), plugin="scone_cas_secretsmanager")
    (entry,) = render_entries_json(params, {"apps/shield": HASH_A})["entries"]  # type: ignore[misc]
    assert entry["selectors"] == [
        {"type": "svidstore", "value": "type:scone_cas_secretsmanager"},
        {"type": "cas_session_name", "value": "apps/shield"},
        {"type": "cas_session_hash", "value": HASH_A},
    ]
    assert "store_svid" not in entry


def test_entries_json_needs_every_session_hash() -> None:
    params = EntriesParams((SHIELD, TUNNEL))
    with pytest.raises(IstioError) as excinfo:
        render_entries_json(params, {"apps/shield": "ABC"})
    assert str(excinfo.value).splitlines() == [
        "session_hashes['apps/shield']: 'ABC': 64 lowercase hex digits",
        "entries[1].cas_session: 'apps/tunnel': no session hash given; post the session with "
        "'scone session create' first and pass the hash it prints",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            replace(SHIELD, spiffe_id="spiffe://Example.org/x"),
            "entries[0].spiffe_id: 'spiffe://Example.org/x'",
        ),
        (
            replace(SHIELD, cas_session="apps shield"),
            "entries[0].cas_session: 'apps shield': a CAS session name",
        ),
        (replace(WL_API, selectors=()), "entries[0].selectors: (): a Workload API entry needs at least one"),
        (replace(WL_API, selectors=(Selector("unix", "uid 1"),)), "entries[0].selectors[0]: 'unix:uid 1'"),
        (replace(SHIELD, x509_svid_ttl=0), "entries[0].x509_svid_ttl: 0: a positive number"),
    ],
)
def test_entry_errors(entry: ExternalAppEntry, message: str) -> None:
    with pytest.raises(IstioError) as excinfo:
        render_entries_json(EntriesParams((entry,)), {"apps/shield": HASH_A})
    assert message in str(excinfo.value)


def test_duplicate_cas_sessions_are_refused() -> None:
    with pytest.raises(
        IstioError, match=r"entries\[1\].cas_session: 'apps/shield': already used by entries\[0\]"
    ):
        render_entries_script(EntriesParams((SHIELD, replace(SHIELD, spiffe_id="spiffe://example.org/y"))))


# --- the entries script, run by bash with a fake spire-server that records its arguments -------------


@pytest.fixture
def fake_server(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A ``spire-server`` on PATH that appends each call's argv (one per line, then '--') to a log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.log"
    fake = bindir / "spire-server"
    fake.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" '--' >> '{log}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "LC_ALL": "C"}
    return log, env


def _calls(log: Path) -> list[list[str]]:
    """The calls that change something (the script looks entries up with ``entry show`` first)."""
    text = log.read_text() if log.exists() else ""
    calls = [chunk.splitlines() for chunk in text.split("--\n")[:-1]]
    return [c for c in calls if c[:2] != ["entry", "show"]]


def _create(spiffe_id: str, selectors: str, flags: str = "", *, socket: tuple[str, ...] = ()) -> list[str]:
    """``spire-server entry create`` as the fake server logs it (selectors and flags space-separated)."""
    head = ["entry", "create", *socket, "-parentID", PARENT, "-spiffeID", spiffe_id]
    return [*head, *(arg for sel in selectors.split() for arg in ("-selector", sel)), *flags.split()]


def _run(
    script: str, tmp_path: Path, env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    assert BASH is not None, "bash is required to run the generated script"
    path = tmp_path / "spire-entries.sh"
    path.write_text(script)
    return subprocess.run(
        [BASH, str(path), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_script_is_valid_bash() -> None:
    assert BASH is not None
    script = render_entries_script(EntriesParams((SHIELD, TUNNEL, WL_API)))
    subprocess.run([BASH, "-n"], input=script, text=True, check=True, timeout=30)
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script


def test_script_refuses_to_run_without_the_hash(
    tmp_path: Path, fake_server: tuple[Path, dict[str, str]]
) -> None:
    log, env = fake_server
    script = render_entries_script(EntriesParams((WL_API, SHIELD, TUNNEL)))
    proc = _run(script, tmp_path, env, f"apps/shield={HASH_A}")
    assert proc.returncode == 2
    assert "error: no session hash for CAS session 'apps/tunnel'" in proc.stderr
    assert "scone session create" in proc.stderr
    assert _calls(log) == []  # nothing created, not even the entries that needed no hash


def test_script_help_prints_the_usage_header_only(
    tmp_path: Path, fake_server: tuple[Path, dict[str, str]]
) -> None:
    log, env = fake_server
    proc = _run(render_entries_script(EntriesParams((SHIELD, TUNNEL))), tmp_path, env, "--help")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == "SPIRE registration entries for the external apps, generated by meshbridge."
    assert "Usage: spire-entries.sh SESSION=HASH | SESSION=@FILE | SESSION=- ..." in lines
    assert not any(line.startswith(("#", "set ", "SPIRE_SERVER=")) for line in lines)
    assert _calls(log) == []


@pytest.mark.parametrize(
    ("arg", "stdin", "message"),
    [
        ("apps/shield=deadbeef", "", "apps/shield: 'deadbeef': a session hash is 64 lowercase hex digits"),
        ("apps/shield=-", "error\n", "apps/shield: '': a session hash is 64 lowercase hex digits"),
        ("apps/shield", "", "argument 'apps/shield': expected SESSION=HASH"),
    ],
)
def test_script_refuses_a_malformed_hash(
    arg: str, stdin: str, message: str, tmp_path: Path, fake_server: tuple[Path, dict[str, str]]
) -> None:
    log, env = fake_server
    proc = _run(render_entries_script(EntriesParams((SHIELD,))), tmp_path, env, arg, stdin=stdin)
    assert proc.returncode == 2
    assert f"error: {message}" in proc.stderr
    assert _calls(log) == []


def test_script_creates_entries_with_the_given_hashes(
    tmp_path: Path, fake_server: tuple[Path, dict[str, str]]
) -> None:
    log, env = fake_server
    script = render_entries_script(EntriesParams((SHIELD, TUNNEL, WL_API)))
    output = tmp_path / "create.out"
    # what `scone session create` prints: the hash of the posted session
    output.write_text(f"Created Session[name=apps/tunnel]\n{HASH_B}\n")
    proc = _run(script, tmp_path, env, f"apps/shield={HASH_A}", f"apps/tunnel=@{output}")
    assert proc.returncode == 0, proc.stderr
    assert _calls(log) == [
        _create(
            "spiffe://example.org/external/shield",
            f"sconecas_sessionmanager:session_name:apps/shield sconecas_sessionmanager:session_hash:{HASH_A}",
            "-storeSVID=true",
        ),
        _create(
            "spiffe://example.org/external/tunnel",
            f"sconecas_sessionmanager:session_name:apps/tunnel sconecas_sessionmanager:session_hash:{HASH_B}",
            "-dns tunnel.example -federatesWith spiffe://other.org -x509SVIDTTL 3600 -hint tunnel "
            "-storeSVID=true",
        ),
        _create("spiffe://example.org/external/gt", "unix:uid:1000"),
    ]


def test_script_reads_the_hash_from_scone_output_on_stdin(
    tmp_path: Path, fake_server: tuple[Path, dict[str, str]]
) -> None:
    log, env = fake_server
    params = EntriesParams(
        (SHIELD,), plugin="scone_cas_secretsmanager", server_socket_path="/tmp/spire server.sock"
    )
    proc = _run(render_entries_script(params), tmp_path, env, "apps/shield=-", stdin=f"hash: {HASH_B}\n")
    assert proc.returncode == 0, proc.stderr
    assert _calls(log) == [
        _create(
            "spiffe://example.org/external/shield",
            f"svidstore:type:scone_cas_secretsmanager cas_session_name:apps/shield cas_session_hash:{HASH_B}",
            socket=("-socketPath", "/tmp/spire server.sock"),
        ),
    ]


def test_script_refuses_unsafe_server_command() -> None:
    with pytest.raises(IstioError, match=r"spire_server: 'spire-server; rm': a command name"):
        render_entries_script(EntriesParams((SHIELD,), spire_server="spire-server; rm"))


def test_gateway_cluster_spiffe_id() -> None:
    doc = render_gateway_cluster_spiffe_id(Gateway())
    assert problems(doc) == []
    assert doc["metadata"] == {"name": "meshbridge-gateway-istio-system-istio-ingressgateway"}
    assert doc["spec"] == {
        "spiffeIDTemplate": ISTIO_ID_TEMPLATE,
        "podSelector": {"matchLabels": {"istio": "ingressgateway"}},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}},
    }
    egress = render_gateway_cluster_spiffe_id(
        Gateway("istio-egressgateway", (("istio", "egressgateway"),), "egress-ns", "egress"),
        class_name="spire",
    )
    assert problems(egress) == []
    assert egress["spec"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "egress-ns"}  # type: ignore[index]
    assert egress["spec"]["className"] == "spire"  # type: ignore[index]
    with pytest.raises(IstioError, match=r"gateway.pod_labels: \(\): at least one label"):
        render_gateway_cluster_spiffe_id(Gateway(labels=()))
