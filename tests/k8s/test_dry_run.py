"""Every document ``meshbridge render`` writes, the whole ``istioctl manifest generate`` output (gateway
Deployment included) and the kube-injected httpbin pass a real API server's ``--dry-run=server`` apply:
admission, defaulting and the CRDs' OpenAPI schemas (Istio's, spire-controller-manager's) all run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.apply import PRUNABLE
from bridge.kube import KubeError, ObjectRef
from tests.bridge.strategies import EXAMPLE
from tests.support.istioctl import Manifest, kube_inject, render_spec
from tests.support.kube import ApiServer
from tests.support.peers import require_peer

pytestmark = pytest.mark.slow


def _documents(out: Path) -> dict[str, list[dict[str, Any]]]:
    docs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.suffix in (".yaml", ".yml"):
            docs[rel] = [d for d in yaml.safe_load_all(path.read_text()) if d]
        elif path.suffix == ".json":
            loaded = json.loads(path.read_text())
            docs[rel] = loaded if isinstance(loaded, list) else [loaded]
    return docs


def _dry_run(server: ApiServer, objects: list[dict[str, Any]]) -> list[str]:
    """Server dry-run apply each object; the refusals (``ref: message``)."""
    problems = []
    with server.connect() as cluster:
        for obj in objects:
            before = cluster.get(obj)
            try:
                result = cluster.apply(obj, dry_run=True)
            except KubeError as exc:  # collect every refusal, report them together
                problems.append(str(exc))
                continue
            assert result["metadata"]["name"] == obj["metadata"]["name"]
            if before is None:
                assert cluster.get(obj) is None, f"{ObjectRef.of(obj)}: persisted by a dry run"
    return problems


@pytest.mark.parametrize("spec", ["bridge.yaml", "bridge-federated.yaml"])
def test_every_rendered_document_passes_server_dry_run(kube: ApiServer, spec: str, tmp_path: Path) -> None:
    docs = _documents(render_spec(EXAMPLE.parent / spec, tmp_path / "out"))
    objects = []
    for path, items in docs.items():
        for doc in items:
            if "apiVersion" in doc and "kind" in doc:
                objects.append(doc)
            else:
                assert path.startswith("scone/"), f"{path}: neither a Kubernetes object nor a CAS session"
    kinds = {o["kind"] for o in objects}
    assert {"AuthorizationPolicy", "ClusterSPIFFEID", "IstioOperator", "PeerAuthentication"} <= kinds
    assert kinds <= {k for _, k in PRUNABLE} | {"IstioOperator"}  # apply/--prune know every kind
    with kube.connect() as cluster:
        # Istio ships no IstioOperator CRD any more: only istioctl reads the overlay (why apply skips it)
        assert not cluster.serves("install.istio.io/v1alpha1", "IstioOperator")
    assert _dry_run(kube, [o for o in objects if o["kind"] != "IstioOperator"]) == []


def test_istioctl_manifest_passes_server_dry_run(kube: ApiServer, istio_manifest: Manifest) -> None:
    objects = [d for d in istio_manifest.documents if d["kind"] != "CustomResourceDefinition"]
    gateway = [
        d for d in objects if d["kind"] == "Deployment" and d["metadata"]["name"] == "istio-ingressgateway"
    ]
    assert len(gateway) == 1
    assert _dry_run(kube, gateway) == []
    assert _dry_run(kube, objects) == []


def test_kube_injected_httpbin_passes_server_dry_run(
    kube: ApiServer, istio_manifest: Manifest, tmp_path: Path
) -> None:
    docs = kube_inject(require_peer("istioctl"), istio_manifest, EXAMPLE.parent / "httpbin.yaml", tmp_path)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "httpbin-injected", "namespace": "default"},
        "spec": template["spec"],
    }
    service_account = next(d for d in docs if d["kind"] == "ServiceAccount")
    with kube.connect() as cluster:
        cluster.apply(service_account)  # Pod admission (ServiceAccount plugin) looks the account up
    assert _dry_run(kube, [d for d in docs if d["kind"] != "ServiceAccount"]) == []
    assert _dry_run(kube, [pod]) == []
