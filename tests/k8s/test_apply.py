"""``meshbridge apply`` / ``diff`` through the real CLI against a real API server.

Server-side apply with field manager ``meshbridge``; labels ``app.kubernetes.io/managed-by``,
``meshbridge.io/bridge``, ``meshbridge.io/spec-hash``; ``--prune`` removes only what this bridge applied
before and no longer renders; missing CRDs are one error naming what to install.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.apply import plan
from bridge.binaries import REPO_ROOT
from bridge.kube import ObjectRef
from bridge.render import render
from bridge.spec import load_spec
from tests.bridge.strategies import EXAMPLE
from tests.support.kube import ApiServer, free_ports

pytestmark = pytest.mark.slow

MESHBRIDGE = [sys.executable, "-m", "bridge.cli"]
NOT_APPLIED = (
    "istio/istio-operator.yaml: IstioOperator meshbridge-spire is not applied: it is for "
    "'istioctl install -f istio/istio-operator.yaml' (no API server object behind it)"
)


def meshbridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MESHBRIDGE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def _spec_with_echo(path: Path) -> Path:
    """The example plus a second mesh service, ``echo`` in namespace ``apps``, called by tunnel-client."""
    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["meshServices"].append(
        {
            "name": "echo",
            "namespace": "apps",
            "serviceAccount": "echo",
            "port": 9000,
            "protocol": "http",
            "labels": {"app": "echo"},
        }
    )
    spec["externalApps"][1]["targets"].append({"service": "echo", "listenPort": 9000})
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _obj(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": meta}


def _planned(spec: Path) -> list[dict[str, Any]]:
    """What apply sends for ``spec``, in order (the expectations follow the example as it evolves)."""
    bridge = load_spec(spec)
    return list(plan(render(bridge), trust_domain=bridge.trust_domain, source=spec.read_bytes()).objects)


def _line(obj: dict[str, Any], action: str) -> str:
    return f"{ObjectRef.of(obj)} {action}"


PA = _obj("security.istio.io/v1", "PeerAuthentication", "default", "istio-system")


def test_apply_diff_prune_lifecycle(kube: ApiServer, tmp_path: Path) -> None:
    kc = ["--kubeconfig", str(kube.kubeconfig)]
    v2 = _spec_with_echo(tmp_path / "bridge-v2.yaml")
    v1 = tmp_path / "bridge-v1.yaml"
    v1.write_bytes(EXAMPLE.read_bytes())
    with_echo, without_echo = _planned(v2), _planned(v1)
    kept = {ObjectRef.of(o) for o in without_echo}
    echo = sorted((o for o in with_echo if ObjectRef.of(o) not in kept), key=ObjectRef.of)
    assert {(o["kind"], o["metadata"]["name"]) for o in echo} >= {("ClusterSPIFFEID", "meshbridge-apps-echo")}
    with kube.connect() as cluster:
        for ns in sorted({o["metadata"].get("namespace") for o in with_echo} - {None}):
            cluster.apply(_obj("v1", "Namespace", ns))
        for obj in with_echo:  # a clean slate, whichever test of the session ran first
            cluster.delete(obj)

    # a server dry run admits everything and persists nothing
    result = meshbridge("apply", "-f", str(v2), "--dry-run=server", *kc)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        NOT_APPLIED,
        *[_line(o, "created (server dry run)") for o in with_echo],
    ]
    with kube.connect() as cluster:
        assert [cluster.get(o) for o in with_echo] == [None] * len(with_echo)

    # diff before anything exists: every object is new
    result = meshbridge("diff", "-f", str(v2), *kc)
    assert result.returncode == 1, result.stderr
    assert "+kind: ClusterSPIFFEID" in result.stdout
    assert "+++ meshbridge: clusterspiffeid.spire.spiffe.io/meshbridge-apps-echo\n" in result.stdout

    # apply for real: server-side, field manager meshbridge, labelled with the spec's hash
    result = meshbridge("apply", "-f", str(v2), *kc)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [_line(o, "created") for o in with_echo]
    v2_hash = hashlib.sha256(v2.read_bytes()).hexdigest()[:40]
    with kube.connect() as cluster:
        for obj in with_echo:
            live = cluster.get(obj)
            assert live is not None, obj
            labels = live["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "meshbridge"
            assert labels["meshbridge.io/bridge"] == "example.org"
            assert labels["meshbridge.io/spec-hash"] == v2_hash
            managers = {(m["manager"], m["operation"]) for m in live["metadata"]["managedFields"]}
            assert managers == {("meshbridge", "Apply")}
            assert live["spec"] == obj["spec"]  # what we rendered is what the server keeps

    # again: nothing changes, and diff agrees
    result = meshbridge("apply", "-f", str(v2), *kc)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [_line(o, "unchanged") for o in with_echo]
    result = meshbridge("diff", "-f", str(v2), *kc)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    # objects that are not this bridge's: no labels at all, and another bridge's (other trust domain)
    not_ours = {**_obj("security.istio.io/v1", "AuthorizationPolicy", "not-ours", "apps"), "spec": {}}
    other_bridge = {
        **_obj("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID", "other-bridge"),
        "spec": {"spiffeIDTemplate": "spiffe://other.org/x"},
    }
    other_bridge["metadata"]["labels"] = {
        "app.kubernetes.io/managed-by": "meshbridge",
        "meshbridge.io/bridge": "other.org",
    }
    with kube.connect() as cluster:
        cluster.apply(not_ours)
        cluster.apply(other_bridge)

    # v1 no longer renders echo: diff --prune shows it going, and the new spec hash elsewhere
    result = meshbridge("diff", "-f", str(v1), "--prune", *kc)
    assert result.returncode == 1, result.stderr
    for obj in echo:
        name = str(ObjectRef.of(obj)).replace(" -n ", " namespace ")
        assert f"--- live: {name}\n+++ meshbridge: {name}\n" in result.stdout
    assert "not-ours" not in result.stdout
    assert "other-bridge" not in result.stdout
    v1_hash = hashlib.sha256(v1.read_bytes()).hexdigest()[:40]
    assert f"+    meshbridge.io/spec-hash: {v1_hash}" in result.stdout

    # without --prune, stale objects stay; a pruning dry run deletes nothing
    assert meshbridge("apply", "-f", str(v1), *kc).returncode == 0
    result = meshbridge("apply", "-f", str(v1), "--prune", "--dry-run=server", *kc)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-len(echo) :] == [_line(o, "pruned (server dry run)") for o in echo]
    with kube.connect() as cluster:
        assert all(cluster.get(o) is not None for o in echo)

    # --prune: exactly the echo objects go
    result = meshbridge("apply", "-f", str(v1), "--prune", *kc)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == [
        *[_line(o, "unchanged") for o in without_echo],
        *[_line(o, "pruned") for o in echo],
    ]
    with kube.connect() as cluster:
        assert [cluster.get(o) for o in echo] == [None] * len(echo)
        assert cluster.get(not_ours) is not None
        assert cluster.get(other_bridge) is not None
        for obj in without_echo:
            live = cluster.get(obj)
            assert live is not None
            assert live["metadata"]["labels"]["meshbridge.io/spec-hash"] == v1_hash
        cluster.delete(not_ours)
        cluster.delete(other_bridge)


def test_field_conflicts_need_force(kube: ApiServer, tmp_path: Path) -> None:
    """A field another manager set (e.g. ``kubectl apply`` earlier) is not silently taken over."""
    spec = tmp_path / "bridge.yaml"
    spec.write_bytes(EXAMPLE.read_bytes())
    kc = ["--kubeconfig", str(kube.kubeconfig)]
    theirs = {**PA, "spec": {"mtls": {"mode": "PERMISSIVE"}}}
    with kube.connect() as cluster:
        cluster.delete(PA)
        cluster._dyn.server_side_apply(  # another field manager, as kubectl would be
            cluster._served("security.istio.io/v1", "PeerAuthentication"),
            body=theirs,
            field_manager="kubectl",
            namespace="istio-system",
        )
    result = meshbridge("apply", "-f", str(spec), *kc)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: peerauthentication.security.istio.io/default -n istio-system: ")
    assert ".spec.mtls.mode" in line
    assert "--force-conflicts" in line
    result = meshbridge("apply", "-f", str(spec), "--force-conflicts", *kc)
    assert result.returncode == 0, result.stderr
    with kube.connect() as cluster:
        live = cluster.get(PA)
        assert live is not None
        assert live["spec"]["mtls"]["mode"] == "STRICT"


def test_missing_crds_are_one_error_naming_what_to_install(bare_kube: ApiServer) -> None:
    objects = _planned(EXAMPLE)
    kinds = ", ".join(dict.fromkeys(f"{o['kind']} ({o['apiVersion']})" for o in objects))
    assert "PeerAuthentication (security.istio.io/v1)" in kinds
    assert "ClusterSPIFFEID (spire.spiffe.io/v1alpha1)" in kinds
    for command in (["apply"], ["apply", "--dry-run=server"], ["diff"]):
        result = meshbridge(*command, "-f", str(EXAMPLE), "--kubeconfig", str(bare_kube.kubeconfig))
        assert result.returncode == 2, result
        assert result.stderr.splitlines() == [
            f"error: {bare_kube.url}: the cluster does not serve {kinds}: "
            "install Istio's CRDs: istioctl install -f istio/istio-operator.yaml; "
            "the SPIRE controller manager's CRDs: "
            "helm upgrade --install -n spire-server spire-crds spire-crds "
            "--repo https://spiffe.github.io/helm-charts-hardened/ --create-namespace"
        ]


def test_context_selects_the_cluster(kube: ApiServer, tmp_path: Path) -> None:
    config = yaml.safe_load(kube.kubeconfig.read_text())
    (port,) = free_ports(1)
    config["clusters"].append({"name": "gone", "cluster": {"server": f"https://127.0.0.1:{port}"}})
    config["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "admin"}})
    config["current-context"] = "gone"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    result = meshbridge("diff", "-f", str(EXAMPLE), "--kubeconfig", str(kubeconfig))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: https://127.0.0.1:{port}: no Kubernetes API server reachable (MaxRetryError); check the "
        "kubeconfig's context (--context) and that the cluster is up"
    ]
    result = meshbridge(
        "apply",
        "-f",
        str(EXAMPLE),
        "--dry-run=server",
        "--kubeconfig",
        str(kubeconfig),
        "--context",
        "meshbridge-test",
    )
    assert result.returncode == 0, result.stderr
