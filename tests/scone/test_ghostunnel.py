"""Ghostunnel: every rendered command line is accepted by the real binary (`client <flags> --help`); its
values have the right form, and the argv really tunnels to a STRICT mTLS peer that checks our SPIFFE ID — and
fails against the wrong SPIFFE ID or a URI-only server certificate, as ghostunnel.md records."""

from __future__ import annotations

import os
import re
import shlex
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient

from bridge.processes import free_port, stop_process
from scone import (
    Attestation,
    CertFiles,
    GhostunnelApp,
    GhostunnelTunnel,
    MeshTarget,
    SconeError,
    ghostunnel_args,
    ghostunnel_command_line,
    render_ghostunnel_session,
)
from tests.support.pki import MiniCa
from tests.support.schemas import scone_problems
from tests.support.workload_api import running_workload_api

MRENCLAVE = "5f0e5a3c2b1d4e6f8a9b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f7"
MESH_ID = "spiffe://example.org/ns/default/sa/httpbin"
CLIENT_ID = "spiffe://example.org/external/tunnel"
HTTPBIN = MeshTarget("httpbin", "default", 8000, MESH_ID)
FILES_TUNNEL = GhostunnelTunnel(HTTPBIN, listen_port=9000, status_port=9100)
WL_TUNNEL = GhostunnelTunnel(
    MeshTarget("orders", "shop", 9090, "spiffe://example.org/ns/shop/sa/orders"),
    listen_port=9001,
    cert_source="workload-api",
    workload_api_addr="unix:///run/spire/sockets/agent.sock",
)
DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$")


def _flags(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in args[1:]:
        assert a.startswith("--"), a
        key, _, value = a[2:].partition("=")
        assert key not in out, f"--{key} twice"
        out[key] = value
    return out


def _help_ok(binary: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args, "--help"], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    "tunnel",
    [
        FILES_TUNNEL,
        WL_TUNNEL,
        replace(FILES_TUNNEL, connect_to="127.0.0.1:15443", connect_timeout="3s", status_port=None),
        replace(FILES_TUNNEL, listen_host="0.0.0.0"),
        replace(FILES_TUNNEL, listen_host="::1"),
    ],
)
def test_real_binary_accepts_every_command_line(ghostunnel_bin: Path, tunnel: GhostunnelTunnel) -> None:
    args = ghostunnel_args(tunnel)
    proc = _help_ok(ghostunnel_bin, args)
    assert proc.returncode == 0, proc.stderr
    # and the operator's command line is the same argv, shell-quoted
    assert shlex.split(ghostunnel_command_line(tunnel, str(ghostunnel_bin))) == [str(ghostunnel_bin), *args]


def test_real_binary_rejects_an_unknown_flag(ghostunnel_bin: Path) -> None:
    # negative control: `--help` does not swallow bad flags, so the test above can fail
    proc = _help_ok(ghostunnel_bin, [*ghostunnel_args(FILES_TUNNEL), "--verify-uris=x"])
    assert proc.returncode != 0


def test_files_tunnel_values_have_the_right_form() -> None:
    args = ghostunnel_args(FILES_TUNNEL)
    assert args[0] == "client"
    flags = _flags(args)
    assert flags == {
        "listen": "127.0.0.1:9000",
        "target": "httpbin.default.svc.cluster.local:8000",
        "verify-uri": MESH_ID,
        "cert": "/run/meshbridge/svid.pem",
        "key": "/run/meshbridge/svid-key.pem",
        "cacert": "/run/meshbridge/bundle.pem",
        "timed-reload": "5m",
        "status": "127.0.0.1:9100",
    }
    assert DURATION.match(flags["timed-reload"])
    assert "disable-authentication" not in flags
    assert "unsafe-listen" not in flags


def test_workload_api_tunnel_and_connect_to() -> None:
    flags = _flags(ghostunnel_args(WL_TUNNEL))
    assert flags["use-workload-api-addr"] == "unix:///run/spire/sockets/agent.sock"
    assert not {"cert", "key", "cacert", "timed-reload", "status"} & set(flags)
    flags = _flags(ghostunnel_args(replace(FILES_TUNNEL, connect_to="127.0.0.1:15443")))
    assert flags["target"] == "127.0.0.1:15443"
    assert flags["override-server-name"] == "httpbin.default.svc.cluster.local"
    flags = _flags(ghostunnel_args(replace(FILES_TUNNEL, listen_host="0.0.0.0")))
    assert "unsafe-listen" in flags


