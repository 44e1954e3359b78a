"""The bridge commands in-process: ``bridge.commands.cmd_*`` called with their :mod:`bridge.params` objects,
output read with ``capsys``; and the one edge, ``bridge.cli``, checked to turn flags into those objects.

Exit codes, ``error:`` lines and the absence of tracebacks are ``bridge.cli.main``'s, checked through a real
subprocess in ``test_cli.py``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from bridge import commands, params
from bridge.cli import build_parser
from bridge.errors import SpecError
from bridge.flags import FlagError
from bridge.kube import KubeError
from bridge.params import (
    ApplyParams,
    CheckParams,
    IstioOverlayParams,
    IstioPolicyParams,
    RenderParams,
    SconeAppParams,
    SconeGhostunnelParams,
    SconeNetworkShieldParams,
    SpireEntriesParams,
    SpireSvidstoreParams,
)
from tests.bridge.strategies import EXAMPLE
from tests.support.schemas import problems, scone_problems

HEX = "ab" * 32
APP = SconeAppParams(
    session="ns/app", mrenclaves=(HEX,), targets=("httpbin.default:8000",), trust_domain="example.org"
)
SVIDSTORE = SpireSvidstoreParams(cas="https://cas:8081", client_cert="/c", client_key="/k", trust_anchor="/t")


def test_public_names() -> None:
    assert params.__all__ == sorted(params.__all__)
    assert commands.__all__ == sorted(commands.__all__)
    assert {n for n in commands.__all__ if not n.startswith("cmd_")} == set()


# --- the edge: flags -> params -------------------------------------------------------------------------


SCONE = f"--session ns/app --mrenclave {HEX} --target httpbin.default:8000 --trust-domain example.org"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ("check -f -", CheckParams(file="-")),
        (
            "render -f b.yaml -o out/ --session-hash ns/a=h1 --session-hash ns/b=h2",
            RenderParams(file="b.yaml", output="out/", session_hashes={"ns/a": "h1", "ns/b": "h2"}),
        ),
        ("apply -f b.yaml", ApplyParams(file="b.yaml")),
        (
            "apply -f b --dry-run --prune --force-conflicts --context c --request-timeout 3",
            ApplyParams(
                file="b", context="c", request_timeout=3, prune=True, dry_run=True, force_conflicts=True
            ),
        ),
        ("apply -f b --dry-run=none", ApplyParams(file="b")),
        ("diff -f b --kubeconfig k", params.DiffParams(file="b", kubeconfig="k")),
        ("istio overlay --trust-domain td", IstioOverlayParams(trust_domain="td")),
        (
            "istio overlay --trust-domain td --no-ingress-gateway --revision r -o json",
            IstioOverlayParams(trust_domain="td", revision="r", ingress_gateway=False, output="json"),
        ),
        (
            "istio policy --service s --allow a --allow b --label k=v --allow-namespace n "
            "--allow-principal p --no-peer-authentication",
            IstioPolicyParams(
                service="s",
                allow=("a", "b"),
                labels=("k=v",),
                allow_namespaces=("n",),
                allow_principals=("p",),
                peer_authentication=False,
            ),
        ),
        (
            "spire entries --spiffe-id i --parent-id p --selector unix:uid:1 --script",
            SpireEntriesParams(spiffe_id="i", parent_id="p", selectors=("unix:uid:1",), script=True),
        ),
        (
            "spire svidstore --cas https://cas:8081 --client-cert /c --client-key /k --trust-anchor /t",
            SVIDSTORE,
        ),
        (
            f"scone network-shield {SCONE} --service a --command c --no-server-auth",
            SconeNetworkShieldParams(app=APP, service="a", command="c", server_auth=False),
        ),
        (
            f"scone ghostunnel {SCONE} --listen-port 9000 --status-port 7000 --command-line",
            SconeGhostunnelParams(app=APP, listen_ports=(9000,), status_port=7000, command_line=True),
        ),
    ],
)
def test_flags_become_params(argv: str, expected: object) -> None:
    """Every flag lands in its field, and a flag left out means the dataclass default."""
    args = build_parser().parse_args(argv.split())
    assert args.func.parse(args) == expected


def test_bad_session_hash_flag_is_refused_at_the_edge() -> None:
    args = build_parser().parse_args(
        ["render", "-f", "b", "-o", "o", "--session-hash", "ns/a", "--session-hash", "=x"]
    )
    with pytest.raises(SpecError) as caught:
        args.func.parse(args)
    assert caught.value.problems == [
        "--session-hash: 'ns/a': must be SESSION=HASH (e.g. ns/app=<64 hex digits>)",
        "--session-hash: '=x': must be SESSION=HASH (e.g. ns/app=<64 hex digits>)",
    ]


# --- render, check, apply ------------------------------------------------------------------------------


def test_render_writes_the_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert commands.cmd_render(RenderParams(file=EXAMPLE, output=out)) == 0
    assert capsys.readouterr() == (f"{out}: wrote 13 files; next: read {out}/README.md\n", "")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert {"README.md", "spire/register-entries.sh", ".meshbridge-render"} <= set(files)
    assert "spire/entries.json" not in files  # only with session hashes
    assert os.stat(out / "spire/register-entries.sh").st_mode & 0o777 == 0o755
    assert os.stat(out / "istio/istio-operator.yaml").st_mode & 0o777 == 0o644
    (out / "stale.txt").write_text("old")
    assert commands.cmd_render(RenderParams(file=str(EXAMPLE), output=f"{out}/")) == 0
    assert capsys.readouterr().out.startswith(f"{out}/: wrote ")  # the directory as the user spelled it
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_render_from_stdin_with_session_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(EXAMPLE.read_text()))
    hashes = {"meshbridge/shielded-client": HEX, "meshbridge/tunnel-client": HEX}
    assert commands.cmd_render(RenderParams(file="-", output=tmp_path / "out", session_hashes=hashes)) == 0
    entries = json.loads((tmp_path / "out/spire/entries.json").read_text())
    assert [e["spiffe_id"] for e in entries["entries"]] == [
        "spiffe://example.org/external/shielded-client",
        "spiffe://example.org/external/tunnel-client",
    ]
    assert capsys.readouterr().err == ""


def test_invalid_spec_raises_every_problem_and_writes_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "bridge.yaml"
    spec.write_text("apiVersion: meshbridge.io/v1alpha1\nkind: Bridge\n")
    with pytest.raises(SpecError) as caught:
        commands.cmd_render(RenderParams(file=spec, output=tmp_path / "out"))
    assert caught.value.problems == [
        "trustDomain: required (e.g. 'example.org')",
        "meshServices: required (a non-empty list)",
        "externalApps: required (a non-empty list)",
        "spire: required (SVIDStore plugin and CAS connection)",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["bridge.yaml"]


def _example_with(tmp_path: Path, line: str, added: str) -> Path:
    """The example spec, with ``added`` after its ``line``, as a file."""
    spec = tmp_path / "bridge.yaml"
    spec.write_text(EXAMPLE.read_text().replace(line, line + added))
    return spec


def test_check_ok_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.cmd_check(CheckParams(file=EXAMPLE)) == 0
    assert capsys.readouterr().out == "ok: 1 mesh service(s), 2 external app(s), 13 documents consistent\n"
    insecure = _example_with(tmp_path, "    targets: [httpbin]\n", "    serverAuth: false\n")
    assert commands.cmd_check(CheckParams(file=insecure)) == 0
    assert "warning: externalApps[0] (shielded-client): server_auth: 'false': " in capsys.readouterr().err


def test_check_problems_are_error_lines_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _example_with(tmp_path, "    labels: {app: httpbin}\n", "    svidDnsNames: false\n")
    assert commands.cmd_check(CheckParams(file=spec)) == 2
    out, err = capsys.readouterr()
    assert out == ""
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert any(
        w.startswith("warning: meshServices[0] (default/httpbin): svidDnsNames: false, but ")
        for w in warnings
    )
    assert [ln for ln in err.splitlines() if ln not in warnings] == [
        f"error: externalApps[{i}] ({app}): 'httpbin.default.svc.cluster.local': authenticated by DNS name "
        "but no ClusterSPIFFEID of default/httpbin puts it in the SVID (dnsNameTemplates): the handshake "
        "would fail"
        for i, app in enumerate(("shielded-client", "tunnel-client"))
    ]
    # render still writes (the operator opted out explicitly) but says so
    assert commands.cmd_render(RenderParams(file=spec, output=tmp_path / "out")) == 0
    assert "warning: meshServices[0] (default/httpbin): svidDnsNames: false" in capsys.readouterr().err


def test_apply_names_the_istio_operator_then_needs_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(KubeError, match=f"^kubeconfig {missing}: no usable cluster: "):
        commands.cmd_apply(ApplyParams(file=EXAMPLE, kubeconfig=str(missing)))
    assert capsys.readouterr().out.splitlines() == [
        "istio/istio-operator.yaml: IstioOperator meshbridge-spire is not applied: it is for "
        "'istioctl install -f istio/istio-operator.yaml' (no API server object behind it)"
    ]


# --- the single-purpose generators ---------------------------------------------------------------------


def test_istio_overlay(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.cmd_istio_overlay(IstioOverlayParams(trust_domain="example.org")) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert problems(doc) == []
    assert doc["spec"]["meshConfig"]["trustDomain"] == "example.org"
    assert "ingressGateways" in doc["spec"]["components"]
    assert (
        commands.cmd_istio_overlay(
            IstioOverlayParams(trust_domain="example.org", ingress_gateway=False, output="json")
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert "ingressGateways" not in doc["spec"].get("components", {})


def test_istio_policy(capsys: pytest.CaptureFixture[str]) -> None:
    policy = IstioPolicyParams(service="httpbin", allow=("spiffe://example.org/external/a",), output="json")
    assert commands.cmd_istio_policy(policy) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "List"
    assert [item["kind"] for item in listed["items"]] == ["PeerAuthentication", "AuthorizationPolicy"]
    for item in listed["items"]:
        assert problems(item) == []
    assert listed["items"][1]["spec"]["rules"][0]["from"][0]["source"]["principals"] == [
        "example.org/external/a"
    ]
    assert listed["items"][1]["spec"]["selector"]["matchLabels"] == {"app": "httpbin"}
    alone = IstioPolicyParams(service="httpbin", allow=("spiffe://example.org/a",), peer_authentication=False)
    assert commands.cmd_istio_policy(alone) == 0
    assert yaml.safe_load(capsys.readouterr().out)["kind"] == "AuthorizationPolicy"  # one document: no List


def test_spire_entries(capsys: pytest.CaptureFixture[str]) -> None:
    base = SpireEntriesParams(
        spiffe_id="spiffe://example.org/external/a",
        parent_id="spiffe://example.org/agent",
        cas_session="ns/a",
    )
    with pytest.raises(FlagError, match=r"^--session-hash: required for JSON/YAML entries"):
        commands.cmd_spire_entries(base)
    assert commands.cmd_spire_entries(replace(base, session_hash=HEX)) == 0
    entry = json.loads(capsys.readouterr().out)["entries"][0]
    assert {"type": "sconecas_sessionmanager", "value": f"session_hash:{HEX}"} in entry["selectors"]
    assert commands.cmd_spire_entries(replace(base, script=True)) == 0
    assert capsys.readouterr().out.startswith("#!/usr/bin/env bash")


def test_spire_svidstore(capsys: pytest.CaptureFixture[str]) -> None:
    assert commands.cmd_spire_svidstore(SVIDSTORE) == 0
    assert capsys.readouterr().out.startswith('SVIDStore "sconecas_sessionmanager" {')
    template = replace(SVIDSTORE, template="bundle", bundle_session="ns/bundle")
    assert commands.cmd_spire_svidstore(template) == 0
    assert capsys.readouterr().out.startswith("name: ns/bundle\n")


def test_scone_network_shield(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        commands.cmd_scone_network_shield(SconeNetworkShieldParams(app=APP, service="app", command="x")) == 0
    )
    out, err = capsys.readouterr()
    assert err == ""
    session = yaml.safe_load(out)
    assert scone_problems(session) == []
    env = session["services"][0]["environment"]
    assert env["SCONE_NETWORK_SHIELD_CLIENT_1_DESTINATION"] == "TCP:httpbin.default.svc.cluster.local:8000"
    insecure = SconeNetworkShieldParams(app=APP, service="app", command="x", server_auth=False)
    assert commands.cmd_scone_network_shield(insecure) == 0
    assert capsys.readouterr().err.startswith("warning: server_auth: 'false'")


def test_scone_ghostunnel(ghostunnel_bin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        commands.cmd_scone_ghostunnel(SconeGhostunnelParams(app=APP, listen_ports=(9000,), command_line=True))
        == 0
    )
    argv = capsys.readouterr().out.split()
    assert "--verify-uri=spiffe://example.org/ns/default/sa/httpbin" in argv
    assert "--listen=127.0.0.1:9000" in argv
    helped = subprocess.run(
        [str(ghostunnel_bin), *argv[1:], "--help"], capture_output=True, timeout=30, check=False
    )
    assert helped.returncode == 0
    assert commands.cmd_scone_ghostunnel(SconeGhostunnelParams(app=APP)) == 0
    assert scone_problems(yaml.safe_load(capsys.readouterr().out)) == []


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            lambda: commands.cmd_istio_policy(
                IstioPolicyParams(service="Http_bin", allow=("spiffe://x//y",))
            ),
            [
                "--service: 'Http_bin': must be a DNS-1035 label (Kubernetes Service name): lowercase "
                "letters, digits and '-', starting with a letter and ending with a letter or digit",
                "--allow: 'spiffe://x//y': path cannot contain empty segments ('//')",
            ],
        ),
        (
            lambda: commands.cmd_scone_ghostunnel(
                SconeGhostunnelParams(
                    app=SconeAppParams(session="ns/a b", mrenclaves=("xyz",), targets=("foo",)),
                    command_line=True,
                )
            ),
            [
                "--session: 'ns/a b': SCONE session names are '/'-separated segments of letters, digits, "
                "'_' and '-'",
                "--mrenclave: 'xyz': MRENCLAVE must be 64 hexadecimal digits (SHA-256 of the enclave)",
                "--target: 'foo': must be SVC.NAMESPACE:PORT[=SPIFFE_ID]",
            ],
        ),
        (
            lambda: commands.cmd_scone_ghostunnel(SconeGhostunnelParams(app=APP, listen_ports=(1, 2))),
            ["--listen-port: give one per --target, in the same order (or none)"],
        ),
        (
            lambda: commands.cmd_spire_entries(
                SpireEntriesParams(spiffe_id="spiffe://td/a", parent_id="spiffe://td/p")
            ),
            ["--cas-session: required (or --selector for a Workload API entry)"],
        ),
    ],
)
def test_bad_params_name_the_flag_value_and_rule(command: Callable[[], int], expected: list[str]) -> None:
    with pytest.raises(FlagError) as caught:
        command()
    assert caught.value.problems == expected
