"""What the demo runs is read from the rendering: identities, names, policies; inconsistencies fail."""

from __future__ import annotations

import copy

import pytest

import bridge.demo
from bridge.demo.errors import DemoError
from bridge.demo.plan import build_plan, describe, load_pod
from bridge.demo.run import EXAMPLE_DIR
from bridge.envoy import SourceRule
from bridge.render import render
from bridge.rendering import Rendering
from bridge.spec import load_spec


@pytest.fixture(scope="module")
def rendering() -> Rendering:
    return render(load_spec(EXAMPLE_DIR / "bridge.yaml"))


def _plan_with(rendering: Rendering, path: str, doc: object) -> None:
    """Build httpbin's plan from ``rendering`` with artifact ``path`` replaced by ``doc``."""
    docs = dict(rendering.documents)
    docs[path] = doc  # type: ignore[assignment]
    build_plan(Rendering(docs, rendering.warnings), load_pod(EXAMPLE_DIR / "httpbin.yaml"))


def test_public_surface() -> None:
    assert bridge.demo.__all__ == ["DemoError", "DemoOptions", "register", "run"]


def test_plan_from_the_example(rendering: Rendering) -> None:
    plan = build_plan(rendering, load_pod(EXAMPLE_DIR / "httpbin.yaml"))
    assert plan.trust_domain == "example.org"
    assert plan.mesh.spiffe_id == "spiffe://example.org/ns/default/sa/httpbin"
    assert plan.mesh.dns_names == ("httpbin.default.svc.cluster.local", "httpbin.default.svc")
    assert plan.mesh.principals == (
        "spiffe://example.org/external/shielded-client",
        "spiffe://example.org/external/tunnel-client",
    )
    assert [(a.name, a.mode, a.spiffe_id) for a in plan.apps] == [
        ("shielded-client", "network-shield", "spiffe://example.org/external/shielded-client"),
        ("tunnel-client", "ghostunnel", "spiffe://example.org/external/tunnel-client"),
    ]
    assert plan.pod.resolves("httpbin.default.svc.cluster.local")
    assert not plan.pod.resolves("httpbin.other.svc.cluster.local")


def test_cluster_spiffeid_must_select_the_pods(rendering: Rendering) -> None:
    docs = copy.deepcopy(rendering.yaml_documents("spire/cluster-spiffeids.yaml"))
    docs[0]["spec"]["podSelector"] = {"matchLabels": {"app": "httpbin-v2"}}  # type: ignore[index]
    with pytest.raises(DemoError, match="0 ClusterSPIFFEIDs select the httpbin pods"):
        _plan_with(rendering, "spire/cluster-spiffeids.yaml", docs)


def test_unknown_template_variable(rendering: Rendering) -> None:
    docs = copy.deepcopy(rendering.yaml_documents("spire/cluster-spiffeids.yaml"))
    docs[0]["spec"]["spiffeIDTemplate"] = "spiffe://{{ .TrustDomain }}/x/{{ .PodSpec.NodeName }}"  # type: ignore[index]
    with pytest.raises(DemoError, match=r"'\{\{ .PodSpec.NodeName \}\}': the demo cannot evaluate"):
        _plan_with(rendering, "spire/cluster-spiffeids.yaml", docs)


def test_session_without_spire_entry(rendering: Rendering) -> None:
    script = rendering.text("spire/register-entries.sh").replace("session_name:meshbridge/tunnel-client", "x")
    with pytest.raises(
        DemoError, match="no SPIRE entry stores its SVID into session 'meshbridge/tunnel-client'"
    ):
        _plan_with(rendering, "spire/register-entries.sh", script)


def test_operator_command_must_match_the_session(rendering: Rendering) -> None:
    text = rendering.text("scone/tunnel-client/ghostunnel-command.txt").replace("--timed-reload=1m", "")
    with pytest.raises(DemoError, match="operators and CAS would run different tunnels"):
        _plan_with(rendering, "scone/tunnel-client/ghostunnel-command.txt", text)


def test_every_artifact_is_described(rendering: Rendering) -> None:
    for path in rendering:
        assert describe(path, rendering[path]) != "rendered artifact", path


def test_plan_from_the_federated_example() -> None:
    rendering = render(load_spec(EXAMPLE_DIR / "bridge-federated.yaml"))
    plan = build_plan(
        rendering, load_pod(EXAMPLE_DIR / "httpbin.yaml"), [load_pod(EXAMPLE_DIR / "inventory.yaml")]
    )
    assert plan.trust_domains == ("example.org", "apps.example.org")
    assert plan.san_trust_domains == ("example.org", "apps.example.org")  # caCertificates trustDomains
    assert plan.rootca_all_bundles
    assert plan.app_federates_with == ("example.org",)
    assert plan.federated_template is not None  # the sessions import the mesh CA from it
    assert plan.mesh.principals is None  # no ALLOW policy: in-mesh callers keep working
    assert plan.mesh.federates_with == ("apps.example.org",)
    (inventory,) = plan.others
    assert inventory.spiffe_id == "spiffe://example.org/ns/default/sa/inventory"
    assert inventory.federates_with == ()
    assert inventory.principals is None
    # DENY: the apps' whole trust domain, except httpbin's declared callers (enforced as RBAC and_ids)
    assert plan.mesh.denied == ()
    assert plan.mesh.deny_rules == (
        SourceRule(
            ("apps.example.org/*",),
            ("apps.example.org/external/shielded-client", "apps.example.org/external/tunnel-client"),
        ),
    )
    assert inventory.denied == ()
    assert inventory.deny_rules == (SourceRule(("apps.example.org/*",)),)
    # the one-trust-domain spec registers no inventory: its pods are left out
    one_td = build_plan(
        render(load_spec(EXAMPLE_DIR / "bridge.yaml")),
        load_pod(EXAMPLE_DIR / "httpbin.yaml"),
        [load_pod(EXAMPLE_DIR / "inventory.yaml")],
    )
    assert one_td.others == ()
    assert one_td.federated_template is None
