"""istio-agent's file-mounted credential names through real Envoy: a gateway-shaped listener serving a
file-mounted certificate (``file-cert:``), an upstream cluster verifying with ``file-root:``, both rotated by
rewriting the files; a path outside ``--file-credentials-dir`` is never served."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.envoy import EnvoyProcess, egress_bootstrap, sidecar_bootstrap
from sds_server.server import ServerConfig
from sds_server.testing import RunningServer, run_in_thread
from tests.support.envoy import echo_backend, http_get
from tests.support.pki import Issued, MiniCa

pytestmark = pytest.mark.usefixtures("envoy_bin")

GATEWAY_ID = "spiffe://example.org/ns/istio-system/sa/ingressgateway"


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (rename), as kubelet's secret volumes do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _install(d: Path, prefix: str, issued: Issued) -> None:
    _write(d / f"{prefix}-key.pem", issued.key_pem)  # key first, then cert: never a torn pair served
    _write(d / f"{prefix}-cert.pem", issued.chain_pem)


def _wait(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.fixture
def file_server(short_dir: Path) -> Iterator[tuple[RunningServer, Path]]:
    creds = short_dir / "creds"
    creds.mkdir()
    cfg = ServerConfig(listen=short_dir / "sds.sock", file_credentials_dirs=(creds,), file_poll_seconds=0.1)
    with run_in_thread(cfg) as running:
        yield running, creds


def _ok(port: int) -> bool:
    try:
        return http_get(port, timeout=3)[0] == 200
    except OSError:
        return False


def test_gateway_file_cert_and_upstream_file_root_rotate_by_rewriting_files(
    file_server: tuple[RunningServer, Path], short_dir: Path, ca: MiniCa
) -> None:
    server, creds = file_server
    ca2 = MiniCa.create("example.org")  # the CA the upstream trust rotates to
    gw = ca.issue("/ns/istio-system/sa/ingressgateway")
    client = ca.issue("/ns/default/sa/egress")
    _install(creds, "gw", gw)
    _install(creds, "client", client)
    _write(creds / "clients-ca.pem", ca.roots_pem + ca2.roots_pem)
    _write(creds / "upstream-ca.pem", ca.roots_pem)
    gw_cert = f"file-cert:{creds}/gw-cert.pem~{creds}/gw-key.pem"
    with echo_backend() as backend:
        gateway = EnvoyProcess(
            sidecar_bootstrap(
                sds_socket=server.server.config.listen,
                trust_domain="example.org",
                backend_port=backend.port,
                cert_name=gw_cert,
                rootca_name=f"file-root:{creds}/clients-ca.pem",
                node_id="router~127.0.0.1~ingressgateway.istio-system~istio-system.svc.cluster.local",
                listener_name="gateway",
            ),
            short_dir / "gw",
        ).start()
        try:
            gw_port = gateway.listener_port("gateway")
            egress = EnvoyProcess(
                egress_bootstrap(
                    sds_socket=server.server.config.listen,
                    upstream_port=gw_port,
                    server_spiffe_ids=[GATEWAY_ID],
                    cert_name=f"file-cert:{creds}/client-cert.pem~{creds}/client-key.pem",
                    rootca_name=f"file-root:{creds}/upstream-ca.pem",
                ),
                short_dir / "eg",
            ).start()
            try:
                out = egress.listener_port("outbound")
                assert _ok(out)
                assert format(gw.serial, "x") in gateway.cert_serials()

                # 1. the gateway's file-mounted certificate is rewritten: Envoy serves the new one
                gw_new = ca.issue("/ns/istio-system/sa/ingressgateway")
                _install(creds, "gw", gw_new)
                _wait(lambda: format(gw_new.serial, "x") in gateway.cert_serials())
                assert _ok(out)

                # 2. the upstream trust (file-root) is rewritten to another CA: the gateway's cert no
                #    longer verifies, so the upstream connection fails ...
                _write(creds / "upstream-ca.pem", ca2.roots_pem)
                _wait(lambda: not _ok(out))
                # ... until the gateway's certificate comes from that CA too.
                _install(creds, "gw", ca2.issue("/ns/istio-system/sa/ingressgateway"))
                _wait(lambda: _ok(out))
            finally:
                egress.stop()
        finally:
            gateway.stop()
    report = server.call(_status(server))
    names = {n for st in report for n in st["names"]}
    assert gw_cert in names or report == []  # streams may have closed with the Envoys


async def _status(server: RunningServer) -> list[dict[str, object]]:
    return server.server.servicer.status()


def test_path_outside_the_configured_dirs_is_refused_and_never_read(
    file_server: tuple[RunningServer, Path], short_dir: Path, ca: MiniCa
) -> None:
    server, creds = file_server
    outside = short_dir / "outside"
    outside.mkdir()
    leaked = ca.issue("/secret")
    _install(outside, "x", leaked)
    # a symlink inside the allowed dir pointing outside it is outside too
    (creds / "link-cert.pem").symlink_to(outside / "x-cert.pem")
    files = server.server.files

    async def check() -> tuple[bool, bool, bool]:
        return (
            files.acquire(f"file-cert:{outside}/x-cert.pem~{outside}/x-key.pem"),
            files.acquire(f"file-root:{creds}/link-cert.pem"),
            files.acquire(f"file-root:{creds}/../outside/x-cert.pem"),
        )

    assert server.call(check()) == (False, False, False)
    assert files.watched == 0
