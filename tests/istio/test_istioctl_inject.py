"""Real ``istioctl kube-inject`` of ``examples/httpbin/httpbin.yaml`` with the injector config, mesh config
and values ``istioctl manifest generate`` made from the rendered overlay: the pod istiod would admit.

Asserted field by field: istio-proxy, the meshbridge SDS native sidecar, the shared ``workload-socket``
``emptyDir`` at ``/run/secrets/workload-spiffe-uds`` in both, and the SPIFFE CSI volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.render import render
from bridge.spec import load_spec
from bridge.writer import write_tree
from tests.bridge.strategies import EXAMPLE
from tests.support.istioctl import kube_inject, manifest_generate
from tests.support.peers import require_peer

pytestmark = pytest.mark.slow

HTTPBIN = EXAMPLE.parent / "httpbin.yaml"
UDS_DIR = "/run/secrets/workload-spiffe-uds"


@pytest.fixture(scope="module")
def overlay_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("render") / "out"
    write_tree(out, render(load_spec(EXAMPLE)))
    overlay = out / "istio/istio-operator.yaml"
    template = yaml.safe_load(overlay.read_text())["spec"]["values"]["sidecarInjectorWebhook"]["templates"]
    return overlay, yaml.safe_load(template["spire"])


@pytest.fixture(scope="module")
def pod(
    overlay_template: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    istioctl = require_peer("istioctl")
    work = tmp_path_factory.mktemp("inject")
    manifest = manifest_generate(istioctl, overlay_template[0], work)
    docs = kube_inject(istioctl, manifest, HTTPBIN, work)
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Service", "Deployment"]
    template: dict[str, Any] = docs[2]["spec"]["template"]
    return template


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    names = [i["name"] for i in items]
    assert len(names) == len(set(names)), f"duplicate names: {names}"
    return {i["name"]: i for i in items}


def test_pod_is_injected_with_both_templates(pod: dict[str, Any]) -> None:
    annotations = pod["metadata"]["annotations"]
    assert annotations["inject.istio.io/templates"] == "sidecar,spire"
    status = yaml.safe_load(annotations["sidecar.istio.io/status"])
    assert status["initContainers"] == [
        "meshbridge-sds",
        "istio-init",
    ]  # ours first: serves SDS from the start
    assert status["containers"] == ["istio-proxy"]
    assert {"workload-socket", "spiffe-workload-api"} <= set(status["volumes"])
    assert list(_by_name(pod["spec"]["containers"])) == ["httpbin", "istio-proxy"]
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["meshbridge-sds", "istio-init"]


def test_sds_native_sidecar(pod: dict[str, Any], overlay_template: tuple[Path, dict[str, Any]]) -> None:
    init = _by_name(pod["spec"]["initContainers"])
    assert "meshbridge-sds" in init
    sds = init["meshbridge-sds"]
    (expected,) = [c for c in overlay_template[1]["spec"]["initContainers"] if c["name"] == "meshbridge-sds"]
    assert sds["restartPolicy"] == "Always"
    assert sds["image"] == expected["image"] == load_spec(EXAMPLE).mesh.sds.image
    # the command itself is pinned by test_overlay.py and the golden overlay: injected as rendered
    assert sds["command"] == expected["command"]
    assert sds["securityContext"]["runAsUser"] == 1337
    assert sds["securityContext"]["runAsNonRoot"] is True
    assert sds["securityContext"]["readOnlyRootFilesystem"] is True
    assert sds["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m for m in sds["volumeMounts"]}
    assert mounts["workload-socket"] == {"name": "workload-socket", "mountPath": UDS_DIR}
    assert mounts["spiffe-workload-api"] == {
        "name": "spiffe-workload-api",
        "mountPath": "/spiffe-workload-api",
        "readOnly": True,
    }


def test_istio_proxy_shares_the_workload_socket(pod: dict[str, Any]) -> None:
    proxy = _by_name(pod["spec"]["containers"])["istio-proxy"]
    at_uds = [m for m in proxy["volumeMounts"] if m["mountPath"] == UDS_DIR]
    assert at_uds == [{"name": "workload-socket", "mountPath": UDS_DIR}]
    assert proxy["image"].split("/")[-1].startswith("proxyv2:")


def test_volumes(pod: dict[str, Any]) -> None:
    volumes = _by_name(pod["spec"]["volumes"])
    assert volumes["workload-socket"] == {"name": "workload-socket", "emptyDir": {}}
    assert volumes["spiffe-workload-api"] == {
        "name": "spiffe-workload-api",
        "csi": {"driver": "csi.spiffe.io", "readOnly": True},
    }
    for container in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{container['name']} mounts {mount['name']!r}: no such volume"
