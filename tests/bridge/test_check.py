"""``bridge.check``: each cross-artifact rule fires on a rendering that breaks it, and only then."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bridge import render as layout
from bridge.check import check, consistency_problems
from bridge.model import Bridge
from bridge.render import render
from bridge.rendering import Document, Rendering
from bridge.spec import load_spec, parse_document
from tests.bridge.strategies import EXAMPLE

FEDERATED_EXAMPLE = EXAMPLE.with_name("bridge-federated.yaml")

BRIDGE = load_spec(EXAMPLE)
FEDERATED = load_spec(FEDERATED_EXAMPLE)


def _bridge(mutate: Callable[[dict[str, object]], None], example: Path = FEDERATED_EXAMPLE) -> Bridge:
    raw = yaml.safe_load(example.read_text())
    mutate(raw)
    return parse_document(raw)


def _tampered(rendering: Rendering, edit: Callable[[dict[str, Document]], None]) -> Rendering:
    docs = {p: copy.deepcopy(d) for p, d in rendering.items()}
    edit(docs)
    return Rendering(docs)


def _drop_dns(docs: dict[str, Document]) -> None:
    crds = [c for c in docs[layout.CLUSTER_SPIFFEIDS] if "dnsNameTemplates" in c["spec"]]  # type: ignore[index, operator, union-attr]
    assert crds
    for crd in crds:
        crd["spec"].pop("dnsNameTemplates")  # type: ignore[index, union-attr]


def _drop_principal(docs: dict[str, Document]) -> None:
    (policy,) = docs[layout.AUTHORIZATION_POLICIES]  # type: ignore[misc]
    principals = policy["spec"]["rules"][0]["from"][0]["source"]["principals"]  # type: ignore[index]
    principals.remove("example.org/external/tunnel-client")


def _other_selector(docs: dict[str, Document]) -> None:
    (policy,) = docs[layout.AUTHORIZATION_POLICIES]  # type: ignore[misc]
    policy["spec"]["selector"]["matchLabels"] = {"app": "other"}  # type: ignore[index]


def _wrong_verify_uri(docs: dict[str, Document]) -> None:
    path = layout.ghostunnel_command_path("tunnel-client")
    docs[path] = str(docs[path]).replace("sa/httpbin", "sa/default")


def _wrong_bundle_import(docs: dict[str, Document]) -> None:
    session = docs[layout.session_path("shielded-client")]
    session["secrets"][1]["import"]["session"] = "spire-ca"  # type: ignore[call-overload, index]


def _no_entry(docs: dict[str, Document]) -> None:
    docs[layout.ENTRIES_SCRIPT] = str(docs[layout.ENTRIES_SCRIPT]).replace("external/tunnel-client", "x")


def _status_port_clash(docs: dict[str, Document]) -> None:
    path = layout.ghostunnel_command_path("tunnel-client")
    docs[path] = str(docs[path]).replace("--status=127.0.0.1:6060", "--status=127.0.0.1:8000")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            _drop_dns,
            [
                f"externalApps[{i}] ({app}): 'httpbin.default.svc.cluster.local': authenticated by DNS name "
                "but no ClusterSPIFFEID of default/httpbin puts it in the SVID (dnsNameTemplates): the "
                "handshake would fail"
                for i, app in enumerate(("shielded-client", "tunnel-client"))
            ],
        ),
        (
            _drop_principal,
            [
                "externalApps[1] (tunnel-client): 'example.org/external/tunnel-client': no "
                "AuthorizationPolicy selecting default/httpbin admits it (STRICT mTLS would pass, the "
                "request would get 403)"
            ],
        ),
        (
            _other_selector,
            [
                f"externalApps[{i}] ({app}): 'example.org/external/{app}': no AuthorizationPolicy selecting "
                "default/httpbin admits it (STRICT mTLS would pass, the request would get 403)"
                for i, app in enumerate(("shielded-client", "tunnel-client"))
            ],
        ),
        (
            _wrong_verify_uri,
            [
                "externalApps[1] (tunnel-client): --verify-uri=spiffe://example.org/ns/default/sa/default "
                "is not default/httpbin's SPIFFE ID 'spiffe://example.org/ns/default/sa/httpbin'"
            ],
        ),
        (
            _wrong_bundle_import,
            [
                "externalApps[0] (shielded-client): imports the bundle from 'spire-ca'; the SVIDStore posts "
                "'meshbridge/spire-bundle'"
            ],
        ),
        (
            _no_entry,
            [
                "externalApps[1] (tunnel-client): spire/register-entries.sh registers no entry for "
                "'spiffe://example.org/external/tunnel-client'"
            ],
        ),
        (
            _status_port_clash,
            ["externalApps[1] (tunnel-client): port 8000 used twice (--status and --listen)"],
        ),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_each_rule_fires(edit: Callable[[dict[str, Document]], None], expected: list[str]) -> None:
    assert consistency_problems(BRIDGE, render(BRIDGE)) == []
    assert consistency_problems(BRIDGE, _tampered(render(BRIDGE), edit)) == expected


def test_example_checks_clean() -> None:
    report = check(FEDERATED)
    assert report.problems == ()
    assert report.warnings == ()
    assert report.documents == 14


def test_one_trust_domain_explains_the_exposure() -> None:
    report = check(BRIDGE)
    assert report.problems == ()
    assert report.warnings == (
        "externalApps[0] (shielded-client), externalApps[1] (tunnel-client): SPIFFE ID(s) in the mesh's "
        "trust domain 'example.org': every mesh workload trusts these SVIDs at the TLS handshake (STRICT "
        "mTLS checks the CA, not who it is); only AuthorizationPolicies keep them out, and meshbridge "
        "renders those for the meshServices of this spec alone: any other workload in the mesh without a "
        "policy naming them accepts their requests. Declare 'federation:' to give the apps their own trust "
        "domain, trusted only by their targets and refused by every other mesh service's DENY policy",
    )


def _no_federates_with(docs: dict[str, Document]) -> None:
    docs[layout.CLUSTER_SPIFFEIDS][0]["spec"].pop("federatesWith")  # type: ignore[index, union-attr]


def _non_target_federates(docs: dict[str, Document]) -> None:
    docs[layout.CLUSTER_SPIFFEIDS][1]["spec"]["federatesWith"] = ["apps.example.org"]  # type: ignore[index]


def _no_ca_certificates(docs: dict[str, Document]) -> None:
    docs[layout.ISTIO_OPERATOR]["spec"]["meshConfig"].pop("caCertificates")  # type: ignore[index, union-attr]


def _alias_instead(docs: dict[str, Document]) -> None:
    mesh_config = docs[layout.ISTIO_OPERATOR]["spec"]["meshConfig"]  # type: ignore[index]
    mesh_config.pop("caCertificates")  # type: ignore[union-attr]
    mesh_config["trustDomainAliases"] = ["apps.example.org"]  # type: ignore[index]


def _no_rootca_all_bundles(docs: dict[str, Document]) -> None:
    templates = docs[layout.ISTIO_OPERATOR]["spec"]["values"]["sidecarInjectorWebhook"]["templates"]  # type: ignore[index]
    templates["spire"] = re.sub(r"\n *- --rootca-all-bundles", "", templates["spire"])  # type: ignore[index]


def _no_federation_crd(docs: dict[str, Document]) -> None:
    del docs[layout.CLUSTER_FEDERATED_TRUST_DOMAINS]


def _entries_do_not_federate(docs: dict[str, Document]) -> None:
    docs[layout.ENTRIES_SCRIPT] = str(docs[layout.ENTRIES_SCRIPT]).replace(
        "-federatesWith spiffe://example.org", ""
    )


def _own_ca_import(docs: dict[str, Document]) -> None:
    secret = docs[layout.session_path("shielded-client")]["secrets"][1]  # type: ignore[call-overload, index]
    secret["name"] = secret["import"]["secret"] = "spire-ca"
    secret["import"]["session"] = "meshbridge/spire-bundle"


def _policy(docs: dict[str, Document], name: str) -> dict[str, object]:
    return next(p for p in docs[layout.AUTHORIZATION_POLICIES] if p["metadata"]["name"] == name)  # type: ignore[index, union-attr]


def _source(docs: dict[str, Document], name: str) -> dict[str, object]:
    return _policy(docs, name)["spec"]["rules"][0]["from"][0]["source"]  # type: ignore[index, no-any-return]


def _no_deny_at_target(docs: dict[str, Document]) -> None:
    """The shape before issue 14's fix: a target no DENY policy selects."""
    docs[layout.AUTHORIZATION_POLICIES].remove(_policy(docs, "httpbin-meshbridge-deny"))  # type: ignore[union-attr]


