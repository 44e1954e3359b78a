"""istio-agent's file-mounted credential names through real Envoy, over SotW and over Delta SDS
(``api_type: DELTA_GRPC``): a gateway-shaped listener serving a file-mounted certificate (``file-cert:``), an
upstream cluster verifying with ``file-root:``, both rotated by rewriting the files; a path outside
``--file-credentials-dir`` is never served."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bridge.envoy import EnvoyProcess, egress_bootstrap, sidecar_bootstrap
from sds_server.testing import RunningServer
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


def _ok(port: int) -> bool:
    try:
        return http_get(port, timeout=3)[0] == 200
    except OSError:
        return False


@contextmanager
def gateway_and_egress(
    server: RunningServer, creds: Path, short_dir: Path, *, upstream_root: str, delta: bool, **gateway: str
) -> Iterator[tuple[EnvoyProcess, EnvoyProcess]]:
    """A gateway-shaped Envoy serving ``file-cert:`` ``gw-*.pem`` and verifying clients with
    ``clients-ca.pem``, and an egress Envoy calling it with ``client-*.pem``, verifying with
    ``upstream_root``; both on SotW or Delta SDS. ``gateway``: more ``sidecar_bootstrap`` arguments."""
    with echo_backend() as backend:
        gw = EnvoyProcess(
            sidecar_bootstrap(
                sds_socket=server.server.config.listen,
                trust_domain="example.org",
                backend_port=backend.port,
                cert_name=f"file-cert:{creds}/gw-cert.pem~{creds}/gw-key.pem",
                rootca_name=f"file-root:{creds}/clients-ca.pem",
                listener_name="gateway",
                delta=delta,
                **gateway,
            ),
            short_dir / "gw",
        ).start()
        try:
            egress = EnvoyProcess(
                egress_bootstrap(
                    sds_socket=server.server.config.listen,
                    upstream_port=gw.listener_port("gateway"),
                    server_spiffe_ids=[GATEWAY_ID],
                    cert_name=f"file-cert:{creds}/client-cert.pem~{creds}/client-key.pem",
                    rootca_name=upstream_root,
                    delta=delta,
                ),
                short_dir / "eg",
            ).start()
            try:
                yield gw, egress
            finally:
                egress.stop()
        finally:
            gw.stop()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_gateway_file_cert_and_upstream_file_root_rotate_by_rewriting_files(
    file_server: tuple[RunningServer, Path], short_dir: Path, ca: MiniCa, delta: bool
) -> None:
    server, creds = file_server
    ca2 = MiniCa.create("example.org")  # the CA the upstream trust rotates to
    gw = ca.issue("/ns/istio-system/sa/ingressgateway")
    _install(creds, "gw", gw)
    _install(creds, "client", ca.issue("/ns/default/sa/egress"))
    _write(creds / "clients-ca.pem", ca.roots_pem + ca2.roots_pem)
    _write(creds / "upstream-ca.pem", ca.roots_pem)
    gw_cert = f"file-cert:{creds}/gw-cert.pem~{creds}/gw-key.pem"
    upstream_root = f"file-root:{creds}/upstream-ca.pem"
    node_id = "router~127.0.0.1~ingressgateway.istio-system~istio-system.svc.cluster.local"
    with gateway_and_egress(
        server, creds, short_dir, upstream_root=upstream_root, delta=delta, node_id=node_id
    ) as (gateway, egress):
        tls = gateway.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]  # type: ignore[index]
        sds = tls["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["sds_config"]
        assert sds["api_config_source"]["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
        out = egress.listener_port("outbound")
        assert _ok(out)
        assert format(gw.serial, "x") in gateway.cert_serials()
        # the server saw streams of that protocol for the file names
        streams = server.call(_status(server))
        apis = {name: st["api"] for st in streams for name in st["names"]}  # type: ignore[attr-defined]
        api = "delta" if delta else "sotw"
        assert apis.get(gw_cert) == api and apis.get(upstream_root) == api, streams  # noqa: PT018

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
