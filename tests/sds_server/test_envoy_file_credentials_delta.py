"""istio-agent's file-mounted credential names through real Envoy over **Delta** SDS
(``api_type: DELTA_GRPC``): the gateway-shaped listener's ``file-cert:`` and the upstream cluster's
``file-root:``, both rotated by rewriting the files (the SotW version: ``test_envoy_file_credentials.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.envoy import EnvoyProcess, egress_bootstrap, sidecar_bootstrap
from sds_server.testing import RunningServer
from tests.sds_server.test_envoy_file_credentials import (  # noqa: F401  (file_server is a fixture)
    GATEWAY_ID,
    _install,
    _ok,
    _wait,
    _write,
    file_server,
)
from tests.support.envoy import echo_backend
from tests.support.pki import MiniCa

pytestmark = pytest.mark.usefixtures("envoy_bin")


def test_delta_gateway_file_cert_and_upstream_file_root_rotate_by_rewriting_files(
    file_server: tuple[RunningServer, Path],  # noqa: F811
    short_dir: Path,
    ca: MiniCa,
) -> None:
    server, creds = file_server
    ca2 = MiniCa.create("example.org")
    gw = ca.issue("/ns/istio-system/sa/ingressgateway")
    _install(creds, "gw", gw)
    _install(creds, "client", ca.issue("/ns/default/sa/egress"))
    _write(creds / "clients-ca.pem", ca.roots_pem + ca2.roots_pem)
    _write(creds / "upstream-ca.pem", ca.roots_pem)
    gw_cert = f"file-cert:{creds}/gw-cert.pem~{creds}/gw-key.pem"
    upstream_root = f"file-root:{creds}/upstream-ca.pem"
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
                delta=True,
            ),
            short_dir / "gw",
        ).start()
        try:
            assert (
                gateway.bootstrap["static_resources"]["listeners"][0]["filter_chains"][0][  # type: ignore[index]
                    "transport_socket"
                ]["typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"][0][
                    "sds_config"
                ]["api_config_source"]["api_type"]
                == "DELTA_GRPC"
            )
            gw_port = gateway.listener_port("gateway")
            egress = EnvoyProcess(
                egress_bootstrap(
                    sds_socket=server.server.config.listen,
                    upstream_port=gw_port,
                    server_spiffe_ids=[GATEWAY_ID],
                    cert_name=f"file-cert:{creds}/client-cert.pem~{creds}/client-key.pem",
                    rootca_name=upstream_root,
                    delta=True,
                ),
                short_dir / "eg",
            ).start()
            try:
                out = egress.listener_port("outbound")
                assert _ok(out)
                assert format(gw.serial, "x") in gateway.cert_serials()
                # the server saw Delta streams for the file names
                streams = server.call(_status(server))
                apis = {name: st["api"] for st in streams for name in st["names"]}  # type: ignore[attr-defined]
                assert apis.get(gw_cert) == "delta" and apis.get(upstream_root) == "delta", streams  # noqa: PT018

                # 1. the gateway's certificate file is rewritten: Envoy serves the new one
                gw_new = ca.issue("/ns/istio-system/sa/ingressgateway")
                _install(creds, "gw", gw_new)
                _wait(lambda: format(gw_new.serial, "x") in gateway.cert_serials())
                assert _ok(out)

                # 2. the upstream trust is rewritten to another CA: verification fails ...
                _write(creds / "upstream-ca.pem", ca2.roots_pem)
                _wait(lambda: not _ok(out))
                # ... until the gateway's certificate comes from that CA too
                _install(creds, "gw", ca2.issue("/ns/istio-system/sa/ingressgateway"))
                _wait(lambda: _ok(out))
            finally:
                egress.stop()
        finally:
            gateway.stop()


async def _status(server: RunningServer) -> list[dict[str, object]]:
    return server.server.servicer.status()
