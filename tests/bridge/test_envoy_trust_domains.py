"""Issue 14 §1: the sidecar bootstrap reproduces Istio's inbound trust-domain check and its DENY policies.

Real embedded Workload APIs for two trust domains (the mesh's, federated with the apps'), our SDS server
with ``--rootca-all-bundles`` (so ``ROOTCA`` carries both bundles) and real Envoy. A client of the apps'
trust domain is refused at the TLS handshake when that trust domain is missing from the SAN check's list —
although ``ROOTCA`` trusts its CA — exactly where Istio would refuse it; admitted once listed; and a DENY
principal gets 403 while everyone else passes.
"""

from __future__ import annotations

import os
import ssl
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from bridge.envoy import EnvoyError, EnvoyProcess, SourceRule, sidecar_bootstrap
from sds_server.server import ServerConfig
from sds_server.snapshot import ResourceNames
from sds_server.testing import run_in_thread
from tests.sds_server.wl import Identity, fetch_identity, mesh_config
from tests.support.envoy import echo_backend, https_get, mtls_context
from tests.support.workload_api import running_workload_api

pytestmark = pytest.mark.usefixtures("envoy_bin")

APPS_TD = "apps.example.org"
APP_ID = f"spiffe://{APPS_TD}/external/app"
OTHER_APP_ID = f"spiffe://{APPS_TD}/external/other"
BOTH_TDS = ["example.org", APPS_TD]
_offline = partial(sidecar_bootstrap, sds_socket="/s", trust_domain="example.org", backend_port=1)
"""A bootstrap to read, never run."""


def _http_filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    listener = bootstrap["static_resources"]["listeners"][0]
    filters: list[dict[str, Any]] = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    return filters


