"""``bridge.apply.plan``: which rendered documents are applied, and the labels they get (pure, no cluster)."""

from __future__ import annotations

import hashlib

import pytest

from bridge.apply import PRUNABLE, bridge_label_value, plan, spec_hash
from bridge.render import render
from bridge.spec import load_spec
from tests.bridge.strategies import EXAMPLE


def test_plan_of_the_example() -> None:
    source = EXAMPLE.read_bytes()
    rendering = render(load_spec(EXAMPLE))
    p = plan(rendering, trust_domain="example.org", source=source)
    rendered = [
        doc
        for path in rendering
        if path.endswith((".yaml", ".json")) and not isinstance(rendering[path], str)
        for doc in rendering.yaml_documents(path)
        if "apiVersion" in doc and "kind" in doc
    ]
    # every Kubernetes object of the rendering, in rendering order, except the IstioOperator
    assert [(o["kind"], o["metadata"]["name"]) for o in p.objects] == [
        (d["kind"], d["metadata"]["name"])  # type: ignore[index]
        for d in rendered
        if d["kind"] != "IstioOperator"
    ]
    assert {o["kind"] for o in p.objects} >= {"PeerAuthentication", "ClusterSPIFFEID"}
    digest = hashlib.sha256(source).hexdigest()[:40]
    ours = {
        "app.kubernetes.io/managed-by": "meshbridge",
        "meshbridge.io/bridge": "example.org",
        "meshbridge.io/spec-hash": digest,
    }
    for obj in p.objects:
        assert obj["metadata"]["labels"].items() >= ours.items()
    assert p.not_applied == (
        "istio/istio-operator.yaml: IstioOperator meshbridge-spire is not applied: it is for "
        "'istioctl install -f istio/istio-operator.yaml' (no API server object behind it)",
    )
    assert p.selector == "app.kubernetes.io/managed-by=meshbridge,meshbridge.io/bridge=example.org"
    # every kind meshbridge renders for the API server is one --prune looks at
    assert set(p.kinds()) <= set(PRUNABLE)
    # the rendering itself is untouched (plan copies before labelling)
    assert all("meshbridge.io/spec-hash" not in str(d) for d in rendered)


@pytest.mark.parametrize(
    ("trust_domain", "expected"),
    [
        ("example.org", "example.org"),
        ("a" * 63, "a" * 63),
        ("a" * 64, "td-" + hashlib.sha256(b"a" * 64).hexdigest()[:40]),
    ],
)
def test_bridge_label_value(trust_domain: str, expected: str) -> None:
    assert bridge_label_value(trust_domain) == expected
    assert len(expected) <= 63


def test_spec_hash_is_sha256sum_cut_40() -> None:
    assert spec_hash(b"x") == hashlib.sha256(b"x").hexdigest()[:40]
