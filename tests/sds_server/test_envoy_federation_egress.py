"""Issue 9 §4: federation through ``ALL`` (SPIFFE validator) and the egress direction (Envoy as the
external client's proxy), with two real embedded Workload APIs / SDS servers and real Envoys."""

from __future__ import annotations

import http.client
import json
import os
import ssl
from pathlib import Path

import pytest

from bridge.envoy import EnvoyProcess, egress_bootstrap, sidecar_bootstrap
from sds_server.server import ServerConfig
from sds_server.testing import run_in_thread
from tests.sds_server.wl import CLIENT_ID, MESH_ID, fetch_identity, mesh_config
from tests.support.envoy import echo_backend, http_get, https_get, mtls_context
from tests.support.workload_api import running_workload_api

pytestmark = pytest.mark.usefixtures("envoy_bin")


def test_federated_client_accepted_through_all_then_refused_when_federation_removed(
    tmp_path: Path, short_dir: Path
) -> None:
    uid = os.getuid()
    partner_cfg = {
        "trust_domain": "partner.org",
        "svid_ttl": "1h",
        "entries": [{"spiffe_id": "spiffe://partner.org/external/app", "selectors": [f"unix:uid:{uid}"]}],
    }
    with running_workload_api(partner_cfg, tmp_path / "partner") as partner:
        visitor = fetch_identity(partner.address())
        bundle_file = tmp_path / "mesh" / "partner.pem"
        bundle_file.parent.mkdir(parents=True)
        bundle_file.write_bytes(visitor.bundle_pem)
        federated = mesh_config(federation={"partner.org": str(bundle_file)})
        for entry in federated["entries"]:
            entry["federates_with"] = ["partner.org"]
        with (
            running_workload_api(federated, tmp_path / "mesh", sockets=("mesh", "ext")) as api,
            run_in_thread(
                ServerConfig(listen=short_dir / "sds.sock", workload_api=api.address("mesh"))
            ) as sds,
            echo_backend() as backend,
        ):
            sds.wait_first_secret(20)
            bootstrap = sidecar_bootstrap(
                sds_socket=short_dir / "sds.sock",
                trust_domain="example.org",
                backend_port=backend.port,
                validation="spiffe",
            )
            with EnvoyProcess(bootstrap, short_dir) as envoy:
                port = envoy.listener_port("inbound")
                mesh_bundle = fetch_identity(api.address("ext")).bundle_pem
                ctx = mtls_context(mesh_bundle, visitor.chain_pem, visitor.key_pem)
                resp = https_get(port, ctx)
                assert resp.status == 200
                assert "URI=spiffe://partner.org/external/app" in str(resp.json()["headers"])
                local = fetch_identity(api.address("ext"))
                assert (
                    https_get(port, mtls_context(mesh_bundle, local.chain_pem, local.key_pem)).status == 200
                )

                old_version = envoy.active_secrets()["ALL"]["version_info"]
                unfederated = mesh_config()
                api.reload(unfederated)
                envoy.wait_secret("ALL", lambda e: e["version_info"] != old_version, timeout=20)
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    https_get(port, mtls_context(mesh_bundle, visitor.chain_pem, visitor.key_pem))
                assert (
                    https_get(port, mtls_context(mesh_bundle, local.chain_pem, local.key_pem)).status == 200
                )


def test_egress_envoy_carries_plain_client_into_strict_sidecar(tmp_path: Path, short_dir: Path) -> None:
    with (
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        run_in_thread(
            ServerConfig(listen=short_dir / "mesh.sock", workload_api=api.address("mesh"))
        ) as mesh_sds,
        run_in_thread(
            ServerConfig(listen=short_dir / "ext.sock", workload_api=api.address("ext"))
        ) as ext_sds,
        echo_backend() as backend,
    ):
        mesh_sds.wait_first_secret(20)
        ext_sds.wait_first_secret(20)
        sidecar = sidecar_bootstrap(
            sds_socket=short_dir / "mesh.sock", trust_domain="example.org", backend_port=backend.port
        )
        with EnvoyProcess(sidecar, short_dir / "in", name="sidecar") as inbound:
            in_port = inbound.listener_port("inbound")
            good = egress_bootstrap(
                sds_socket=short_dir / "ext.sock", upstream_port=in_port, server_spiffe_ids=[MESH_ID]
            )
            wrong = egress_bootstrap(
                sds_socket=short_dir / "ext.sock",
                upstream_port=in_port,
                server_spiffe_ids=["spiffe://example.org/ns/default/sa/not-httpbin"],
            )
            with (
                EnvoyProcess(good, short_dir / "out", name="egress") as egress,
                EnvoyProcess(wrong, short_dir / "bad", name="egress-wrong-id") as egress_wrong,
            ):
                status, body = http_get(egress.listener_port("outbound"))
                assert status == 200
                xfcc = json.loads(body)["headers"]["x-forwarded-client-cert"]
                assert f"URI={CLIENT_ID}" in xfcc
                assert f"By={MESH_ID}" in xfcc
                # An egress proxy expecting another server identity refuses the mesh's certificate.
                with pytest.raises((ConnectionError, http.client.HTTPException)):
                    http_get(egress_wrong.listener_port("outbound"))
                stats = egress_wrong.stats("ssl")
                assert sum(v for k, v in stats.items() if k.endswith("ssl.fail_verify_san")) >= 1
