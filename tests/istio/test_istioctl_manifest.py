"""Real ``istioctl manifest generate -f`` of the rendered overlay: accepted as is, and what it produces.

The overlay's JSON schema cannot see what Istio's own charts do with it; istioctl (built from
``istio.io/istio`` by ``make peers``) can. Offline: no cluster is contacted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.spec import load_spec
from tests.bridge.strategies import EXAMPLE
from tests.support.istioctl import Manifest, manifest_generate, render_spec
from tests.support.peers import require_peer

pytestmark = pytest.mark.slow

UDS_DIR = "/run/secrets/workload-spiffe-uds"  # where istio-agent looks for an SDS socket (Istio's contract)
COMPLAINTS = re.compile(r"unknown field|ignor|not (?:supported|allowed)|deprecat|invalid|unrecogni", re.I)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_spec(EXAMPLE, tmp_path_factory.mktemp("render") / "out")


@pytest.fixture(scope="module")
def overlay(rendered: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((rendered / "istio/istio-operator.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def manifest(rendered: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    istioctl = require_peer("istioctl")
    return manifest_generate(
        istioctl, rendered / "istio/istio-operator.yaml", tmp_path_factory.mktemp("ictl")
    )


def test_overlay_is_accepted_without_complaints(manifest: Manifest) -> None:
    complaints = [ln for ln in manifest.stderr.splitlines() if COMPLAINTS.search(ln)]
    assert complaints == [], manifest.stderr
    kinds = {d["kind"] for d in manifest.documents}
    assert {"CustomResourceDefinition", "Deployment", "ConfigMap", "MutatingWebhookConfiguration"} <= kinds


def test_mesh_config_carries_the_trust_domain(manifest: Manifest, overlay: dict[str, Any]) -> None:
    mesh = yaml.safe_load(manifest.find("ConfigMap", "istio")["data"]["mesh"])
    assert mesh["trustDomain"] == overlay["spec"]["meshConfig"]["trustDomain"] == "example.org"


def test_injector_carries_the_spire_template_verbatim(manifest: Manifest, overlay: dict[str, Any]) -> None:
    injector = manifest.find("ConfigMap", "istio-sidecar-injector")
    assert injector["metadata"]["namespace"] == "istio-system"
    config = yaml.safe_load(injector["data"]["config"])
    ours = overlay["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["spire"]
    # verbatim, up to the final newline (the chart's template trims it)
    assert config["templates"]["spire"].rstrip("\n") == ours.rstrip("\n")
    assert "sidecar" in config["templates"]  # Istio's own template is still there, ours merges over it


def _gateway(manifest: Manifest) -> dict[str, Any]:
    deployment = manifest.find("Deployment", "istio-ingressgateway")
    assert deployment["metadata"]["namespace"] == "istio-system"
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def test_gateway_runs_the_sds_container(manifest: Manifest, overlay: dict[str, Any]) -> None:
    pod = _gateway(manifest)
    sds = [c for c in pod.get("initContainers", []) if c["name"] == "meshbridge-sds"]
    assert len(sds) == 1, [c["name"] for c in pod.get("initContainers", [])]
    (container,) = sds
    assert container["restartPolicy"] == "Always"  # a native sidecar: serves for the pod's lifetime
    assert container["image"] == load_spec(EXAMPLE).mesh.sds.image
    assert container["command"][:3] == ["meshbridge", "sds", "serve"]
    assert container["command"][container["command"].index("--listen") + 1] == f"{UDS_DIR}/socket"
    proxy = next(c for c in pod["containers"] if c["name"] == "istio-proxy")
    assert {"name": "workload-socket", "mountPath": UDS_DIR} in proxy["volumeMounts"]


def test_gateway_has_every_volume_its_containers_mount(manifest: Manifest) -> None:
    pod = _gateway(manifest)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, (
                f"container {container['name']} mounts {mount['name']!r} at {mount['mountPath']}, "
                f"but the Deployment has no such volume (volumes: {sorted(volumes)})"
            )
    assert volumes["workload-socket"] == {"name": "workload-socket", "emptyDir": {}}
    assert volumes["spiffe-workload-api"] == {
        "name": "spiffe-workload-api",
        "csi": {"driver": "csi.spiffe.io", "readOnly": True},
    }


def test_a_custom_istio_namespace_moves_istiod_and_the_root_namespace_with_it(tmp_path: Path) -> None:
    """``mesh.istioNamespace`` is where the mesh-wide STRICT PeerAuthentication is rendered; istioctl must put
    istiod there too and make it the root namespace, or STRICT would hold in that one namespace only.
    (istioctl moves istiod by ``values.global.istioNamespace``; the IstioOperator's metadata.namespace
    and spec.namespace leave it in istio-system.)"""
    spec = tmp_path / "bridge.yaml"
    spec.write_text(EXAMPLE.read_text().replace("istioNamespace: istio-system", "istioNamespace: mesh-root"))
    out = render_spec(spec, tmp_path / "out")
    peer_auth = yaml.safe_load((out / "istio/peer-authentication.yaml").read_text())
    assert peer_auth["metadata"]["namespace"] == "mesh-root"
    (workdir := tmp_path / "ictl").mkdir()
    manifest = manifest_generate(require_peer("istioctl"), out / "istio/istio-operator.yaml", workdir)
    assert manifest.find("Deployment", "istiod")["metadata"]["namespace"] == "mesh-root"
    mesh = yaml.safe_load(manifest.find("ConfigMap", "istio")["data"]["mesh"])
    assert mesh["rootNamespace"] == "mesh-root"
