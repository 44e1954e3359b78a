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
from istio.spire import ISTIO_SPIFFE_ID_TEMPLATE
from tests.bridge.strategies import EXAMPLE

BRIDGE = load_spec(EXAMPLE)
H1, H2 = "1" * 64, "2" * 64


def test_public_surface() -> None:
    assert bridge.spec.__all__ == ["load_spec", "parse_document"]
    assert bridge.render.__all__ == [
        "AUTHORIZATION_POLICIES",
        "CLUSTER_FEDERATED_TRUST_DOMAINS",
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


def test_gateways_get_a_cluster_spiffe_id() -> None:
    """The overlay puts the ingress gateway on SPIRE (SDS container, CSI socket): without an entry its SDS
    server gets no SVID and the gateway never becomes Ready, so it needs its own ClusterSPIFFEID."""
    rendering = render(BRIDGE)
    crds = rendering.yaml_documents(layout.CLUSTER_SPIFFEIDS)
    name = "meshbridge-gateway-istio-system-istio-ingressgateway"
    (gateway,) = [c for c in crds if c["metadata"]["name"] == name]  # type: ignore[index]
    assert gateway["spec"] == {
        "spiffeIDTemplate": ISTIO_SPIFFE_ID_TEMPLATE,
        "podSelector": {"matchLabels": {"istio": "ingressgateway"}},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}},
        # the hardened chart's controller manager reconciles only its own class (watchClassless: false)
        "className": "spire-server-spire",
    }
    overlay = rendering.yaml_documents(layout.ISTIO_OPERATOR)[0]
    (ingress,) = overlay["spec"]["components"]["ingressGateways"]  # type: ignore[index]
    assert ingress["label"] == gateway["spec"]["podSelector"]["matchLabels"]  # type: ignore[index]
    no_gateways = dataclasses.replace(BRIDGE, mesh=dataclasses.replace(BRIDGE.mesh, gateways=()))
    assert [c["metadata"]["name"] for c in render(no_gateways).yaml_documents(layout.CLUSTER_SPIFFEIDS)] == [  # type: ignore[index]
        "meshbridge-default-httpbin"
    ]


def test_readme_names_the_config_id_of_every_app_service() -> None:
    """Operators start each enclave with SCONE_CONFIG_ID=<session>/<service>: the README gives it for
    every service of every app session (the Ghostunnel session has one service per tunnel)."""
    rendering = render(BRIDGE)
    readme = rendering.text(layout.README)
    for app in BRIDGE.apps:
        services = rendering.yaml_documents(layout.session_path(app.name))[0]["services"]
        assert isinstance(services, list)
        assert services
        for service in services:
            assert f"`SCONE_CONFIG_ID={app.scone.qualified_session_name}/{service['name']}`" in readme


def test_readme_says_which_cas_namespaces_must_exist() -> None:
    """A CAS session `<ns>/<name>` can only be created inside an existing namespace session `<ns>`
    (SCONE session language, "Namespaces"): the apps' sessions need `meshbridge`, the SVIDStore plugin
    posts `spire-svid-meshbridge/<app>` and `meshbridge/spire-bundle` with its own certificate."""
    readme = render(BRIDGE).text(layout.README)
    step5 = readme.split("## 5.", 1)[1].split("## 6.", 1)[0]
    assert "create `meshbridge`, `spire-svid-meshbridge` if missing" in step5
    assert "the namespace sessions `meshbridge`, `spire-svid-meshbridge` must let that certificate" in step5
    # the namespaces precede the first `scone session create`
    assert step5.index("must exist first") < step5.index("scone session create")


def test_federated_example_renders_least_privilege() -> None:
    """Issue 14 §1: apps in their own trust domain, trusted by their target only."""
    fed = load_spec(EXAMPLE.with_name("bridge-federated.yaml"))
    rendering = render(fed)
    crds = {c["metadata"]["name"]: c["spec"] for c in rendering.yaml_documents(layout.CLUSTER_SPIFFEIDS)}  # type: ignore[index]
    assert crds["meshbridge-default-httpbin"]["federatesWith"] == ["apps.example.org"]  # type: ignore[index]
    assert "federatesWith" not in crds["meshbridge-default-inventory"]  # type: ignore[operator]
    (cftd,) = rendering.yaml_documents(layout.CLUSTER_FEDERATED_TRUST_DOMAINS)
    assert cftd["spec"] == {
        "trustDomain": "apps.example.org",
        "bundleEndpointURL": "https://spire-bundle.apps.example.org:8443",
        "bundleEndpointProfile": {
            "type": "https_spiffe",
            "endpointSPIFFEID": "spiffe://apps.example.org/spire/server",
        },
        "className": "spire-server-spire",
    }
    overlay = rendering.yaml_documents(layout.ISTIO_OPERATOR)[0]
    assert overlay["spec"]["meshConfig"]["caCertificates"] == [{"trustDomains": ["apps.example.org"]}]  # type: ignore[index]
    assert (
        "- --rootca-all-bundles" in overlay["spec"]["values"]["sidecarInjectorWebhook"]["templates"]["spire"]
    )  # type: ignore[index]
    policies = rendering.yaml_documents(layout.AUTHORIZATION_POLICIES)
    assert [(p["metadata"]["name"], p["spec"]["action"]) for p in policies] == [  # type: ignore[index]
        ("httpbin-meshbridge-deny", "DENY"),
        ("inventory-meshbridge-deny", "DENY"),
    ]
    # every identity of the apps' trust domain is refused except a service's declared callers
    assert [p["spec"]["rules"] for p in policies] == [  # type: ignore[index]
        [
            {
                "from": [
                    {
                        "source": {
                            "principals": ["apps.example.org/*"],
                            "notPrincipals": [
                                "apps.example.org/external/shielded-client",
                                "apps.example.org/external/tunnel-client",
                            ],
                        }
                    }
                ]
            }
        ],
        [{"from": [{"source": {"principals": ["apps.example.org/*"]}}]}],
    ]
    script = rendering.text(layout.ENTRIES_SCRIPT)
    assert script.count("-federatesWith spiffe://example.org") == 2
    shield = rendering.yaml_documents(layout.session_path("shielded-client"))[0]
    env = shield["services"][0]["environment"]  # type: ignore[index]
    assert env["SCONE_NETWORK_SHIELD_CLIENT_1_SERVER_AUTH"] == "$$SCONE::spire-federated-bundles:crt$$"  # type: ignore[index]
    # the one-trust-domain example keeps ROOTCA as the mesh's bundle alone
    plain = render(BRIDGE).yaml_documents(layout.ISTIO_OPERATOR)[0]
    assert "rootca-all-bundles" not in str(plain)
    assert "caCertificates" not in plain["spec"]["meshConfig"]  # type: ignore[index]
