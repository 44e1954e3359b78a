"""The network-shield stand-in: an Envoy client proxy configured *only* from a rendered CAS session.

SCONE's network shield needs SGX, so real Envoy plays it. Everything it does comes from the app
session's environment, read the way the shield reads it (SCONE docs, "Network Shield"; notes in
``docs/scone.md``):

- ``SCONE_NETWORK_SHIELD`` must be ``unprotected`` or ``protected``; every
  ``SCONE_NETWORK_SHIELD_CLIENT_<n> = protected`` becomes one local plain listener (the app's socket)
  proxied over TLS;
- ``…_DESTINATION`` ``TCP:<dns name>:<port>`` gives the host name and port the app dials; on one machine
  the demo maps that address to the sidecar's loopback port (the only change one machine forces), while
  the host name is still sent as SNI and **checked in the server certificate's DNS SANs**, as the shield
  does with server authentication on; ``…_DESTINATION_IP`` is required for IP sockets;
- ``…_IDENTITY`` (after CAS injection): PEM PKCS#8 key + end-entity certificate (+ chain) → the client
  certificate;
- ``…_SERVER_AUTH``: a PEM list of acceptable server **CA** certificates (each must be a CA), or
  ``disabled`` (insecure: then no verification at all, like the shield);
- the shield negotiates ALPN for its own port-misdirection protection, so the stand-in offers an ALPN
  value of its own (``SHIELD_ALPN``): a sidecar that required Istio's ALPN would refuse it.

Pure functions from the (already injected) environment to an Envoy bootstrap dict; a malformed session
raises ``DemoError`` naming the variable, so a wrong session fails the demo.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.demo.errors import DemoError
from bridge.envoy.bootstrap import static_cluster, tcp_proxy_listener, tls_socket
from sds_server.x509svid import key_matches_certificate

PREFIX = "SCONE_NETWORK_SHIELD"
SHIELD_ALPN = "scone-shield-standin"
"""Stand-in's own ALPN value: the real shield's value is internal to SCONE; any non-Istio value proves
the sidecar does not require Istio's ALPN (``istio-peer-exchange``/``istio``)."""

_CLIENT_VAR = re.compile(rf"^{PREFIX}_CLIENT_([A-Za-z0-9_]+)$")
_SUFFIXES = ("DESTINATION_IP", "DESTINATION", "SERVER_DNS_NAME", "IDENTITY", "SERVER_AUTH")
"""Settings of a client (``…_CLIENT_<n>_<suffix>``), not clients themselves."""
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\n?", re.DOTALL)
_HOST = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass(frozen=True, slots=True)
class ShieldClient:
    """One protected outbound connection of the shield, as configured by the session."""

    name: str
    host: str
    port: int
    destination_ip: str
    identity_chain_pem: str
    """Leaf certificate first, then the chain (PEM); empty when the session gives no identity."""
    identity_key_pem: str
    server_ca_pem: str | None
    """Acceptable server CAs (PEM); ``None`` when ``_SERVER_AUTH`` is ``disabled``."""

    @property
    def server_auth(self) -> bool:
        return self.server_ca_pem is not None


def _pem_blocks(value: str) -> list[tuple[str, str]]:
    """(type, block ending in a newline) of each PEM block in ``value``."""
    return [(m.group(1), m.group(0).rstrip("\n") + "\n") for m in _PEM_BLOCK.finditer(value)]


def _split_identity(value: str, *, var: str) -> tuple[str, str]:
    keys, certs = [], []
    for kind, block in _pem_blocks(value):
        if kind == "PRIVATE KEY":
            keys.append(block)
        elif kind == "CERTIFICATE":
            certs.append(block)
        else:
            raise DemoError(f"{var}: PEM block {kind!r}: only PKCS#8 'PRIVATE KEY' and 'CERTIFICATE' allowed")
    if len(keys) != 1 or not certs:
        raise DemoError(
            f"{var}: found {len(keys)} PKCS#8 key(s) and {len(certs)} certificate(s): the shield needs "
            "exactly one 'PRIVATE KEY' and the end-entity certificate (+ chain)"
        )
    try:
        key = serialization.load_pem_private_key(keys[0].encode(), password=None)
        leaf = x509.load_pem_x509_certificate(certs[0].encode())
    except ValueError as exc:
        raise DemoError(f"{var}: does not parse: {exc}") from exc
    if not key_matches_certificate(key, leaf):
        raise DemoError(f"{var}: the private key does not match the end-entity certificate")
    return "".join(certs), keys[0]


