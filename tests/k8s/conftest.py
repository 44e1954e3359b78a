"""A real kube-apiserver (+ etcd) for the suite, with the Istio and SPIRE controller manager CRDs installed.

Session-scoped: one etcd backs two API servers (``--etcd-prefix``): ``kube`` with the CRDs and the
``istio-system`` namespace, ``bare_kube`` without any CRD (what a cluster looks like before Istio/SPIRE).
The Istio CRDs come from ``istioctl manifest generate`` of the rendered overlay, the SPIRE ones from
spire-controller-manager's module source (the version ``peers/spire-controller-manager/go.mod`` pins).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.binaries import REPO_ROOT
from tests.bridge.strategies import EXAMPLE
from tests.support.istioctl import Manifest, manifest_generate, render_spec
from tests.support.kube import ApiServer, Etcd, run_apiserver, run_etcd
from tests.support.peers import require_peer

ESTABLISHED_TIMEOUT = 60.0


def spire_controller_manager_crds() -> list[dict[str, Any]]:
    """The CRDs in spire-controller-manager's module source, at the version the tool module pins."""
    gomod = (REPO_ROOT / "peers/spire-controller-manager/go.mod").read_text()
    match = re.search(r"^\s*github\.com/spiffe/spire-controller-manager (v\S+)", gomod, re.M)
    assert match, "peers/spire-controller-manager/go.mod pins no spire-controller-manager version"
    mod = f"github.com/spiffe/spire-controller-manager@{match.group(1)}"
    result = subprocess.run(
        ["go", "mod", "download", "-json", mod],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
        cwd="/",
    )
    assert result.returncode == 0, f"go mod download {mod}: {result.stdout}{result.stderr}"
    bases = Path(json.loads(result.stdout)["Dir"]) / "config/crd/bases"
    return [yaml.safe_load(p.read_text()) for p in sorted(bases.glob("*.yaml"))]


def install(server: ApiServer, objects: list[dict[str, Any]]) -> None:
    """Apply ``objects`` (for real); wait until every CRD among them is Established and served."""
    with server.connect() as cluster:
        for obj in objects:
            cluster.apply(obj)
        crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
        deadline = time.monotonic() + ESTABLISHED_TIMEOUT
        pending = crds
        while pending and time.monotonic() < deadline:
            pending = [c for c in pending if not _established(cluster.get(c))]
            time.sleep(0.2 if pending else 0)
        assert not pending, f"CRDs not Established: {[c['metadata']['name'] for c in pending]}"
    with server.connect() as cluster:
        for crd in crds:
            version = next(v["name"] for v in crd["spec"]["versions"] if v.get("served", True))
            api_version = f"{crd['spec']['group']}/{version}"
            assert cluster.serves(api_version, crd["spec"]["names"]["kind"]), api_version


def _established(crd: dict[str, Any] | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_spec(EXAMPLE, tmp_path_factory.mktemp("render") / "out")


@pytest.fixture(scope="session")
def istio_manifest(rendered: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    istioctl = require_peer("istioctl")
    return manifest_generate(
        istioctl, rendered / "istio/istio-operator.yaml", tmp_path_factory.mktemp("ictl")
    )


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    binary = require_peer("etcd")
    require_peer("kube-apiserver")
    with run_etcd(binary, tmp_path_factory.mktemp("etcd")) as running:
        yield running


@pytest.fixture(scope="session")
def bare_kube(etcd: Etcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """An API server with no CRDs at all."""
    with run_apiserver(require_peer("kube-apiserver"), etcd, tmp_path_factory.mktemp("bare"), "bare") as s:
        yield s


@pytest.fixture(scope="session")
def kube(
    etcd: Etcd, istio_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API server with Istio's CRDs (from the manifest), SPIRE's, and the istio-system namespace."""
    with run_apiserver(require_peer("kube-apiserver"), etcd, tmp_path_factory.mktemp("kube"), "main") as s:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}}
        install(
            s,
            [
                namespace,
                *istio_manifest.of_kind("CustomResourceDefinition"),
                *spire_controller_manager_crds(),
            ],
        )
        yield s
