"""The spec loader: the example loads into the expected model; bad input gives whole, pinned messages."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bridge.errors import BridgeError, SpecError
from bridge.model import Bridge, Federation
from bridge.spec import load_spec, parse_document
from tests.bridge.strategies import EXAMPLE

BASE: dict[str, object] = yaml.safe_load(EXAMPLE.read_text())


def _load_mutated(mutate: Callable[[dict[str, object]], None]) -> list[str]:
    doc = copy.deepcopy(BASE)
    mutate(doc)
    with pytest.raises(SpecError) as info:
        load_spec(yaml.safe_dump(doc))
    assert isinstance(info.value, BridgeError)
    return info.value.problems


def _set(*path: object, value: object) -> Callable[[dict[str, object]], None]:
    def mutate(doc: dict[str, object]) -> None:
        node: object = doc
        for part in path[:-1]:
            node = node[part]  # type: ignore[index]
        node[path[-1]] = value  # type: ignore[index]

    return mutate


def _delete(*path: object) -> Callable[[dict[str, object]], None]:
    def mutate(doc: dict[str, object]) -> None:
        node: object = doc
        for part in path[:-1]:
            node = node[part]  # type: ignore[index]
        del node[path[-1]]  # type: ignore[attr-defined]

    return mutate


def test_example_loads_into_the_model() -> None:
    bridge = load_spec(EXAMPLE)
    assert isinstance(bridge, Bridge)
    assert bridge.trust_domain == "example.org"
    (httpbin,) = bridge.services
    assert httpbin.spiffe_id == "spiffe://example.org/ns/default/sa/httpbin"
    assert httpbin.dns_names == ("httpbin.default.svc.cluster.local", "httpbin.default.svc")
    assert httpbin.labels == (("app", "httpbin"),)
    shield, tunnel = bridge.apps
    assert (shield.mode, shield.spiffe_id, shield.server_auth) == (
        "network-shield",
        "spiffe://example.org/external/shielded-client",
        True,
    )
    assert tunnel.spiffe_id == "spiffe://example.org/external/tunnel-client"
    assert tunnel.ghostunnel is not None
    assert tunnel.ghostunnel.cert_source == "files"
    assert tunnel.targets[0].listen_port == 8000
    assert shield.scone.qualified_session_name == "meshbridge/shielded-client"
    assert bridge.spire.svidstore_plugin == "sconecas_sessionmanager"
    assert bridge.needs_dns_names(httpbin)
    # text, Path and a one-line path string give the same model
    assert load_spec(EXAMPLE.read_text()) == bridge == load_spec(str(EXAMPLE))


def test_model_is_frozen() -> None:
    bridge = load_spec(EXAMPLE)
    with pytest.raises(AttributeError):
        bridge.trust_domain = "other.org"  # type: ignore[misc]


CASES: list[tuple[str, Callable[[dict[str, object]], None], list[str]]] = [
    (
        "unknown target, with a suggestion",
        _set("externalApps", 1, "targets", value=["httpbinn"]),
        ["externalApps[1].targets[0]: no mesh service 'httpbinn' (did you mean 'httpbin'?)"],
    ),
    (
        "unknown key, with a suggestion",
        _set("meshServices", 0, "nmae", value="x"),
        ["meshServices[0].nmae: unknown key (did you mean 'name'?)"],
    ),
    (
        "port out of range",
        _set("meshServices", 0, "port", value=70000),
        ["meshServices[0].port: 70000: port must be between 1 and 65535"],
    ),
    (
        "port as a string",
        _set("meshServices", 0, "port", value="8000"),
        ["meshServices[0].port: '8000': must be an integer"],
    ),
    (
        "invalid service is reported once (no knock-on errors in the targets naming it)",
        _set("meshServices", 0, "namespace", value="Default"),
        [
            "meshServices[0].namespace: 'Default': must be a DNS-1123 label: lowercase letters, digits and "
            "'-', starting and ending with a letter or digit",
        ],
    ),
    (
        "toleration outside the allowed set",
        _set("externalApps", 0, "scone", "tolerations", value=["debug_mode"]),
        [
            "externalApps[0].scone.tolerations[0]: 'debug_mode': must be one of debug-mode, hyperthreading, "
            "outdated-tcb, insecure-igpu, software-hardening-needed, insecure-configuration "
            "(did you mean 'debug-mode'?)"
        ],
    ),
    (
        "SPIFFE ID in another trust domain",
        _set("externalApps", 0, "spiffeId", value="spiffe://other.org/x"),
        ["externalApps[0].spiffeId: 'spiffe://other.org/x': must be in the trust domain 'example.org'"],
    ),
    (
        "SPIFFE ID breaking the standard",
        _set("externalApps", 0, "spiffeId", value="spiffe://example.org//x"),
        ["externalApps[0].spiffeId: 'spiffe://example.org//x': path cannot contain empty segments ('//')"],
    ),
    (
        "duration",
        _set("externalApps", 1, "ghostunnel", "timedReload", value="5 min"),
        [
            "externalApps[1].ghostunnel.timedReload: '5 min': must be a duration like '30s', '5m' or '1h30m' "
            "(units ns, us, ms, s, m, h)"
        ],
    ),
    (
        "listen port clashing with the status port",
        _set("externalApps", 1, "ghostunnel", "statusPort", value=8000),
        [
            "externalApps[1].targets[0].listenPort: 8000: port already used by "
            "externalApps[1].ghostunnel.statusPort (set a distinct listenPort)"
        ],
    ),
    (
        "mode",
        _set("externalApps", 0, "mode", value="shield"),
        [
            "externalApps[0].mode: 'shield': must be one of 'network-shield', 'ghostunnel' "
            "(did you mean 'network-shield'?)"
        ],
    ),
    (
        "duplicate app names",
        _set("externalApps", 1, "name", value="shielded-client"),
        ["externalApps[1].name: 'shielded-client': duplicates externalApps[0].name"],
    ),
    (
        "label value with '*'",
        _set("meshServices", 0, "labels", "app", value="a*"),
        [
            "meshServices[0].labels.app: 'a*': label value must be empty or at most 63 characters of "
            "letters, "
            "digits, '-', '_' and '.', starting and ending with a letter or digit"
        ],
    ),
    (
        "CAS connection without https",
        _set("spire", "casConnection", value="cas:8081"),
        [
            "spire.casConnection: 'cas:8081': must be the https:// URL of CAS, e.g. 'https://cas.example.org:8081'"
        ],
    ),
    (
        "MRENCLAVE",
        _set("externalApps", 0, "scone", "mrenclaves", value=["abc"]),
        [
            "externalApps[0].scone.mrenclaves[0]: 'abc': MRENCLAVE must be 64 hexadecimal digits "
            "(SHA-256 of the enclave)"
        ],
    ),
    (
        "missing command in network-shield mode",
        _delete("externalApps", 0, "scone", "command"),
        ["externalApps[0].scone.command: required"],
    ),
    (
        "command in ghostunnel mode",
        _set("externalApps", 1, "scone", "command", value="python3 app.py"),
        [
            "externalApps[1].scone.command: not used in mode 'ghostunnel': the session runs Ghostunnel "
            "(set ghostunnel.binary to its path in the image)"
        ],
    ),
    (
        "serverAuth on a Ghostunnel app",
        _set("externalApps", 1, "serverAuth", value=False),
        [
            "externalApps[1].serverAuth: only for mode 'network-shield' "
            "(Ghostunnel always verifies --verify-uri)"
        ],
    ),
    (
        "same CAS session twice",
        _set("externalApps", 1, "scone", "sessionName", value="shielded-client"),
        [
            "externalApps[1].scone.sessionName: 'shielded-client': CAS session 'meshbridge/shielded-client' "
            "already used by externalApps[0].scone.sessionName"
        ],
    ),
    (
        "app SPIFFE ID equal to a mesh service's",
        _set("externalApps", 0, "spiffeId", value="spiffe://example.org/ns/default/sa/httpbin"),
        [
            "externalApps[0].spiffeId: 'spiffe://example.org/ns/default/sa/httpbin': SPIFFE ID already used "
            "by meshServices[0]"
        ],
    ),
    (
        "several problems at once, in document order",
        lambda d: (
            _set("kind", value="Bridg")(d),
            _set("trustDomain", value="Example.org")(d),
            _delete("spire", "parentId")(d),
        ),
        [
            "kind: 'Bridg': must be 'Bridge'",
            "trustDomain: 'Example.org': trust domain characters are limited to lowercase letters, digits, "
            "'.', '-' and '_' (found 'E')",
            "externalApps[0].parentId: required (or set spire.parentId): the SPIRE agent that stores the "
            "SVID",
            "externalApps[1].parentId: required (or set spire.parentId): the SPIRE agent that stores the "
            "SVID",
        ],
    ),
]


@pytest.mark.parametrize(("case", "mutate", "expected"), CASES, ids=[c[0] for c in CASES])
def test_error_messages(case: str, mutate: Callable[[dict[str, object]], None], expected: list[str]) -> None:
    assert _load_mutated(mutate) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1", "<spec>:2:1: invalid YAML: did not find expected ',' or ']'"),
        ("a: 1\na: 2\n", "<spec>:2:1: invalid YAML: found duplicate key 'a'"),
        ("- 1\n---\n- 2\n", "<spec>: expected exactly one YAML document, found 2"),
        ("just text\n", "<document>: 'just text': must be a mapping"),
    ],
)
def test_yaml_level_errors(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(text)
    assert info.value.problems[0] == expected


def test_yaml_error_names_the_file(tmp_path: Path) -> None:
    spec = tmp_path / "bridge.yaml"
    spec.write_text("apiVersion: meshbridge.io/v1alpha1\nkind: [\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert info.value.problems[0].startswith(f"{spec}:3:1: invalid YAML: ")


def test_unreadable_file() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(Path("/nonexistent/bridge.yaml"))
    assert info.value.problems == [
        "/nonexistent/bridge.yaml: cannot read the spec: No such file or directory"
    ]


def test_defaults_are_filled_in() -> None:
    doc = copy.deepcopy(BASE)
    doc["mesh"] = None
    doc["meshServices"] = [{"name": "web", "port": 80}]
    doc["externalApps"] = [
        {
            "name": "c",
            "mode": "ghostunnel",
            "targets": ["web"],
            "scone": {"casNamespace": "n", "mrenclaves": ["a" * 64]},
        }
    ]
    bridge = parse_document(doc)
    (svc,) = bridge.services
    assert (svc.namespace, svc.service_account, svc.protocol, svc.labels) == (
        "default",
        "web",
        "http",
        (("app", "web"),),
    )
    assert bridge.mesh.istio_namespace == "istio-system"
    assert bridge.mesh.cluster_domain == "cluster.local"
    (app,) = bridge.apps
    assert app.ghostunnel is not None
    assert (app.ghostunnel.cert_source, app.ghostunnel.status_port, app.targets[0].listen_port) == (
        "files",
        6060,
        80,
    )
    assert app.spiffe_id == "spiffe://example.org/external/c"
    assert app.scone.qualified_session_name == "n/c"


def test_target_by_ambiguous_name() -> None:
    doc = copy.deepcopy(BASE)
    doc["meshServices"] = [
        {"name": "web", "port": 80, "namespace": "a"},
        {"name": "web", "port": 80, "namespace": "b"},
    ]
    doc["externalApps"] = [doc["externalApps"][0]]  # type: ignore[index]
    doc["externalApps"][0]["targets"] = ["web", "b/web"]  # type: ignore[index]
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    assert info.value.problems == [
        "externalApps[0].targets[0]: 'web': ambiguous mesh service name: write it as 'namespace/name' "
        "('a/web', 'b/web')"
    ]


def test_a_service_in_istios_root_namespace_is_refused() -> None:
    """A root-namespace AuthorizationPolicy applies to matching workloads in every namespace (Istio): the
    service's DENY would reach a same-labelled service elsewhere, e.g. the apps' own target (found by
    test_properties once check attached policies the way istiod does)."""
    doc = copy.deepcopy(BASE)
    doc["mesh"] = {"istioNamespace": "mesh-root"}
    doc["meshServices"] = [{"name": "web", "port": 80, "namespace": "mesh-root"}]
    doc["externalApps"] = [doc["externalApps"][0]]  # type: ignore[index]
    doc["externalApps"][0]["targets"] = ["web"]  # type: ignore[index]
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    assert info.value.problems == [
        "meshServices[0].namespace: 'mesh-root': Istio's root namespace (mesh.istioNamespace): its "
        "AuthorizationPolicies would apply to workloads with these labels in every namespace; give the "
        "service a namespace of its own"
    ]


def test_problem_count_is_bounded() -> None:
    with pytest.raises(SpecError) as info:
        parse_document({"meshServices": [1] * 300})
    assert len(info.value.problems) == 101
    assert info.value.problems[-1] == "<spec>: 205 more problems not shown"


def test_alias_bomb_gives_short_lines() -> None:
    levels = ["x0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 9):
        levels.append(f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "\n".join([*levels, "meshServices: *a8", "externalApps: [*a8]", ""])
    with pytest.raises(SpecError) as info:
        load_spec(text)
    assert max(len(p) for p in info.value.problems) < 300
    bomb = "meshServices[0]: [[[...], [...], [...], [...], ...], "
    assert any(p.startswith(bomb) for p in info.value.problems)


FEDERATED = EXAMPLE.with_name("bridge-federated.yaml")


def test_federated_example_loads() -> None:
    bridge = load_spec(FEDERATED)
    httpbin, inventory = bridge.services
    shield, tunnel = bridge.apps
    assert (shield.spiffe_id, tunnel.spiffe_id) == (
        "spiffe://apps.example.org/external/shielded-client",
        "spiffe://apps.example.org/external/tunnel-client",
    )
    assert bridge.federation == Federation(
        trust_domain="apps.example.org",
        bundle_endpoint_url="https://spire-bundle.apps.example.org:8443",
        profile="https_spiffe",
        endpoint_spiffe_id="spiffe://apps.example.org/spire/server",
    )
    assert bridge.federates_with(httpbin) == ("apps.example.org",)
    assert bridge.federates_with(inventory) == ()
    assert shield.parent_id == "spiffe://apps.example.org/spire/agent/x509pop/sgx-node-1"


FEDERATION_CASES: list[tuple[str, Callable[[dict[str, object]], None], list[str]]] = [
    (
        "federation with the mesh's own trust domain, over plain HTTP",
        _set("federation", value={"trustDomain": "example.org", "bundleEndpointURL": "http://b:8443"}),
        [
            "federation.trustDomain: 'example.org': must differ from the mesh's trustDomain (federation "
            "joins two trust domains)",
            "federation.bundleEndpointURL: 'http://b:8443': must be an https:// URL (SPIFFE bundle endpoints "
            "are served over TLS)",
        ],
    ),
    (
        "federation: endpoint SPIFFE ID with the https_web profile, no URL",
        _set(
            "federation",
            value={
                "trustDomain": "apps.example.org",
                "bundleEndpointProfile": "https_web",
                "endpointSpiffeId": "spiffe://apps.example.org/spire/server",
            },
        ),
        [
            "federation.bundleEndpointURL: required",
            "federation.endpointSpiffeId: only for bundleEndpointProfile 'https_spiffe'",
        ],
    ),
    (
        "agent of the mesh's trust domain as the apps' parent under federation",
        _set("spire", "parentId", value="spiffe://example.org/spire/agent/x"),
        [
            "spire.parentId: 'spiffe://example.org/spire/agent/x': must be in the bridge's trust domain "
            "'apps.example.org'",
            "externalApps[0].parentId: required (or set spire.parentId): the SPIRE agent that stores the "
            "SVID",
            "externalApps[1].parentId: required (or set spire.parentId): the SPIRE agent that stores the "
            "SVID",
        ],
    ),
    (
        "app in a third trust domain",
        _set("externalApps", 0, "spiffeId", value="spiffe://other.org/x"),
        [
            "externalApps[0].spiffeId: 'spiffe://other.org/x': must be in the trust domain "
            "'apps.example.org' or 'example.org'"
        ],
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "expected"), FEDERATION_CASES, ids=[c[0] for c in FEDERATION_CASES]
)
def test_federation_error_messages(
    case: str, mutate: Callable[[dict[str, object]], None], expected: list[str]
) -> None:
    doc = yaml.safe_load(FEDERATED.read_text())
    mutate(doc)
    with pytest.raises(SpecError) as info:
        parse_document(doc)
    assert info.value.problems == expected