def _server_cas(value: str, *, var: str) -> str:
    blocks = [block for kind, block in _pem_blocks(value) if kind == "CERTIFICATE"]
    if not blocks:
        raise DemoError(f"{var}: {value[:40]!r}: must be 'disabled' or a PEM list of server CA certificates")
    for i, pem in enumerate(blocks):
        cert = x509.load_pem_x509_certificate(pem.encode())
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise DemoError(
                f"{var}: certificate {i} ({cert.subject.rfc4514_string()!r}): not a CA certificate"
            )
    return "".join(blocks)


def parse_shield_env(env: Mapping[str, str]) -> tuple[ShieldClient, ...]:
    """The protected outbound connections an (injected) session environment configures."""
    mode = env.get(PREFIX)
    if mode not in ("unprotected", "protected"):
        raise DemoError(f"{PREFIX}: {mode!r}: must be 'unprotected' or 'protected' for the shield to run")
    names = sorted(
        m.group(1) for var in env if (m := _CLIENT_VAR.match(var)) and not m.group(1).endswith(_SUFFIXES)
    )
    clients = []
    for name in names:
        base = f"{PREFIX}_CLIENT_{name}"
        state = env[base]
        if state in ("unprotected", "refuse"):
            continue
        if state != "protected":
            raise DemoError(f"{base}: {state!r}: must be 'unprotected', 'protected' or 'refuse'")
        dest = env.get(f"{base}_DESTINATION", "")
        m = re.fullmatch(r"TCP:([^:]+):(\d{1,5})", dest)
        if m is None:
            raise DemoError(f"{base}_DESTINATION: {dest!r}: must be 'TCP:<dns name>:<port>'")
        host, port = m.group(1), int(m.group(2))
        if not _HOST.match(host) or not 0 < port < 65536:
            raise DemoError(f"{base}_DESTINATION: {dest!r}: host must be a DNS name and port 1-65535")
        dest_ip = env.get(f"{base}_DESTINATION_IP")
        if not dest_ip:
            raise DemoError(f"{base}_DESTINATION_IP: missing: required for IP sockets ('*' or an address)")
        identity = env.get(f"{base}_IDENTITY", "")
        chain, key = _split_identity(identity, var=f"{base}_IDENTITY") if identity else ("", "")
        auth = env.get(f"{base}_SERVER_AUTH")
        if auth is None:
            raise DemoError(f"{base}_SERVER_AUTH: missing: give the mesh CA bundle (or 'disabled', insecure)")
        server_ca = None if auth.strip() == "disabled" else _server_cas(auth, var=f"{base}_SERVER_AUTH")
        clients.append(ShieldClient(name, host, port, dest_ip, chain, key, server_ca))
    if not clients:
        raise DemoError(f"{PREFIX}_CLIENT_<n>: no protected client connection in the session environment")
    return tuple(clients)


def shield_bootstrap(
    clients: tuple[ShieldClient, ...], routes: Mapping[tuple[str, int], tuple[str, int]], *, node_id: str
) -> dict[str, object]:
    """Envoy static config: per client a plain loopback listener → TLS to the routed destination.

    ``routes`` maps the session's ``(host, port)`` to the loopback address that stands for it.
    Listener ``shield-<n>`` serves client ``n``; ports are 0 (read them back from the admin API).
    """
    listeners: list[dict[str, object]] = []
    clusters: list[dict[str, object]] = []
    for c in clients:
        target = routes.get((c.host, c.port))
        if target is None:
            raise DemoError(f"{PREFIX}_CLIENT_{c.name}_DESTINATION: {c.host}:{c.port}: nothing listens there")
        common: dict[str, object] = {"alpn_protocols": [SHIELD_ALPN]}
        if c.identity_chain_pem:
            common["tls_certificates"] = [
                {
                    "certificate_chain": {"inline_string": c.identity_chain_pem},
                    "private_key": {"inline_string": c.identity_key_pem},
                }
            ]
        if c.server_ca_pem is not None:
            common["validation_context"] = {
                "trusted_ca": {"inline_string": c.server_ca_pem},
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": c.host}}],
            }
        cluster = f"dest-{c.name}"
        tls: dict[str, object] = {"@type": _UPSTREAM_TLS, "sni": c.host, "common_tls_context": common}
        clusters.append(static_cluster(cluster, target[0], target[1], tls_socket(tls)))
        listener = tcp_proxy_listener(
            f"shield-{c.name}", "127.0.0.1", 0, cluster=cluster, stat_prefix=f"shield_{c.name}"
        )
        listeners.append(listener)
    return {
        "node": {"id": node_id, "cluster": "network-shield-standin"},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
