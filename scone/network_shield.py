"""The CAS session of an enclave app whose TLS to mesh services is added by SCONE's network shield.

Source: sconedocs ``7.0/network_shield`` (SCONE >= 5.8): ``SCONE_NETWORK_SHIELD`` (``disabled`` |
``unprotected`` | ``protected``), ``SCONE_NETWORK_SHIELD_UNSUPPORTED_PROTOCOLS`` (default ``refuse``
under ``protected``: that would refuse UDP, so DNS), per outbound connection
``SCONE_NETWORK_SHIELD_CLIENT_<name>`` with ``_DESTINATION`` (``TCP:<DNS name>:<port>``),
``_DESTINATION_IP`` (an address or ``*``; mandatory for IP sockets), ``_IDENTITY`` (PEM PKCS#8 key,
end-entity certificate, optional chain) and ``_SERVER_AUTH`` (PEM server **CA** certificates, or
``disabled`` — "This is insecure!"). Server authentication checks the DNS name of ``_DESTINATION``
in the server certificate: the mesh service's SVID needs it as a DNS SAN (ClusterSPIFFEID
``dnsNameTemplates``), which the bridge's ``check`` verifies. The docs recommend injecting
certificates and keys (``$$SCONE::<secret>:crt$$``).
"""

from __future__ import annotations

import ipaddress
import re

from scone.errors import raise_problems
from scone.model import MeshTarget, NetworkShieldApp, RenderedSession, RenderWarning
from scone.session import (
    IDENTITY_PEM,
    attestation_section,
    check_common,
    check_service_name,
    server_ca_pem,
    svid_imports,
)

__all__ = ["PREFIX", "render_network_shield_session", "shield_environment"]

PREFIX = "SCONE_NETWORK_SHIELD"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_target(problems: list[str], i: int, t: MeshTarget) -> None:
    where = f"targets[{i}]"
    if not _DNS.match(t.dns_name):
        problems.append(f"{where}: {t.dns_name!r}: the service DNS name must be a valid DNS name")
    if not 1 <= t.port <= 65535:
        problems.append(f"{where}.port: {t.port!r}: a TCP port 1-65535")
    if t.destination_ip != "*":
        try:
            ipaddress.ip_address(t.destination_ip)
        except ValueError:
            problems.append(f"{where}.destination_ip: {t.destination_ip!r}: an IPv4/IPv6 address or '*'")


def shield_environment(app: NetworkShieldApp) -> dict[str, str]:
    """The ``SCONE_NETWORK_SHIELD*`` variables: one protected client per target, numbered from 1."""
    env: dict[str, str] = {
        PREFIX: app.shield_mode,
        f"{PREFIX}_UNSUPPORTED_PROTOCOLS": app.unsupported_protocols,
    }
    for n, target in enumerate(app.targets, start=1):
        client = f"{PREFIX}_CLIENT_{n}"
        env[client] = "protected"
        env[f"{client}_DESTINATION"] = f"TCP:{target.dns_name}:{target.port}"
        env[f"{client}_DESTINATION_IP"] = target.destination_ip
        env[f"{client}_IDENTITY"] = IDENTITY_PEM
        env[f"{client}_SERVER_AUTH"] = server_ca_pem(app.svidstore) if app.server_auth else "disabled"
    return env


def render_network_shield_session(app: NetworkShieldApp) -> RenderedSession:
    """The app's CAS session (language v0.3): the service, its shield variables, the SVID imports."""
    problems: list[str] = []
    check_common(problems, app)
    check_service_name(problems, "service_name", app.service_name)
    if not app.command.strip():
        problems.append(f"command: {app.command!r}: the command line the enclave runs")
    if not app.targets:
        problems.append("targets: (): at least one mesh service to call")
    for i, target in enumerate(app.targets):
        _check_target(problems, i, target)
    destinations = [(t.dns_name, t.port) for t in app.targets]
    for i, dest in enumerate(destinations):
        if (first := destinations.index(dest)) != i:
            problems.append(f"targets[{i}]: '{dest[0]}:{dest[1]}': same destination as targets[{first}]")
    user_env: dict[str, str] = {}
    for i, (key, value) in enumerate(app.environment):
        if not _ENV_NAME.match(key):
            problems.append(f"environment[{i}]: {key!r}: an environment variable name")
        elif key.startswith(PREFIX):
            problems.append(f"environment[{i}]: {key!r}: {PREFIX}* variables are generated from the targets")
        elif key in user_env:
            problems.append(f"environment[{i}]: {key!r}: set twice")
        user_env[key] = value
    security, warnings = attestation_section(app.attestation, problems)
    raise_problems(problems)
    if not app.server_auth:
        warnings.append(
            RenderWarning(
                "server_auth",
                "false",
                f"{PREFIX}_CLIENT_<n>_SERVER_AUTH=disabled: the shield does not authenticate the mesh "
                'service ("This is insecure!"); anyone on the path can impersonate it',
            )
        )
    service: dict[str, object] = {"name": app.service_name}
    if app.image_name is not None:
        service["image_name"] = app.image_name
    service["mrenclaves"] = list(app.mrenclaves)
    service["command"] = app.command
    service["pwd"] = app.pwd
    service["environment"] = {**user_env, **shield_environment(app)}
    session: dict[str, object] = {
        "name": app.session_name,
        "version": app.version,
        "services": [service],
        "secrets": svid_imports(app.session_name, app.svidstore, bundle=app.server_auth),
    }
    if security is not None:
        session["security"] = security
    return RenderedSession(session, tuple(warnings))
