"""The network-shield stand-in: session environment → real Envoy, checked against a real TLS server."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bridge.demo.errors import DemoError
from bridge.demo.setup import start_envoy
from bridge.demo.shield import SHIELD_ALPN, parse_shield_env, shield_bootstrap
from bridge.demo.supervisor import Supervisor
from tests.bridge.demo.tls_echo import TlsEcho
from tests.support.pki import MiniCa

HOST = "httpbin.default.svc.cluster.local"


def _env(ca: MiniCa, client_pem: str, key_pem: str, server_auth: str | None = None) -> dict[str, str]:
    return {
        "SCONE_NETWORK_SHIELD": "unprotected",
        "SCONE_NETWORK_SHIELD_CLIENT_1": "protected",
        "SCONE_NETWORK_SHIELD_CLIENT_1_DESTINATION": f"TCP:{HOST}:8000",
        "SCONE_NETWORK_SHIELD_CLIENT_1_DESTINATION_IP": "*",
        "SCONE_NETWORK_SHIELD_CLIENT_1_IDENTITY": key_pem + client_pem,
        "SCONE_NETWORK_SHIELD_CLIENT_1_SERVER_AUTH": server_auth
        if server_auth is not None
        else ca.roots_text,
    }


def _call(port: int) -> str:
    """What the server answered through the shield; "" when the shield refused to connect."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"ping")
        try:
            return s.recv(200).decode()
        except ConnectionResetError:
            return ""


@pytest.mark.parametrize(
    ("server_dns", "expect_ok"),
    [((HOST,), True), ((), False), (("other.default.svc.cluster.local",), False)],
    ids=["dns-name-in-svid", "uri-only-svid", "wrong-dns-name"],
)
def test_shield_checks_server_ca_and_destination_dns_name(
    envoy_bin: Path, server_dns: tuple[str, ...], expect_ok: bool
) -> None:
    ca = MiniCa.create()
    server = ca.issue("spiffe://example.org/ns/default/sa/httpbin", server_dns)
    client = ca.issue("spiffe://example.org/external/shield-app")
    clients = parse_shield_env(_env(ca, client.cert_text, client.key_text))
    with (
        TlsEcho(server.cert_text, server.key_text, ca.roots_text, alpn=[SHIELD_ALPN]) as echo,
        Supervisor() as sup,
    ):
        envoy = start_envoy(
            sup,
            envoy_bin,
            "shield",
            shield_bootstrap(clients, {(HOST, 8000): ("127.0.0.1", echo.port)}, node_id="shield"),
        )
        reply = _call(envoy.listeners["shield-1"])
    if expect_ok:
        assert reply == f"serial={client.serial} alpn={SHIELD_ALPN}\n"
    else:
        assert reply == ""


def test_shield_refuses_a_server_from_another_ca(envoy_bin: Path) -> None:
    ca, foreign = MiniCa.create(), MiniCa.create("foreign")
    server = foreign.issue("spiffe://example.org/ns/default/sa/httpbin", (HOST,))
    client = ca.issue("spiffe://example.org/external/shield-app")
    clients = parse_shield_env(_env(ca, client.cert_text, client.key_text))
    with TlsEcho(server.cert_text, server.key_text, ca.roots_text) as echo, Supervisor() as sup:
        envoy = start_envoy(
            sup,
            envoy_bin,
            "shield",
            shield_bootstrap(clients, {(HOST, 8000): ("127.0.0.1", echo.port)}, node_id="shield"),
        )
        assert _call(envoy.listeners["shield-1"]) == ""


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("SCONE_NETWORK_SHIELD", "disabled", "must be 'unprotected' or 'protected'"),
        ("SCONE_NETWORK_SHIELD_CLIENT_1_DESTINATION", "httpbin:8000", "must be 'TCP:<dns name>:<port>'"),
        ("SCONE_NETWORK_SHIELD_CLIENT_1_DESTINATION_IP", "", "required for IP sockets"),
        ("SCONE_NETWORK_SHIELD_CLIENT_1_IDENTITY", "$$SCONE::svid:crt$$", "found 0 PKCS#8 key"),
        ("SCONE_NETWORK_SHIELD_CLIENT_1_SERVER_AUTH", "", "must be 'disabled' or a PEM list"),
    ],
)
def test_wrong_session_environment_is_an_error(var: str, value: str, message: str) -> None:
    ca = MiniCa.create()
    client = ca.issue("spiffe://example.org/external/shield-app")
    env = _env(ca, client.cert_text, client.key_text)
    env[var] = value
    with pytest.raises(DemoError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_shield_env(env)


def test_server_auth_must_list_ca_certificates() -> None:
    ca = MiniCa.create()
    client = ca.issue("spiffe://example.org/external/shield-app")
    with pytest.raises(DemoError, match="not a CA certificate"):
        parse_shield_env(_env(ca, client.cert_text, client.key_text, server_auth=client.cert_text))


def test_identity_key_must_match_certificate() -> None:
    ca = MiniCa.create()
    a, b = ca.issue("spiffe://example.org/a"), ca.issue("spiffe://example.org/b")
    with pytest.raises(DemoError, match="does not match"):
        parse_shield_env(_env(ca, a.cert_text, b.key_text))