def _serial(pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


def _ca_serials(envoy: EnvoyProcess) -> set[str]:
    """Serials of the CA certificates Envoy's listener trusts (admin ``/certs``)."""
    return {
        str(ca["serial_number"]).lower().lstrip("0")
        for entry in envoy.certs().get("certificates", [])
        for ca in entry.get("ca_cert", [])
    }


def _wait_ca_serials(envoy: EnvoyProcess, want: set[str], timeout: float = 15.0) -> set[str]:
    """``/certs`` can lag the listener going live by a moment: poll (bounded) until ``want`` shows."""
    deadline = time.monotonic() + timeout
    while not (seen := _ca_serials(envoy)) >= want and time.monotonic() < deadline:
        time.sleep(0.1)
    return seen


def test_trust_domain_rootca_trusts_but_the_san_list_omits_is_refused_and_deny_gives_403(
    tmp_path: Path, short_dir: Path
) -> None:
    uid = os.getuid()
    apps_cfg = {
        "trust_domain": APPS_TD,
        "svid_ttl": "1h",
        "entries": [
            {"spiffe_id": APP_ID, "selectors": [f"unix:uid:{uid}", "socket:app"]},
            {"spiffe_id": OTHER_APP_ID, "selectors": [f"unix:uid:{uid}", "socket:other"]},
        ],
    }
    with running_workload_api(apps_cfg, tmp_path / "apps", sockets=("app", "other")) as apps:
        app = fetch_identity(apps.address("app"))
        other = fetch_identity(apps.address("other"))
        bundle_file = tmp_path / "mesh" / "apps.pem"
        bundle_file.parent.mkdir(parents=True)
        bundle_file.write_bytes(app.bundle_pem)
        federated = mesh_config(federation={APPS_TD: str(bundle_file)})
        for entry in federated["entries"]:
            entry["federates_with"] = [APPS_TD]
        with (
            running_workload_api(federated, tmp_path / "mesh", sockets=("mesh", "ext")) as mesh,
            run_in_thread(
                ServerConfig(
                    listen=short_dir / "sds.sock",
                    workload_api=mesh.address("mesh"),
                    names=ResourceNames(rootca_all_bundles=True),
                )
            ) as sds,
            echo_backend() as backend,
        ):
            sds.wait_first_secret(20)
            mesh_bundle = fetch_identity(mesh.address("ext")).bundle_pem
            in_mesh = fetch_identity(mesh.address("ext"))

            def get(port: int, who: Identity) -> int:
                return https_get(port, mtls_context(mesh_bundle, who.chain_pem, who.key_pem)).status

            bootstrap = partial(
                sidecar_bootstrap,
                sds_socket=short_dir / "sds.sock",
                trust_domain="example.org",
                backend_port=backend.port,
            )
            # Istio's default list: only the mesh trust domain (no caCertificates trustDomains)
            with EnvoyProcess(bootstrap(), short_dir / "a") as envoy:
                want = {_serial(app.bundle_pem), _serial(mesh_bundle)}
                assert _wait_ca_serials(envoy, want) >= want  # ROOTCA: both
                port = envoy.listener_port("inbound")
                assert get(port, in_mesh) == 200
                before = envoy.stats("ssl.fail_verify_san")
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    get(port, app)  # its CA is trusted: refused by the SAN check alone
                after = envoy.stats("ssl.fail_verify_san")
                assert sum(after.values()) == sum(before.values()) + 1, (before, after)

            # the overlay's caCertificates[].trustDomains: admitted; a DENY principal gets 403 first
            listed = bootstrap(trust_domains=BOTH_TDS, denied_principals=[f"{APPS_TD}/external/other"])
            with EnvoyProcess(listed, short_dir / "b") as envoy:
                port = envoy.listener_port("inbound")
                assert get(port, app) == 200
                assert get(port, in_mesh) == 200  # a DENY policy leaves in-mesh callers alone
                assert get(port, other) == 403

            # the rendered DENY of the apps' trust domain: '<td>/*' except the declared caller (Istio's
            # and_ids [prefix spiffe://<td>/, not_id(or_ids exact)]): every other identity of it gets 403
            trust_domain_deny = bootstrap(
                trust_domains=BOTH_TDS,
                denied_sources=[SourceRule((f"{APPS_TD}/*",), (f"{APPS_TD}/external/app",))],
            )
            with EnvoyProcess(trust_domain_deny, short_dir / "d") as envoy:
                port = envoy.listener_port("inbound")
                before = sum(envoy.stats("rbac.denied").values())
                assert get(port, app) == 200
                assert get(port, in_mesh) == 200  # the mesh's trust domain is not matched
                assert get(port, other) == 403
                assert sum(envoy.stats("rbac.denied").values()) == before + 1

            # DENY before ALLOW: a principal in both is denied; ALLOW alone still turns others away
            both = bootstrap(
                trust_domains=BOTH_TDS,
                allowed_principals=[APP_ID, OTHER_APP_ID],
                denied_principals=[OTHER_APP_ID],
            )
            with EnvoyProcess(both, short_dir / "c") as envoy:
                port = envoy.listener_port("inbound")
                assert get(port, app) == 200
                assert get(port, other) == 403
                assert get(port, in_mesh) == 403


def test_san_matchers_follow_istio_trust_domain_list() -> None:
    b = _offline(trust_domains=[*BOTH_TDS, APPS_TD], denied_principals=[])
    listener = b["static_resources"]["listeners"][0]  # type: ignore[index]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]
    ctx = tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    assert ctx["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"prefix": "spiffe://example.org/"}},
        {"san_type": "URI", "matcher": {"prefix": f"spiffe://{APPS_TD}/"}},
    ]
    filters = _http_filters(b)
    assert [f["typed_config"]["rules"]["action"] for f in filters[:-1]] == ["DENY"]
    assert filters[0]["typed_config"]["rules"]["policies"] == {}  # a DENY naming nobody denies nobody


def test_trust_domain_list_errors() -> None:
    with pytest.raises(EnvoyError, match=r"trust_domains\[1\]: 'Apps\.org': not a trust domain"):
        _offline(trust_domains=["example.org", "Apps.org"])
    with pytest.raises(EnvoyError, match=r"trust_domains: \[\]"):
        _offline(trust_domains=[])
    with pytest.raises(EnvoyError, match="give one"):
        _offline(trust_domains=["example.org"], san_prefixes=[])
    with pytest.raises(EnvoyError, match=r"denied_principals\[0\]: 'x y'"):
        _offline(denied_principals=["x y"])


def test_deny_sources_compile_as_istio_does() -> None:
    """``pilot/pkg/security/authz/model``: a source's principals OR-ed, AND NOT its notPrincipals OR-ed;
    ``matcher.StringMatcherWithPrefix(v, "spiffe://")`` for each value."""
    b = _offline(
        denied_sources=[
            SourceRule((f"{APPS_TD}/*",), (f"{APPS_TD}/external/a", f"spiffe://{APPS_TD}/external/b")),
            SourceRule(("*/sa/sleep", "*")),
        ],
    )
    filters = _http_filters(b)
    assert [f["typed_config"]["rules"]["action"] for f in filters[:-1]] == ["DENY"]

    def or_ids(*matchers: dict[str, object]) -> dict[str, object]:
        return {"or_ids": {"ids": [{"authenticated": {"principal_name": m}} for m in matchers]}}

    assert filters[0]["typed_config"]["rules"]["policies"] == {
        "deny-sources": {
            "permissions": [{"any": True}],
            "principals": [
                {
                    "and_ids": {
                        "ids": [
                            or_ids({"prefix": f"spiffe://{APPS_TD}/"}),
                            {
                                "not_id": or_ids(
                                    {"exact": f"spiffe://{APPS_TD}/external/a"},
                                    {"exact": f"spiffe://{APPS_TD}/external/b"},
                                )
                            },
                        ]
                    }
                },
                {
                    "and_ids": {
                        "ids": [
                            or_ids(
                                {"safe_regex": {"regex": "spiffe://.*/sa/sleep"}},
                                {"safe_regex": {"regex": ".+"}},
                            )
                        ]
                    }
                },
            ],
        }
    }


@pytest.mark.parametrize("bad", ["a*b/x", "**", "apps.example.org/x/*/y", "Bad TD/*"])
def test_deny_source_values_follow_istio_wildcard_rules(bad: str) -> None:
    with pytest.raises(EnvoyError, match=r"denied_principals_sources\[0\]\.principals\[0\]"):
        _offline(denied_sources=[SourceRule((bad,))])