@pytest.mark.parametrize(
    ("tunnel", "message"),
    [
        (replace(FILES_TUNNEL, timed_reload="5 minutes"), "tunnel.timed_reload: '5 minutes': a Go duration"),
        (
            replace(FILES_TUNNEL, target=replace(HTTPBIN, spiffe_id="spiffe://example.org")),
            "tunnel.target.spiffe_id: 'spiffe://example.org'",
        ),
        (replace(FILES_TUNNEL, connect_to="127.0.0.1"), "tunnel.connect_to: '127.0.0.1': 'host:port'"),
        (replace(FILES_TUNNEL, status_port=9000), "tunnel.status_port: 9000: must differ from listen_port"),
        (
            replace(FILES_TUNNEL, files=CertFiles(cert="svid.pem")),
            "tunnel.files.cert: 'svid.pem': an absolute path",
        ),
        (replace(FILES_TUNNEL, files=CertFiles(cert="/a", key="/a")), "cert, key and cacert must be three"),
        (
            replace(WL_TUNNEL, workload_api_addr="/run/agent.sock"),
            "tunnel.workload_api_addr: '/run/agent.sock'",
        ),
        (replace(FILES_TUNNEL, listen_port=70000), "tunnel.listen_port: 70000: a TCP port"),
    ],
)
def test_tunnel_errors(tunnel: GhostunnelTunnel, message: str) -> None:
    with pytest.raises(SconeError) as excinfo:
        ghostunnel_args(tunnel)
    assert message in str(excinfo.value)


# --- the confidential Ghostunnel session ----------------------------------------------------------------

APP = GhostunnelApp(session_name="apps/tunnel", mrenclaves=(MRENCLAVE,), tunnels=(FILES_TUNNEL, WL_TUNNEL))


def test_session_runs_one_service_per_tunnel_with_injected_files(ghostunnel_bin: Path) -> None:
    rendered = render_ghostunnel_session(APP)
    session = rendered.session
    assert scone_problems(session) == []
    assert rendered.warnings == ()
    services = session["services"]
    assert [s["name"] for s in services] == ["ghostunnel-httpbin-8000", "ghostunnel-orders-9090"]  # type: ignore[union-attr,index]
    for service, tunnel in zip(services, APP.tunnels, strict=True):  # type: ignore[call-overload]
        assert service["image_name"] == "ghostunnel"
        assert service["mrenclaves"] == [MRENCLAVE]
        argv = service["command"].split(" ")
        assert argv == [APP.binary, *ghostunnel_args(tunnel)]
        assert _help_ok(ghostunnel_bin, argv[1:]).returncode == 0
    assert session["images"] == [
        {
            "name": "ghostunnel",
            "injection_files": [
                {"path": "/run/meshbridge/svid.pem", "content": "$$SCONE::svid:crt$$\n$$SCONE::svid:chain$$"},
                {"path": "/run/meshbridge/svid-key.pem", "content": "$$SCONE::svid:privatekey:pkcs8:pem$$"},
                {"path": "/run/meshbridge/bundle.pem", "content": "$$SCONE::spire-ca:crt$$"},
            ],
        }
    ]
    assert session["secrets"] == [
        {"name": "svid", "import": {"session": "spire-svid-apps/tunnel", "secret": "svid"}},
        {"name": "spire-ca", "import": {"session": "spire-ca", "secret": "spire-ca"}},
    ]


def test_workload_api_only_session_needs_no_secrets() -> None:
    rendered = render_ghostunnel_session(
        replace(APP, tunnels=(WL_TUNNEL,), attestation=Attestation(tolerate=("debug-mode",)))
    )
    assert scone_problems(rendered.session) == []
    assert "secrets" not in rendered.session
    assert "images" not in rendered.session
    assert [w.value for w in rendered.warnings] == ["debug-mode"]


