"""Mesh-wide STRICT mTLS and per-service ALLOW policies: strict-schema valid, exactly as Istio reads them."""

from __future__ import annotations

import pytest

from istio import (
    AuthorizationParams,
    IstioError,
    MeshService,
    labels,
    principal,
    render_authorization_policy,
    render_peer_authentication,
)
from tests.support.schemas import problems

HTTPBIN = MeshService("httpbin", "default", "httpbin", 8000, labels({"app": "httpbin", "version": "v1"}))


def test_peer_authentication_is_mesh_wide_strict() -> None:
    doc = render_peer_authentication()
    assert problems(doc) == []
    assert doc == {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    assert render_peer_authentication("mesh-root")["metadata"] == {
        "name": "default",
        "namespace": "mesh-root",
    }


def test_peer_authentication_rejects_a_bad_namespace() -> None:
    with pytest.raises(IstioError, match=r"root_namespace: 'Istio-System': a DNS-1123 label"):
        render_peer_authentication("Istio-System")


def test_authorization_policy_admits_the_external_ids_as_principals() -> None:
    params = AuthorizationParams(
        HTTPBIN,
        (
            "spiffe://example.org/external/app-a",
            "spiffe://example.org/external/app-b",
            "spiffe://example.org/external/app-a",
        ),
    )
    doc = render_authorization_policy(params)
    assert problems(doc) == []
    assert doc == {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "httpbin-meshbridge", "namespace": "default"},
        "spec": {
            "action": "ALLOW",
            "selector": {"matchLabels": {"app": "httpbin", "version": "v1"}},
            "rules": [
                {
                    "from": [
                        {
                            "source": {
                                "principals": [
                                    "example.org/external/app-a",
                                    "example.org/external/app-b",
                                ]
                            }
                        }
                    ]
                }
            ],
        },
    }


def test_in_mesh_callers_get_their_own_rule() -> None:
    params = AuthorizationParams(
        HTTPBIN,
        ("spiffe://example.org/external/app",),
        mesh_principals=("spiffe://example.org/ns/default/sa/sleep",),
        mesh_namespaces=("frontend", "frontend"),
        name="httpbin-callers",
    )
    doc = render_authorization_policy(params)
    assert problems(doc) == []
    assert doc["metadata"]["name"] == "httpbin-callers"  # type: ignore[index]
    # principals and namespaces in separate rules: OR-ed (inside one source they would be AND-ed)
    assert doc["spec"]["rules"] == [  # type: ignore[index]
        {
            "from": [
                {"source": {"principals": ["example.org/external/app", "example.org/ns/default/sa/sleep"]}}
            ]
        },
        {"from": [{"source": {"namespaces": ["frontend"]}}]},
    ]


def test_principal_strips_only_the_scheme() -> None:
    assert principal("spiffe://td.example/ns/a/sa/b") == "td.example/ns/a/sa/b"
    with pytest.raises(IstioError, match=r"spiffe_id: 'td.example/x': a SPIFFE ID"):
        principal("td.example/x")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            AuthorizationParams(MeshService("a", "b", "c", 80, ()), ("spiffe://e.org/x",)),
            "service.pod_labels: (): at least one label",
        ),
        (
            AuthorizationParams(MeshService("a", "b", "c", 80, (("app", "*"),)), ("spiffe://e.org/x",)),
            "service.pod_labels['app']: '*': a label value",
        ),
        (AuthorizationParams(HTTPBIN, ()), "allowed_spiffe_ids: (): at least one external SPIFFE ID"),
        (
            AuthorizationParams(HTTPBIN, ("http://e.org/x",)),
            "allowed_spiffe_ids[0]: 'http://e.org/x': a SPIFFE ID",
        ),
        (
            AuthorizationParams(HTTPBIN, ("spiffe://e.org/x",), mesh_namespaces=("Bad",)),
            "mesh_namespaces[0]: 'Bad': a DNS-1123 label",
        ),
    ],
)
def test_policy_errors_name_field_value_and_rule(params: AuthorizationParams, message: str) -> None:
    with pytest.raises(IstioError) as excinfo:
        render_authorization_policy(params)
    assert message in str(excinfo.value)


def test_strict_validator_rejects_what_the_api_server_would() -> None:
    # negative controls for tests/support/schemas.py: an unknown field and a bad enum both fail
    doc = render_peer_authentication()
    doc["spec"] = {"mtls": {"mood": "STRICT"}}
    assert any("mood" in p for p in problems(doc))
    assert problems(doc, strict_mode=False) == []  # plain JSON Schema would let the typo through
    doc["spec"] = {"mtls": {"mode": "STRICTEST"}}
    assert problems(doc, strict_mode=False) != []