def _deny_names_declared_apps_only(docs: dict[str, Document]) -> None:
    """The shape before issue 14's fix: a DENY naming only the declared apps."""
    _source(docs, "inventory-meshbridge-deny")["principals"] = [
        "apps.example.org/external/shielded-client",
        "apps.example.org/external/tunnel-client",
    ]


def _deny_without_exceptions(docs: dict[str, Document]) -> None:
    del _source(docs, "httpbin-meshbridge-deny")["notPrincipals"]


def _deny_everyone_but_the_apps(docs: dict[str, Document]) -> None:
    _source(docs, "httpbin-meshbridge-deny")["principals"] = ["*"]


_UNDECLARED = (
    "'apps.example.org/external/meshbridge-check-undeclared', "
    "'apps.example.org/ns/default/sa/meshbridge-check-undeclared': identities of 'apps.example.org' that no "
    "app declares for it; every mesh service must refuse the apps' trust domain except its declared "
    "callers (a DENY policy with principals ['apps.example.org/*'] and notPrincipals = those callers)"
)
_FED = "federation (apps.example.org)"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            _no_federates_with,
            [
                "meshServices[0] (default/httpbin): no ClusterSPIFFEID selecting it federates with "
                "'apps.example.org': its ROOTCA would not hold the apps' bundle and the sidecar would refuse "
                "their handshakes"
            ],
        ),
        (
            _non_target_federates,
            [
                "meshServices[1] (default/inventory): its ClusterSPIFFEID federates with 'apps.example.org' "
                "although no app in that trust domain targets it: its sidecar would trust every SVID the "
                "apps' SPIRE issues"
            ],
        ),
        (
            _no_ca_certificates,
            [
                f"{_FED}: istio/istio-operator.yaml: meshConfig.caCertificates names no trustDomains "
                "'apps.example.org': Istio's inbound SAN check admits only spiffe://<mesh td>/ and would "
                "refuse every app"
            ],
        ),
        (_alias_instead, []),
        (
            _no_rootca_all_bundles,
            [
                f"{_FED}: istio/istio-operator.yaml: a meshbridge-sds container runs without "
                "--rootca-all-bundles: its ROOTCA would carry the mesh's bundle only, so no target trusts "
                "the apps"
            ],
        ),
        (
            _no_federation_crd,
            [
                f"{_FED}: no ClusterFederatedTrustDomain for 'apps.example.org' in "
                "spire/cluster-federated-trust-domains.yaml: the mesh's SPIRE would never fetch the apps' "
                "bundle"
            ],
        ),
        (
            _entries_do_not_federate,
            [
                f"externalApps[{i}] ({name}): its SPIRE entry does not federate with 'example.org': the "
                "SVIDStore plugin would post no mesh CA for its session"
                for i, name in enumerate(("shielded-client", "tunnel-client"))
            ],
        ),
        (
            _own_ca_import,
            [
                "externalApps[0] (shielded-client): authenticates mesh services with its own trust domain's "
                "CA ('meshbridge/spire-bundle', spire-ca); the mesh's CA reaches it in the federated-bundles "
                "session"
            ],
        ),
        (
            _no_deny_at_target,
            [f"meshServices[0] (default/httpbin): its AuthorizationPolicies admit {_UNDECLARED}"],
        ),
        (
            _deny_names_declared_apps_only,
            [f"meshServices[1] (default/inventory): its AuthorizationPolicies admit {_UNDECLARED}"],
        ),
        (
            _deny_without_exceptions,
            [
                f"externalApps[{i}] ({name}): 'apps.example.org/external/{name}': no AuthorizationPolicy "
                "selecting default/httpbin admits it (STRICT mTLS would pass, the request would get 403)"
                for i, name in enumerate(("shielded-client", "tunnel-client"))
            ],
        ),
        (
            _deny_everyone_but_the_apps,
            [
                "meshServices[0] (default/httpbin): its AuthorizationPolicies refuse in-mesh callers such as "
                "'example.org/ns/default/sa/meshbridge-check-undeclared' although the spec lists no "
                "meshCallers: applying them would cut the mesh off"
            ],
        ),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_each_federation_rule_fires(edit: Callable[[dict[str, Document]], None], expected: list[str]) -> None:
    """``_alias_instead`` passes the SAN check but is the wrong tool: aliases also widen AuthorizationPolicy
    principals (Istio ``trustdomain.Bundle.ReplaceTrustDomainAliases``); ``check`` accepts it as working."""
    assert consistency_problems(FEDERATED, render(FEDERATED)) == []
    assert consistency_problems(FEDERATED, _tampered(render(FEDERATED), edit)) == expected


