"""Ghostunnel in client mode towards a STRICT mesh: the argv, and the CAS session running it in SGX.

Sources: Ghostunnel v1.11.1 ``--help-long`` (``shared/docs/ghostunnel.md``): ``client --listen=ADDR
--target=HOST:PORT``, ``--override-server-name``, ``--verify-uri`` (the mesh service's SPIFFE ID),
``--cert/--key/--cacert`` + ``--timed-reload`` or ``--use-workload-api-addr``, ``--status``,
``--unsafe-listen`` for a non-loopback listener. Never ``--disable-authentication`` (it means *no client
certificate*, which a STRICT sidecar refuses). sconedocs ``CAS_session_lang_0_3`` "Image Secret
Injection Files" for ``images[].injection_files``.

With the ``files`` source Go's TLS verification checks the host name (``--target``'s, or
``--override-server-name``) before ``--verify-uri``: the mesh service's SVID must carry the DNS name
(ClusterSPIFFEID ``dnsNameTemplates``) — observed with the real binary. The Workload API source checks
the SPIFFE ID only.
"""

from __future__ import annotations

import ipaddress
import re
import shlex

from scone.errors import raise_problems
from scone.model import GhostunnelApp, GhostunnelTunnel, RenderedSession, RenderWarning
from scone.session import (
    SVID_CERT_CHAIN_PEM,
    SVID_KEY_PEM,
    attestation_section,
    check_common,
    check_service_name,
    server_ca_pem,
    svid_imports,
)

__all__ = [
    "ghostunnel_args",
    "ghostunnel_command_line",
    "ghostunnel_warnings",
    "render_ghostunnel_session",
    "tunnel_service_name",
]

_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")  # Go time.ParseDuration
_HOST = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")
_SPIFFE_ID = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+$")
_UNIX_ADDR = re.compile(r"^unix:///[^\s]+$")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(value: str) -> tuple[str, int] | None:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host, int(port)


def _check_tunnel(problems: list[str], t: GhostunnelTunnel, where: str = "tunnel") -> None:
    target = t.target
    if not _SPIFFE_ID.match(target.spiffe_id):
        problems.append(f"{where}.target.spiffe_id: {target.spiffe_id!r}: the mesh service's SPIFFE ID")
    if not _HOST.match(target.dns_name):
        problems.append(f"{where}.target: {target.dns_name!r}: a DNS name")
    if not 1 <= target.port <= 65535:
        problems.append(f"{where}.target.port: {target.port!r}: a TCP port 1-65535")
    if not 1 <= t.listen_port <= 65535:
        problems.append(f"{where}.listen_port: {t.listen_port!r}: a TCP port 1-65535")
    if not (_HOST.match(t.listen_host) or _is_loopback(t.listen_host)):
        problems.append(f"{where}.listen_host: {t.listen_host!r}: a host name or IP address")
    if t.status_port is not None and not 1 <= t.status_port <= 65535:
        problems.append(f"{where}.status_port: {t.status_port!r}: a TCP port 1-65535")
    if t.status_port == t.listen_port:
        problems.append(f"{where}.status_port: {t.status_port!r}: must differ from listen_port")
    if t.connect_to is not None and _host_port(t.connect_to) is None:
        problems.append(f"{where}.connect_to: {t.connect_to!r}: 'host:port'")
    for field in ("timed_reload", "connect_timeout"):
        value = getattr(t, field)
        if value is not None and not _DURATION.match(value):
            problems.append(f"{where}.{field}: {value!r}: a Go duration such as '30s' or '5m'")
    if t.cert_source == "files":
        for field in ("cert", "key", "cacert"):
            path = getattr(t.files, field)
            if not path.startswith("/") or any(c.isspace() for c in path):
                problems.append(f"{where}.files.{field}: {path!r}: an absolute path without spaces")
        paths = [t.files.cert, t.files.key, t.files.cacert]
        if len(set(paths)) != 3:
            problems.append(f"{where}.files: {paths!r}: cert, key and cacert must be three different files")
    elif not _UNIX_ADDR.match(t.workload_api_addr):
        problems.append(
            f"{where}.workload_api_addr: {t.workload_api_addr!r}: a Workload API address 'unix:///path'"
        )


def ghostunnel_args(tunnel: GhostunnelTunnel) -> list[str]:
    """The arguments after the binary (``["client", "--listen=…", …]``), as data.

    Run it with the real binary as ``[ghostunnel, *ghostunnel_args(t)]``; to point it at a test peer
    change ``connect_to``/``files`` with :func:`dataclasses.replace`, nothing else.
    """
    problems: list[str] = []
    _check_tunnel(problems, tunnel)
    raise_problems(problems)
    target = tunnel.target
    listen_host = f"[{tunnel.listen_host}]" if ":" in tunnel.listen_host else tunnel.listen_host
    args = ["client", f"--listen={listen_host}:{tunnel.listen_port}"]
    if not _is_loopback(tunnel.listen_host):
        args.append("--unsafe-listen")
    if tunnel.connect_to is None:
        args.append(f"--target={target.dns_name}:{target.port}")
    else:
        args += [f"--target={tunnel.connect_to}", f"--override-server-name={target.dns_name}"]
    args.append(f"--verify-uri={target.spiffe_id}")
    if tunnel.cert_source == "files":
        args += [
            f"--cert={tunnel.files.cert}",
            f"--key={tunnel.files.key}",
            f"--cacert={tunnel.files.cacert}",
            f"--timed-reload={tunnel.timed_reload}",
        ]
    else:
        args.append(f"--use-workload-api-addr={tunnel.workload_api_addr}")
    if tunnel.status_port is not None:
        args.append(f"--status=127.0.0.1:{tunnel.status_port}")
    if tunnel.connect_timeout is not None:
        args.append(f"--connect-timeout={tunnel.connect_timeout}")
    return args