def test_non_loopback_listener_is_warned() -> None:
    rendered = render_ghostunnel_session(
        replace(APP, tunnels=(replace(FILES_TUNNEL, listen_host="0.0.0.0"),))
    )
    assert [w.path for w in rendered.warnings] == ["listen_host"]


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (replace(APP, tunnels=()), "tunnels: (): at least one tunnel"),
        (
            replace(APP, tunnels=(FILES_TUNNEL, replace(FILES_TUNNEL, listen_port=9002))),
            "tunnels[1].target: 'ghostunnel-httpbin-8000': two tunnels to the same service",
        ),
        (
            replace(APP, tunnels=(FILES_TUNNEL, replace(WL_TUNNEL, listen_port=9000))),
            "tunnels[1].listen_port: 9000: already used",
        ),
        (
            replace(APP, tunnels=(FILES_TUNNEL, replace(WL_TUNNEL, status_port=9100))),
            "each tunnel needs its own status port",
        ),
        (
            replace(
                APP,
                tunnels=(
                    FILES_TUNNEL,
                    replace(WL_TUNNEL, cert_source="files", files=CertFiles(cert="/other.pem")),
                ),
            ),
            "every files tunnel of one session reads the same injected files",
        ),
        (replace(APP, binary="ghostunnel"), "binary: 'ghostunnel': the absolute path"),
    ],
)
def test_session_errors(app: GhostunnelApp, message: str) -> None:
    with pytest.raises(SconeError) as excinfo:
        render_ghostunnel_session(app)
    assert message in str(excinfo.value)


# --- the rendered argv against a real STRICT mTLS peer --------------------------------------------------


@contextmanager
def _mtls_server(cert: Path, key: Path, ca: Path) -> Iterator[tuple[int, list[str]]]:
    """A STRICT peer: requires a client certificate from the CA and answers with the client's URI SAN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    seen: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(5)
            try:
                with ctx.wrap_socket(raw, server_side=True) as tls:
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    san = (
                        x509.load_der_x509_certificate(der)
                        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
                        .value
                    )
                    uri = san.get_values_for_type(x509.UniformResourceIdentifier)[0]
                    seen.append(uri)
                    request = tls.recv(1024)
                    tls.sendall(b"peer=" + uri.encode() + b" got=" + request)
            except (ssl.SSLError, OSError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1]), seen
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


@contextmanager
def _ghostunnel(binary: Path, args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([str(binary), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        stop_process(proc)
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_status(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Wait until Ghostunnel answers on --status: its listener is up (so a refusal is a real refusal)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ghostunnel exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_status", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer: the process is serving
        except OSError:
            time.sleep(0.1)
    raise AssertionError("ghostunnel --status never answered")


def _exchange(port: int, deadline: float) -> bytes:
    """Send through the tunnel's plain listener (retrying until it is up) and read the answer."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"hello\n")
                data = s.recv(1024)
                if data:
                    return data
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"no answer through the tunnel: {last!r}")


def _files(d: Path) -> CertFiles:
    """The tunnel's own SVID and the CA, as files in ``d`` (next to the peer's ``server*.pem``)."""
    return CertFiles(cert=str(d / "svid.pem"), key=str(d / "svid-key.pem"), cacert=str(d / "ca.pem"))


def _write_pki(d: Path, *, server_dns: tuple[str, ...]) -> None:
    ca = MiniCa.create()
    server = ca.issue(MESH_ID, server_dns)
    client = ca.issue(CLIENT_ID)
    for name, text in {
        "server.pem": server.cert_text,
        "server-key.pem": server.key_text,
        "ca.pem": ca.roots_text,
        "svid.pem": client.cert_text,
        "svid-key.pem": client.key_text,
    }.items():
        (d / name).write_text(text)


