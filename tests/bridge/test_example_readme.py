"""examples/httpbin/README.md: the cluster walk-through's commands name files that exist.

The walk-through renders into ``out/`` at the repository root and runs everything from there, so each
file a command reads is either a rendered artifact (relative to ``out/``) or a file of the repository
reached from ``out/``. Also: the SPIRE chart's default ClusterSPIFFEID is turned off (it would give
httpbin's pods a second, DNS-name-less registration next to meshbridge's), and the ClusterSPIFFEIDs the
README names are the rendered ones.
"""

from __future__ import annotations

import re
from pathlib import Path

from bridge import render as layout
from bridge.render import render
from bridge.spec import load_spec
from tests.bridge.strategies import EXAMPLE

REPO = Path(__file__).resolve().parents[2]
README = REPO / "examples" / "httpbin" / "README.md"
OUT = REPO / "out"  # where the walk-through renders to and runs from (step 0: `cd out/`)


def _cluster_commands() -> list[str]:
    text = README.read_text().split("## In a cluster", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_files_the_walk_through_reads_exist() -> None:
    rendering = render(load_spec(EXAMPLE))
    commands = _cluster_commands()
    stripped = [c.strip() for c in commands]
    assert "cd out/" in stripped
    after_cd = commands[stripped.index("cd out/") + 1 :]
    read: list[str] = []
    for cmd in after_cd:
        read += re.findall(r"(?:^|\s)-f\s+(\S+)", cmd)
        read += re.findall(r"scone session create\s+(\S+)", cmd)
        read += re.findall(r"(spire/register-entries\.sh)", cmd)
    assert "istio/istio-operator.yaml" in read
    assert "spire/cluster-spiffeids.yaml" in read
    for path in read:
        if path in rendering:
            continue
        assert (OUT / path).resolve().is_file(), f"{path}: neither a rendered artifact nor a file from out/"
    assert [p for p in rendering if p.startswith("spire/svidstore-templates/")]
    assert any("spire/svidstore-templates/*.template" in c for c in after_cd)


def test_chart_default_cluster_spiffe_id_is_off_and_ours_are_named() -> None:
    commands = " ".join(_cluster_commands())
    off = "--set spire-server.controllerManager.identities.clusterSPIFFEIDs.default.enabled=false"
    assert off in commands
    rendered = {
        str(d["metadata"]["name"])  # type: ignore[index]
        for d in render(load_spec(EXAMPLE)).yaml_documents(layout.CLUSTER_SPIFFEIDS)
    }
    named = set(re.findall(r"\bmeshbridge-[a-z0-9-]+", README.read_text()))
    assert rendered <= named, rendered - named


def test_prerequisites_name_the_kubernetes_the_overlay_needs() -> None:
    """The overlay's SDS container is a native sidecar (init container with restartPolicy Always): on
    Kubernetes < 1.29 it would be a plain init container that never exits, and pods would never start."""
    overlay = render(load_spec(EXAMPLE)).yaml_documents(layout.ISTIO_OPERATOR)[0]
    template = overlay["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["spire"]  # type: ignore[index]
    assert "restartPolicy: Always" in template
    assert "Kubernetes ≥ 1.29" in README.read_text()
