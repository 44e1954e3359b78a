"""``bridge.check``: each cross-artifact rule fires on a rendering that breaks it, and only then."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml

from bridge import render as layout
from bridge.check import check, consistency_problems
from bridge.model import Bridge
from bridge.render import render
from bridge.rendering import Document, Rendering
from bridge.spec import load_spec, parse_document
from tests.bridge.strategies import EXAMPLE

BRIDGE = load_spec(EXAMPLE)


def _tampered(edit: Callable[[dict[str, Document]], None]) -> Rendering:
    docs = {p: copy.deepcopy(d) for p, d in render(BRIDGE).items()}
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
                "externalApps[0] (shielded-client): 'httpbin.default.svc.cluster.local': authenticated by "
                "DNS name "
                "but no ClusterSPIFFEID of default/httpbin puts it in the SVID (dnsNameTemplates): the "
                "handshake "
                "would fail",
                "externalApps[1] (tunnel-client): 'httpbin.default.svc.cluster.local': authenticated by DNS "
                "name "
                "but no ClusterSPIFFEID of default/httpbin puts it in the SVID (dnsNameTemplates): the "
                "handshake "
                "would fail",
            ],
        ),
        (
            _drop_principal,
            [
                "externalApps[1] (tunnel-client): 'example.org/external/tunnel-client': no "
                "AuthorizationPolicy "
                "selecting default/httpbin admits it (STRICT mTLS would pass, the request would get 403)"
            ],
        ),
        (
            _other_selector,
            [
                "externalApps[0] (shielded-client): 'example.org/external/shielded-client': no "
                "AuthorizationPolicy "
                "selecting default/httpbin admits it (STRICT mTLS would pass, the request would get 403)",
                "externalApps[1] (tunnel-client): 'example.org/external/tunnel-client': no "
                "AuthorizationPolicy "
                "selecting default/httpbin admits it (STRICT mTLS would pass, the request would get 403)",
            ],
        ),
        (
            _wrong_verify_uri,
            [
                "externalApps[1] (tunnel-client): --verify-uri=spiffe://example.org/ns/default/sa/default "
                "is not "
                "default/httpbin's SPIFFE ID 'spiffe://example.org/ns/default/sa/httpbin'"
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
    assert consistency_problems(BRIDGE, _tampered(edit)) == expected


def _bridge(mutate: Callable[[dict[str, object]], None]) -> Bridge:
    raw = yaml.safe_load(EXAMPLE.read_text())
    mutate(raw)
    return parse_document(raw)


def test_example_checks_clean() -> None:
    report = check(BRIDGE)
    assert report.problems == ()
    assert report.warnings == ()
    assert report.documents == 13


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
    assert report.problems == ()
    assert report.warnings == (
        "meshServices (default/httpbin): labels {'app': 'httpbin'} also select the pods of "
        "default/httpbin-admin: "
        "its AuthorizationPolicy admits default/httpbin's callers to default/httpbin-admin too",
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
        "cannot "
        "tell them apart",
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