def ghostunnel_command_line(tunnel: GhostunnelTunnel, binary: str = "ghostunnel") -> str:
    """The shell command line for operators running Ghostunnel outside CAS."""
    return shlex.join([binary, *ghostunnel_args(tunnel)])


def ghostunnel_warnings(tunnel: GhostunnelTunnel) -> tuple[RenderWarning, ...]:
    """Warn-worthy settings of one tunnel (a listener reachable from other hosts)."""
    if _is_loopback(tunnel.listen_host):
        return ()
    return (
        RenderWarning(
            "listen_host",
            tunnel.listen_host,
            "the plaintext side listens beyond loopback (--unsafe-listen): anyone who reaches it speaks "
            "to the mesh with this app's identity",
        ),
    )


def tunnel_service_name(tunnel: GhostunnelTunnel) -> str:
    """``ghostunnel-<service>-<port>``: the CAS service running this tunnel."""
    return f"ghostunnel-{tunnel.target.name}-{tunnel.target.port}"


def render_ghostunnel_session(app: GhostunnelApp) -> RenderedSession:
    """The CAS session running one confidential Ghostunnel service per tunnel.

    ``files`` tunnels get the SVID (key, certificate + chain) and the mesh trust bundle as files that
    CAS injects into the enclave after attestation; ``workload-api`` tunnels need no secrets.
    """
    problems: list[str] = []
    check_common(problems, app)
    if not app.binary.startswith("/") or any(c.isspace() for c in app.binary):
        problems.append(f"binary: {app.binary!r}: the absolute path of Ghostunnel in the image")
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", app.image_name):
        problems.append(f"image_name: {app.image_name!r}: an image name ([A-Za-z0-9_./-])")
    if not app.tunnels:
        problems.append("tunnels: (): at least one tunnel")
    for i, tunnel in enumerate(app.tunnels):
        _check_tunnel(problems, tunnel, f"tunnels[{i}]")
    names = [tunnel_service_name(t) for t in app.tunnels]
    for i, name in enumerate(names):
        check_service_name(problems, f"tunnels[{i}].target.name", name)
    listens = [(t.listen_host, t.listen_port) for t in app.tunnels]
    statuses = [t.status_port for t in app.tunnels if t.status_port is not None]
    for i, tunnel in enumerate(app.tunnels):
        if names.index(names[i]) != i:
            problems.append(f"tunnels[{i}].target: {names[i]!r}: two tunnels to the same service and port")
        if listens.index(listens[i]) != i:
            problems.append(
                f"tunnels[{i}].listen_port: {tunnel.listen_port!r}: already used by another tunnel"
            )
        if tunnel.listen_port in statuses:
            problems.append(f"tunnels[{i}].listen_port: {tunnel.listen_port!r}: used as a status port")
    if len(set(statuses)) != len(statuses):
        problems.append(f"tunnels[].status_port: {statuses!r}: each tunnel needs its own status port")
    file_sets = {t.files for t in app.tunnels if t.cert_source == "files"}
    if len(file_sets) > 1:
        problems.append("tunnels[].files: every files tunnel of one session reads the same injected files")
    security, warnings = attestation_section(app.attestation, problems)
    raise_problems(problems)
    services: list[dict[str, object]] = []
    for tunnel in app.tunnels:
        warnings.extend(ghostunnel_warnings(tunnel))
        services.append(
            {
                "name": tunnel_service_name(tunnel),
                "image_name": app.image_name,
                "mrenclaves": list(app.mrenclaves),
                # CAS splits `command` on spaces; every argument is space-free (checked above).
                "command": " ".join([app.binary, *ghostunnel_args(tunnel)]),
                "pwd": app.pwd,
            }
        )
    session: dict[str, object] = {"name": app.session_name, "version": app.version, "services": services}
    if file_sets:
        (files,) = file_sets
        session["images"] = [
            {
                "name": app.image_name,
                "injection_files": [
                    {"path": files.cert, "content": SVID_CERT_CHAIN_PEM},
                    {"path": files.key, "content": SVID_KEY_PEM},
                    {"path": files.cacert, "content": server_ca_pem(app.svidstore)},
                ],
            }
        ]
        session["secrets"] = svid_imports(app.session_name, app.svidstore, bundle=True)
    if security is not None:
        session["security"] = security
    return RenderedSession(session, tuple(warnings))
