"""The network-shield CAS session: strict-schema valid, server authentication on by default, imports that
match the SVIDStore sessions, warnings as data."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from scone import (
    Attestation,
    MeshTarget,
    NetworkShieldApp,
    SconeError,
    SvidStoreSessions,
    render_network_shield_session,
    render_svid_session_template,
)
from tests.support.schemas import scone_problems

MRENCLAVE = "5f0e5a3c2b1d4e6f8a9b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f7"
HTTPBIN = MeshTarget("httpbin", "default", 8000, "spiffe://example.org/ns/default/sa/httpbin")
ORDERS = MeshTarget(
    "orders", "shop", 9090, "spiffe://example.org/ns/shop/sa/orders", destination_ip="10.96.0.12"
)
APP = NetworkShieldApp(
    session_name="apps/client",
    service_name="client",
    command="python3 /app/client.py",
    mrenclaves=(MRENCLAVE,),
    targets=(HTTPBIN, ORDERS),
    pwd="/app",
    environment=(("LOG_LEVEL", "info"),),
)
INJECTION = re.compile(r"\$\$SCONE::([A-Za-z0-9_-]+):([a-z0-9:]+)\$\$")


def test_session_is_valid_and_authenticates_the_server_by_default() -> None:
    rendered = render_network_shield_session(APP)
    session = rendered.session
    assert scone_problems(session) == []
    assert rendered.warnings == ()
    assert session["name"] == "apps/client"
    (service,) = session["services"]  # type: ignore[misc]
    assert service["mrenclaves"] == [MRENCLAVE]
    assert service["command"] == "python3 /app/client.py"
    assert service["pwd"] == "/app"
    env = service["environment"]
    assert env["LOG_LEVEL"] == "info"
    assert env["SCONE_NETWORK_SHIELD"] == "protected"
    assert env["SCONE_NETWORK_SHIELD_UNSUPPORTED_PROTOCOLS"] == "unprotected"  # DNS over UDP keeps working
    for n, target in ((1, HTTPBIN), (2, ORDERS)):
        c = f"SCONE_NETWORK_SHIELD_CLIENT_{n}"
        assert env[c] == "protected"
        assert (
            env[f"{c}_DESTINATION"] == f"TCP:{target.name}.{target.namespace}.svc.cluster.local:{target.port}"
        )
        assert env[f"{c}_DESTINATION_IP"] == target.destination_ip
        assert env[f"{c}_IDENTITY"] == (
            "$$SCONE::svid:privatekey:pkcs8:pem$$\n$$SCONE::svid:crt$$\n$$SCONE::svid:chain$$"
        )
        assert env[f"{c}_SERVER_AUTH"] == "$$SCONE::spire-ca:crt$$"
    assert session["secrets"] == [
        {"name": "svid", "import": {"session": "spire-svid-apps/client", "secret": "svid"}},
        {"name": "spire-ca", "import": {"session": "spire-ca", "secret": "spire-ca"}},
    ]
    assert "security" not in session


def test_every_injected_secret_is_declared() -> None:
    session = render_network_shield_session(APP).session
    declared = {s["name"] for s in session["secrets"]}  # type: ignore[attr-defined]
    env = session["services"][0]["environment"]  # type: ignore[index]
    injected = [m for v in env.values() for m in INJECTION.finditer(v)]
    assert {m.group(1) for m in injected} == declared == {"svid", "spire-ca"}
    assert {m.group(2) for m in injected} == {"privatekey:pkcs8:pem", "crt", "chain"}


def test_import_matches_the_name_the_svidstore_template_gives_the_svid_session() -> None:
    sessions = SvidStoreSessions(svid_session_prefix="svids/", bundle_session="spire/ca")
    session = render_network_shield_session(replace(APP, svidstore=sessions)).session
    template_name = render_svid_session_template(sessions).splitlines()[0].removeprefix("name: ")
    expected = template_name.replace("<\\session-name-selector>", "apps/client")
    assert session["secrets"][0]["import"]["session"] == expected == "svids/apps/client"  # type: ignore[index]
    assert session["secrets"][1]["import"]["session"] == "spire/ca"  # type: ignore[index]


def test_server_auth_off_is_explicit_and_warned() -> None:
    rendered = render_network_shield_session(replace(APP, server_auth=False, shield_mode="unprotected"))
    assert scone_problems(rendered.session) == []
    env = rendered.session["services"][0]["environment"]  # type: ignore[index]
    assert env["SCONE_NETWORK_SHIELD"] == "unprotected"
    assert env["SCONE_NETWORK_SHIELD_CLIENT_1_SERVER_AUTH"] == "disabled"
    assert [s["name"] for s in rendered.session["secrets"]] == ["svid"]  # type: ignore[attr-defined]
    (warning,) = rendered.warnings
    assert warning.path == "server_auth"
    assert "insecure" in warning.message


def test_tolerations_are_explicit_and_debug_mode_is_warned() -> None:
    app = replace(
        APP,
        attestation=Attestation(
            tolerate=("debug-mode", "hyperthreading", "outdated-tcb", "insecure-igpu"),
            ignore_advisories=("*",),
        ),
    )
    rendered = render_network_shield_session(app)
    assert scone_problems(rendered.session) == []
    assert rendered.session["security"] == {
        "attestation": {
            "tolerate": ["debug-mode", "hyperthreading", "outdated-tcb", "insecure-igpu"],
            "ignore_advisories": "*",
        }
    }
    assert sorted(w.path for w in rendered.warnings) == [
        "attestation.ignore_advisories",
        "attestation.tolerate",
    ]
    listed = render_network_shield_session(
        replace(
            APP, attestation=Attestation(tolerate=("outdated-tcb",), ignore_advisories=("INTEL-SA-00615",))
        )
    )
    assert listed.session["security"] == {
        "attestation": {"tolerate": ["outdated-tcb"], "ignore_advisories": ["INTEL-SA-00615"]}
    }
    assert listed.warnings == ()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (replace(APP, session_name="apps/client.v1"), "session_name: 'apps/client.v1': a CAS session name"),
        (replace(APP, mrenclaves=()), "mrenclaves: (): at least one MRENCLAVE"),
        (replace(APP, mrenclaves=("ABC",)), "mrenclaves[0]: 'ABC': 64 lowercase hex digits"),
        (replace(APP, targets=()), "targets: (): at least one mesh service"),
        (
            replace(APP, targets=(HTTPBIN, HTTPBIN)),
            "targets[1]: 'httpbin.default.svc.cluster.local:8000': same destination",
        ),
        (
            replace(APP, targets=(replace(HTTPBIN, destination_ip="10.0.0.300"),)),
            "targets[0].destination_ip: '10.0.0.300'",
        ),
        (replace(APP, targets=(replace(HTTPBIN, port=0),)), "targets[0].port: 0: a TCP port"),
        (
            replace(APP, environment=(("SCONE_NETWORK_SHIELD", "disabled"),)),
            "environment[0]: 'SCONE_NETWORK_SHIELD': SCONE_NETWORK_SHIELD* variables are generated",
        ),
        (replace(APP, environment=(("A", "1"), ("A", "2"))), "environment[1]: 'A': set twice"),
        (replace(APP, service_name="my client"), "service_name: 'my client': a service name"),
        (replace(APP, version="0.4"), "version: '0.4': a session language version"),
        (
            replace(APP, attestation=Attestation(ignore_advisories=("*", "INTEL-SA-00615"))),
            "attestation.ignore_advisories: ('*', 'INTEL-SA-00615'): '*' stands alone",
        ),
    ],
)
def test_errors_name_field_value_and_rule(app: NetworkShieldApp, message: str) -> None:
    with pytest.raises(SconeError) as excinfo:
        render_network_shield_session(app)
    assert message in str(excinfo.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(SconeError) as excinfo:
        render_network_shield_session(replace(APP, mrenclaves=("x",), pwd="app", targets=()))
    assert len(str(excinfo.value).splitlines()) == 3


def test_strict_session_validator_rejects_unknown_keys() -> None:
    # negative control for tests/support/schemas.py on the hand-written SCONE schema
    session = render_network_shield_session(APP).session
    session["services"][0]["enviroment"] = {}  # type: ignore[index]
    assert any("enviroment" in p for p in scone_problems(session))