def test_overlapping_selectors_warn() -> None:
    def add_service(raw: dict[str, object]) -> None:
        raw["meshServices"].append(  # type: ignore[attr-defined]
            {
                "name": "httpbin-admin",
                "namespace": "default",
                "port": 9000,
                "labels": {"app": "httpbin", "tier": "a"},
            }
        )

    report = check(_bridge(add_service))
    # httpbin's ClusterSPIFFEID selects httpbin-admin's pods too, and it federates with the apps' trust
    # domain: httpbin-admin would trust the apps although none targets it
    assert report.problems == (
        "meshServices[2] (default/httpbin-admin): its ClusterSPIFFEID federates with 'apps.example.org' "
        "although no app in that trust domain targets it: its sidecar would trust every SVID the apps' "
        "SPIRE issues",
    )
    assert report.warnings == (
        "meshServices (default/httpbin): labels {'app': 'httpbin'} also select the pods of "
        "default/httpbin-admin: its AuthorizationPolicy admits default/httpbin's callers to "
        "default/httpbin-admin too",
    )


def test_shared_service_account_warns() -> None:
    def add_service(raw: dict[str, object]) -> None:
        raw["meshServices"].append(  # type: ignore[attr-defined]
            {"name": "echo", "namespace": "default", "serviceAccount": "httpbin", "port": 9000}
        )

    report = check(_bridge(add_service))
    assert report.warnings == (
        "meshServices (default/httpbin, default/echo): share the SPIFFE ID "
        "'spiffe://example.org/ns/default/sa/httpbin' (same service account): Ghostunnel's --verify-uri "
        "cannot tell them apart",
    )