def _run_tunnel(
    binary: Path, d: Path, tunnel: GhostunnelTunnel, wait: float = 3
) -> tuple[bytes | None, list[str]]:
    """``tunnel`` to a STRICT peer with the certificates in ``d``; what came back (``None``: nothing
    within ``wait`` seconds) and the client SPIFFE IDs the peer saw."""
    with _mtls_server(d / "server.pem", d / "server-key.pem", d / "ca.pem") as (port, seen):
        listen, status = free_port(), free_port()
        # the only changes from the rendered tunnel
        tunnel = replace(tunnel, listen_port=listen, status_port=status, connect_to=f"127.0.0.1:{port}")
        with _ghostunnel(binary, ghostunnel_args(tunnel)) as proc:
            _wait_status(status, proc)
            try:
                return _exchange(listen, time.monotonic() + wait), seen
            except AssertionError:
                return None, seen


@pytest.mark.parametrize("verify_ok", [True, False])
def test_rendered_argv_tunnels_to_a_strict_peer_only_with_the_right_spiffe_id(
    ghostunnel_bin: Path, short_dir: Path, verify_ok: bool
) -> None:
    _write_pki(short_dir, server_dns=("httpbin.default.svc.cluster.local",))
    verify = MESH_ID if verify_ok else "spiffe://example.org/ns/default/sa/impostor"
    tunnel = replace(FILES_TUNNEL, target=replace(HTTPBIN, spiffe_id=verify), files=_files(short_dir))
    answer, seen = _run_tunnel(ghostunnel_bin, short_dir, tunnel)
    if verify_ok:
        assert answer == f"peer={CLIENT_ID} got=hello\n".encode()
        assert seen == [CLIENT_ID]  # the peer saw our SVID as client certificate
    else:
        assert answer is None  # --verify-uri refused the mesh service's certificate
        assert seen == []


def test_files_source_needs_the_dns_name_in_the_mesh_svid(ghostunnel_bin: Path, short_dir: Path) -> None:
    # ghostunnel.md: with --cert/--key/--cacert Go checks the host name first; a URI-only SVID fails.
    _write_pki(short_dir, server_dns=())
    answer, seen = _run_tunnel(ghostunnel_bin, short_dir, replace(FILES_TUNNEL, files=_files(short_dir)))
    assert answer is None
    assert seen == []


# --- both certificate sources, with SVIDs from the real embedded Workload API (go-spiffe on the tunnel side)


def _embedded_config() -> dict[str, object]:
    me = f"unix:uid:{os.getuid()}"
    return {
        "trust_domain": "example.org",
        "svid_ttl": "1h",
        "entries": [
            {
                "spiffe_id": MESH_ID,
                "selectors": [me, "socket:mesh"],
                "dns_names": ["httpbin.default.svc.cluster.local"],
            },
            {"spiffe_id": CLIENT_ID, "selectors": [me, "socket:ext"]},
        ],
    }


def _fetch_svid(address: str, chain: Path, key: Path, bundle: Path | None = None) -> None:
    """Fetch an SVID (and the bundle) with py-spiffe, write them as PEM files."""
    client = WorkloadApiClient(socket_path=address)
    try:
        context = client.fetch_x509_context()
        context.default_svid.save(chain, key, serialization.Encoding.PEM)
        if bundle is not None:
            (td_bundle,) = context.x509_bundle_set.bundles
            bundle.write_bytes(
                b"".join(c.public_bytes(serialization.Encoding.PEM) for c in td_bundle.x509_authorities)
            )
    finally:
        client.close()


@pytest.mark.parametrize("source", ["workload-api", "files"])
def test_both_sources_with_svids_from_the_embedded_workload_api(
    ghostunnel_bin: Path, tmp_path: Path, short_dir: Path, source: str
) -> None:
    with running_workload_api(_embedded_config(), tmp_path, sockets=("mesh", "ext")) as api:
        _fetch_svid(
            api.address("mesh"), short_dir / "server.pem", short_dir / "server-key.pem", short_dir / "ca.pem"
        )
        files = _files(short_dir)
        if source == "files":
            _fetch_svid(api.address("ext"), Path(files.cert), Path(files.key))
        tunnel = replace(
            FILES_TUNNEL,
            cert_source=source,  # type: ignore[arg-type]
            files=files,
            workload_api_addr=api.address("ext"),
        )
        answer, seen = _run_tunnel(ghostunnel_bin, short_dir, tunnel, wait=15)
    assert answer == f"peer={CLIENT_ID} got=hello\n".encode()
    assert seen == [CLIENT_ID]
