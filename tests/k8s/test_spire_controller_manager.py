"""Stretch: the real spire-controller-manager, against the real API server and a real spire-server, turns
the ClusterSPIFFEIDs ``meshbridge apply`` wrote into SPIRE entries for httpbin's and the gateway's pods.

No kubelet: the pods are bound to a Node object by hand and stay Pending, which is all the controller
needs (it registers pods, it does not wait for them to run). What this proves: our ClusterSPIFFEIDs'
``spiffeIDTemplate``, ``podSelector``/``namespaceSelector`` and ``dnsNameTemplates`` (and ``className``,
when the spec sets one) mean to the controller what the README says they mean.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.spire_local import Entry, SpireServer
from tests.bridge.strategies import EXAMPLE
from tests.k8s.test_apply import meshbridge
from tests.support.kube import ApiServer, stop_process
from tests.support.peers import require_peer

pytestmark = pytest.mark.slow

REGISTERED_TIMEOUT = 60.0


def _controller_config(path: Path, server: SpireServer, class_name: str | None) -> Path:
    config: dict[str, Any] = {
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ControllerManagerConfig",
        "clusterName": "demo",
        "clusterDomain": "cluster.local",
        "trustDomain": "example.org",
        "spireServerSocketPath": str(server.socket_path),
        "validatingWebhookConfigurationName": "spire-controller-manager-webhook",  # required; webhook off
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": "0"},
        "leaderElection": {"leaderElect": False},
    }
    if class_name:
        config["className"] = class_name
    else:
        config["watchClassless"] = True
    path.write_text(yaml.safe_dump(config))
    return path


def _pod(name: str, namespace: str, labels: dict[str, str], service_account: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": "node-1",  # bound by hand: no scheduler, no kubelet; the pod stays Pending
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "example.invalid/app:1"}],
        },
    }


def _wait_entry(server: SpireServer, spiffe_id: str, scm_log: Path) -> Entry:
    deadline = time.monotonic() + REGISTERED_TIMEOUT
    while time.monotonic() < deadline:
        entries = server.entry_show(spiffe_id=spiffe_id)
        if entries:
            (entry,) = entries
            return entry
        time.sleep(0.5)
    pytest.fail(
        f"no entry for {spiffe_id} within {REGISTERED_TIMEOUT:.0f}s; controller log:\n"
        f"{scm_log.read_text()[-4000:]}"
    )


def test_cluster_spiffeids_register_pending_pods(kube: ApiServer, rendered: Path, short_dir: Path) -> None:
    scm = require_peer("spire-controller-manager")
    require_peer("spire-server")
    kubeconfig = str(kube.kubeconfig)
    result = meshbridge("apply", "-f", str(EXAMPLE), "--kubeconfig", kubeconfig, "--force-conflicts")
    assert result.returncode == 0, result.stderr
    ids = list(yaml.safe_load_all((rendered / "spire/cluster-spiffeids.yaml").read_text()))
    class_names = {d["spec"].get("className") for d in ids}
    assert len(class_names) == 1
    gateway_sa = "istio-ingressgateway-service-account"
    with kube.connect() as cluster:
        node = cluster.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
        for ns, sa in (("default", "httpbin"), ("istio-system", gateway_sa)):
            cluster.apply(
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}}
            )
        httpbin = cluster.apply(_pod("httpbin-scm", "default", {"app": "httpbin"}, "httpbin"))
        gateway = cluster.apply(_pod("gateway-scm", "istio-system", {"istio": "ingressgateway"}, gateway_sa))
        other = cluster.apply(_pod("unselected-scm", "default", {"app": "other"}, "httpbin"))
    with SpireServer("example.org", short_dir / "server") as server:
        log = short_dir / "spire-controller-manager.log"
        config = _controller_config(short_dir / "scm.yaml", server, class_names.pop())
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(scm), "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(kube.kubeconfig), "ENABLE_WEBHOOKS": "false"},
                cwd=short_dir,
            )
        try:
            parent = f"spiffe://example.org/spire/agent/k8s_psat/demo/{node['metadata']['uid']}"
            entry = _wait_entry(server, "spiffe://example.org/ns/default/sa/httpbin", log)
            assert entry.parent_id == parent
            assert entry.dns_names == ("httpbin.default.svc.cluster.local", "httpbin.default.svc")
            # the controller pins the pod by UID and the node by the parent ID (pkg/spireentry/entries.go)
            assert entry.selectors == ("k8s:pod-uid:" + httpbin["metadata"]["uid"],)
            gw = _wait_entry(server, f"spiffe://example.org/ns/istio-system/sa/{gateway_sa}", log)
            assert gw.parent_id == parent
            assert gw.selectors == ("k8s:pod-uid:" + gateway["metadata"]["uid"],)
            # the pod no ClusterSPIFFEID selects gets nothing: exactly two entries
            entries = server.entry_show()
            uids = {s for e in entries for s in e.selectors if s.startswith("k8s:pod-uid:")}
            assert "k8s:pod-uid:" + other["metadata"]["uid"] not in uids
            assert len(entries) == 2, entries
        finally:
            stop_process(proc)
            with kube.connect() as cluster:
                for pod in (httpbin, gateway, other):
                    cluster.delete(pod)
