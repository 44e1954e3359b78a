"""``bridge.render``: public surface, session hashes, renderer refusals mapped to SpecError."""

from __future__ import annotations

import dataclasses

import pytest

import bridge.render
import bridge.spec
from bridge import render as layout
from bridge.errors import SpecError
from bridge.render import render
from bridge.spec import load_spec
from tests.bridge.strategies import EXAMPLE

BRIDGE = load_spec(EXAMPLE)
H1, H2 = "1" * 64, "2" * 64


def test_public_surface() -> None:
    assert bridge.spec.__all__ == ["load_spec", "parse_document"]
    assert bridge.render.__all__ == [
        "AUTHORIZATION_POLICIES",
        "CLUSTER_SPIFFEIDS",
        "ENTRIES_JSON",
        "ENTRIES_SCRIPT",
        "ISTIO_OPERATOR",
        "PEER_AUTHENTICATION",
        "README",
        "SVIDSTORE_HCL",
        "SVIDSTORE_TEMPLATES",
        "Rendering",
        "ghostunnel_command_path",
        "render",
        "session_path",
    ]


def test_entries_json_only_with_every_hash() -> None:
    assert layout.ENTRIES_JSON not in render(BRIDGE)
    partial = render(BRIDGE, session_hashes={"meshbridge/shielded-client": H1})
    assert layout.ENTRIES_JSON not in partial
    full = render(BRIDGE, session_hashes={"meshbridge/shielded-client": H1, "meshbridge/tunnel-client": H2})
    entries = full[layout.ENTRIES_JSON]
    assert isinstance(entries, dict)
    selectors = [e["selectors"] for e in entries["entries"]]  # type: ignore[attr-defined]
    assert {"type": "sconecas_sessionmanager", "value": f"session_hash:{H2}"} in selectors[1]
    assert "spire-server entry create -data spire/entries.json" in full.text(layout.README)


def test_unknown_or_bad_session_hash() -> None:
    with pytest.raises(SpecError) as info:
        render(
            BRIDGE,
            session_hashes={"meshbridge/shielded-client": H1, "meshbridge/tunnel-client": H2, "x/y": H1},
        )
    assert info.value.problems == ["--session-hash: 'x/y': no external app has this CAS session"]
    with pytest.raises(SpecError) as info:
        render(
            BRIDGE, session_hashes={"meshbridge/shielded-client": "nothex", "meshbridge/tunnel-client": H2}
        )
    assert info.value.problems[0].startswith(
        "externalApps (SPIRE entries): session_hashes['meshbridge/shielded"
    )


def test_renderer_refusal_becomes_spec_error() -> None:
    odd = dataclasses.replace(
        BRIDGE,
        mesh=dataclasses.replace(BRIDGE.mesh, sds=dataclasses.replace(BRIDGE.mesh.sds, image="img{{x}}")),
    )
    with pytest.raises(SpecError) as info:
        render(odd)
    assert info.value.problems == ["mesh: sds_image: 'img{{x}}': an image reference without spaces or '{{'"]


def test_tutorial_plugin_changes_selectors_and_warns() -> None:
    tutorial = dataclasses.replace(
        BRIDGE, spire=dataclasses.replace(BRIDGE.spire, svidstore_plugin="scone_cas_secretsmanager")
    )
    rendering = render(tutorial)
    script = rendering.text(layout.ENTRIES_SCRIPT)
    assert "-selector svidstore:type:scone_cas_secretsmanager" in script
    assert "-storeSVID" not in script
    assert rendering.text(layout.SVIDSTORE_HCL).startswith('SVIDStore "scone_cas_secretsmanager" {')
    assert any("InsecureSkipVerify" in w for w in rendering.warnings)
    assert "## Warnings" in rendering.text(layout.README)