def test_security_warnings_come_through() -> None:
    def weaken(raw: dict[str, object]) -> None:
        app = raw["externalApps"][0]  # type: ignore[index]
        app["serverAuth"] = False
        app["scone"]["tolerations"] = ["debug-mode"]

    report = check(_bridge(weaken))
    assert report.problems == ()
    assert len(report.warnings) == 2
    assert report.warnings[0].startswith(
        "externalApps[0] (shielded-client): attestation.tolerate: 'debug-mode': "
    )
    assert report.warnings[1].startswith("externalApps[0] (shielded-client): server_auth: 'false': ")


def test_federation_denies_the_apps_trust_domain_next_to_an_allow_policy() -> None:
    """With meshCallers (an ALLOW policy with source.namespaces, which Istio matches as '/ns/<ns>/' in any
    trust domain) the DENY of the apps' trust domain still closes the door to undeclared identities."""

    def mesh_callers(raw: dict[str, object]) -> None:
        raw["meshServices"][0]["meshCallers"] = {"namespaces": ["default"]}  # type: ignore[index]

    fed = _bridge(mesh_callers)
    rendering = render(fed)
    assert [
        (p["metadata"]["name"], p["spec"]["action"])
        for p in rendering.yaml_documents(layout.AUTHORIZATION_POLICIES)
    ] == [  # type: ignore[index]
        ("httpbin-meshbridge", "ALLOW"),
        ("httpbin-meshbridge-deny", "DENY"),
        ("inventory-meshbridge-deny", "DENY"),
    ]
    assert consistency_problems(fed, rendering) == []
    # the ALLOW policy alone admits 'apps.example.org/ns/default/sa/…' through its namespaces rule
    assert consistency_problems(fed, _tampered(rendering, _no_deny_at_target)) == [
        "meshServices[0] (default/httpbin): its AuthorizationPolicies admit "
        "'apps.example.org/ns/default/sa/meshbridge-check-undeclared': identities of 'apps.example.org' that "
        "no app declares for it; every mesh service must refuse the apps' trust domain except its declared "
        "callers (a DENY policy with principals ['apps.example.org/*'] and notPrincipals = those callers)"
    ]


