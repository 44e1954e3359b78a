"""Mesh-wide STRICT mTLS and per-service ALLOW policies: strict-schema valid, exactly as Istio reads them."""

from __future__ import annotations

import pytest

from istio import (
    AuthorizationParams,
    IstioError,
    MeshService,
    labels,
    principal,
    principal_matches,
    render_authorization_policy,
    render_external_deny_policy,
    render_peer_authentication,
    source_matches,
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


APPS = "spiffe://apps.example.org/external"


def test_external_deny_policy_refuses_the_apps_trust_domain_except_the_admitted() -> None:
    """Issue 14 §1: every identity of the apps' trust domain but the service's declared callers."""
    params = AuthorizationParams(HTTPBIN, (f"{APPS}/a", f"{APPS}/b", "spiffe://example.org/external/m"))
    doc = render_external_deny_policy(
        params, ("spiffe://example.org/external/other",), foreign_trust_domains=("apps.example.org",)
    )
    assert doc is not None
    assert problems(doc) == []
    assert doc["metadata"] == {"name": "httpbin-meshbridge-deny", "namespace": "default"}
    assert doc["spec"] == {
        "action": "DENY",
        "selector": {"matchLabels": {"app": "httpbin", "version": "v1"}},
        "rules": [
            {
                "from": [
                    {
                        "source": {
                            "principals": ["apps.example.org/*"],
                            # the mesh-td app is not an exception: the wildcard does not cover it
                            "notPrincipals": ["apps.example.org/external/a", "apps.example.org/external/b"],
                        }
                    },
                    {"source": {"principals": ["example.org/external/other"]}},
                ]
            }
        ],
    }
    # a service no app targets: the whole trust domain, no notPrincipals
    bare = render_external_deny_policy(
        AuthorizationParams(HTTPBIN, ()), (), foreign_trust_domains=("apps.example.org",)
    )
    assert bare is not None
    assert bare["spec"]["rules"] == [{"from": [{"source": {"principals": ["apps.example.org/*"]}}]}]  # type: ignore[index]
    assert render_external_deny_policy(AuthorizationParams(HTTPBIN, (f"{APPS}/a",)), ()) is None


@pytest.mark.parametrize("td", ["spiffe://apps.example.org", "apps.example.org/x", "*", "Apps.example.org"])
def test_external_deny_policy_rejects_a_bad_trust_domain(td: str) -> None:
    with pytest.raises(IstioError, match=r"foreign_trust_domains\[0\]"):
        render_external_deny_policy(AuthorizationParams(HTTPBIN, ()), (), foreign_trust_domains=(td,))


@pytest.mark.parametrize(
    ("pattern", "peer", "expected"),
    [
        ("apps.example.org/*", "apps.example.org/external/x", True),
        ("apps.example.org/*", "apps.example.org.evil/external/x", False),  # the '/' is part of the prefix
        ("apps.example.org/*", "example.org/ns/default/sa/sleep", False),
        ("*/sa/sleep", "example.org/ns/default/sa/sleep", True),
        ("*", "example.org/ns/default/sa/sleep", True),
        ("*", "", False),  # Istio: regex '.+'
        ("example.org/external/a", "example.org/external/a", True),
        ("example.org/external/a", "example.org/external/ab", False),
    ],
)
def test_principal_matches_as_istio_compiles_it(pattern: str, peer: str, expected: bool) -> None:
    assert principal_matches(pattern, peer) is expected


def test_source_matches_principals_and_not_principals() -> None:
    source = {"principals": ["apps.example.org/*"], "notPrincipals": ["apps.example.org/external/a"]}
    assert source_matches(source, "apps.example.org/external/b") is True
    assert source_matches(source, "apps.example.org/external/a") is False
    assert source_matches(source, "example.org/ns/default/sa/sleep") is False
    assert source_matches({"notPrincipals": ["x.org/a"]}, "y.org/b") is True  # notPrincipals alone
    assert source_matches({"namespaces": ["default"]}, "example.org/ns/default/sa/x") is None  # not modelled
