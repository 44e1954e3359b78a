"""Specs that once crashed ``check``/``render`` instead of being refused: one ``error:`` line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.check import check
from bridge.errors import SpecError
from bridge.render import render
from bridge.spec import load_spec, parse_document
from tests.bridge.strategies import EXAMPLE

MESHBRIDGE = [sys.executable, "-m", "bridge.cli"]
HEAD = "apiVersion: meshbridge.io/v1alpha1\nkind: Bridge\ntrustDomain: example.org\n"


def _block_nesting(depth: int) -> str:
    lines = [HEAD + "mesh:"]
    lines += ["  " * (i + 1) + "a:" for i in range(depth)]
    lines.append("  " * (depth + 1) + "b: 1")
    return "\n".join(lines) + "\n"


def _flow_nesting(depth: int) -> str:
    return HEAD + "mesh: " + "{a: " * depth + "1" + "}" * depth + "\n"


@pytest.mark.parametrize("text", [_block_nesting(500), _flow_nesting(500)], ids=["block", "flow"])
def test_deep_nesting_is_a_spec_error(text: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(text)
    assert info.value.problems == ["<spec>: the spec nests too deeply (a bridge spec is a few levels deep)"]


@pytest.mark.parametrize("command", ["check", "render"])
def test_deep_nesting_exits_2_with_one_line(tmp_path: Path, command: str) -> None:
    spec = tmp_path / "deep.yaml"
    spec.write_text(_block_nesting(500))
    args = [*MESHBRIDGE, command, "-f", str(spec)] + (
        ["-o", str(tmp_path / "out")] if command == "render" else []
    )
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {spec}: the spec nests too deeply (a bridge spec is a few levels deep)\n"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _example(**spire: object) -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load(EXAMPLE.read_text())
    doc["spire"] = {**doc["spire"], **spire}  # type: ignore[dict-item]
    return doc


@pytest.mark.parametrize("key", ["casPredecessorDir", "templatesDir"])
@pytest.mark.parametrize("where", ["/run/spire/svidstore", "/tmp/x", "/var/run/spire"])
def test_svidstore_state_on_a_volatile_path_is_refused(key: str, where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_document(_example(**{key: where}))
    (problem,) = info.value.problems
    assert problem.startswith(f"spire.{key}: {where!r}: must be on persistent storage")


def test_defaults_match_the_documented_install() -> None:
    doc = _example()
    for key in ("casPredecessorDir", "templatesDir", "className"):
        doc["spire"].pop(key)  # type: ignore[attr-defined]
    doc["mesh"]["sds"].pop("image")  # type: ignore[index]
    bridge = parse_document(doc)
    assert bridge.spire.class_name == "spire-server-spire"  # hardened chart: <namespace>-<release>
    assert bridge.spire.cas_predecessor_dir == "/var/lib/spire/svidstore/predecessors"
    assert bridge.spire.templates_dir == "/var/lib/spire/svidstore/templates"
    assert bridge.mesh.sds.image == "localhost/meshbridge/sds-server:0.1.0"  # what `make image` builds


def test_ignore_advisories_reach_the_session_and_need_outdated_tcb() -> None:
    doc = _example()
    doc["externalApps"][0]["scone"]["tolerations"] = ["hyperthreading", "outdated-tcb"]  # type: ignore[index]
    doc["externalApps"][0]["scone"]["ignoreAdvisories"] = ["INTEL-SA-00615"]  # type: ignore[index]
    bridge = parse_document(doc)
    assert bridge.apps[0].scone.ignore_advisories == ("INTEL-SA-00615",)
    session = render(bridge).yaml_documents("scone/shielded-client/session.yaml")[0]
    assert session["security"] == {  # type: ignore[comparison-overlap]
        "attestation": {
            "tolerate": ["hyperthreading", "outdated-tcb"],
            "ignore_advisories": ["INTEL-SA-00615"],
        }
    }
    assert not [w for w in check(bridge).warnings if "ignoreAdvisories" in w]
    doc["externalApps"][0]["scone"]["tolerations"] = ["hyperthreading"]  # type: ignore[index]
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    assert info.value.problems == [
        "externalApps[0].scone.ignoreAdvisories: only with a toleration of their category (outdated-tcb, "
        "software-hardening-needed, insecure-configuration): CAS ignores an advisory only when its category "
        "is tolerated"
    ]


def test_outdated_tcb_without_advisories_is_warned_about() -> None:
    doc = _example()
    doc["externalApps"][0]["scone"]["tolerations"] = ["hyperthreading", "outdated-tcb"]  # type: ignore[index]
    (warning,) = [w for w in check(parse_document(doc)).warnings if "outdated-tcb" in w]
    assert warning.startswith(
        "externalApps[0] (shielded-client): attestation.tolerate: 'outdated-tcb': tolerates outdated-tcb "
        "without ignore_advisories"
    )


def test_no_mesh_callers_renders_a_deny_policy_that_leaves_the_mesh_alone() -> None:
    """Issue 14: with no meshCallers an ALLOW policy would turn away every in-mesh caller the moment it
    is applied. The service gets a DENY policy naming the declared apps that do not target it instead."""
    doc = _example()
    services: list[dict[str, object]] = doc["meshServices"]  # type: ignore[assignment]
    services[0].pop("meshCallers")
    services.append({"name": "other", "namespace": "default", "port": 9000, "labels": {"app": "other"}})
    doc["externalApps"][1]["targets"] = [{"service": "other", "listenPort": 9000}]  # type: ignore[index]
    bridge = parse_document(doc)
    policies = render(bridge).yaml_documents("istio/authorization-policies.yaml")
    assert [(p["metadata"]["name"], p["spec"]["action"]) for p in policies] == [  # type: ignore[index]
        ("httpbin-meshbridge-deny", "DENY"),
        ("other-meshbridge-deny", "DENY"),
    ]
    assert policies[0]["spec"]["rules"] == [  # type: ignore[index]
        {"from": [{"source": {"principals": ["example.org/external/tunnel-client"]}}]}
    ]
    assert check(bridge).problems == ()