def test_one_trust_domain_names_the_services_open_to_undeclared_identities() -> None:
    def no_mesh_callers(raw: dict[str, object]) -> None:
        raw["meshServices"][0].pop("meshCallers")  # type: ignore[index]

    report = check(_bridge(no_mesh_callers, EXAMPLE))
    assert report.problems == ()
    (warning,) = report.warnings
    assert (
        "; and meshServices[0] (default/httpbin) (no meshCallers: DENY policies, which can name only the "
        "declared apps, not a whole trust domain the mesh itself uses) admit every other SVID issued in "
        "'example.org', e.g. an undeclared external app's. Declare 'federation:'"
    ) in warning


def _deny_apps(namespace: str, spec_extra: dict[str, object]) -> Callable[[dict[str, Document]], None]:
    """Add a DENY policy in ``namespace`` refusing every identity of the apps' trust domain."""

    def edit(docs: dict[str, Document]) -> None:
        deny = {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["apps.example.org/*"]}}]}]}
        docs[layout.AUTHORIZATION_POLICIES].append(  # type: ignore[union-attr]
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "deny-apps", "namespace": namespace},
                "spec": {**deny, **spec_extra},
            }
        )

    return edit


@pytest.mark.parametrize(
    ("namespace", "spec_extra", "refused"),
    [
        ("default", {}, True),  # no selector: every workload of its namespace (authorization.proto)
        ("default", {"selector": {"matchLabels": {}}}, True),  # an empty selector matches all too
        ("istio-system", {"selector": {"matchLabels": {"app": "httpbin"}}}, True),  # root: every namespace
        ("istio-system", {}, True),  # root namespace, no selector: the whole mesh
        ("prod", {}, False),  # another namespace's policy does not attach to httpbin's sidecar
        (
            "default",
            {"targetRefs": [{"kind": "Gateway", "group": "", "name": "gw"}]},
            False,
        ),  # not a sidecar's
    ],
)
def test_namespace_wide_and_root_namespace_policies_attach_as_istio_attaches_them(
    namespace: str, spec_extra: dict[str, object], refused: bool
) -> None:
    problems = consistency_problems(
        FEDERATED, _tampered(render(FEDERATED), _deny_apps(namespace, spec_extra))
    )
    httpbin = [p for p in problems if "no AuthorizationPolicy selecting default/httpbin admits it" in p]
    assert bool(httpbin) is refused, problems


def test_mesh_wide_strict_must_sit_in_istios_root_namespace() -> None:
    def moved(docs: dict[str, Document]) -> None:
        docs[layout.PEER_AUTHENTICATION]["metadata"]["namespace"] = "default"  # type: ignore[call-overload, index]

    assert consistency_problems(BRIDGE, _tampered(render(BRIDGE), moved)) == [
        f"{layout.PEER_AUTHENTICATION}: PeerAuthentication 'default' in namespace 'default': "
        "mesh-wide STRICT mTLS needs Istio's root namespace 'istio-system' (the IstioOperator's)"
    ]
    custom = _bridge(lambda raw: raw["mesh"].update(istioNamespace="mesh-root"))  # type: ignore[attr-defined]
    assert consistency_problems(custom, render(custom)) == []  # the overlay moves istiod there too

    def overlay_left_alone(docs: dict[str, Document]) -> None:
        docs[layout.ISTIO_OPERATOR]["spec"]["values"].pop("global")  # type: ignore[call-overload, index]

    assert [
        p.split(":")[0] for p in consistency_problems(custom, _tampered(render(custom), overlay_left_alone))
    ] == [layout.PEER_AUTHENTICATION]
