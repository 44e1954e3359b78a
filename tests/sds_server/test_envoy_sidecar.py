"""Issue 9 §4: real Envoy as an Istio STRICT sidecar, secrets from our SDS server, identities from the
embedded Workload API (real process), clients' SVIDs fetched with real py-spiffe."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.envoy import EnvoyProcess, sidecar_bootstrap
from sds_server.server import ServerConfig
from sds_server.source import SnapshotPublisher
from sds_server.testing import RunningServer, publish_mismatched_key, run_in_thread
from tests.sds_server.wl import CLIENT_ID, MESH_ID, Identity, fetch_identity, mesh_config
from tests.support.envoy import echo_backend, https_get, mtls_context
from tests.support.pki import MiniCa
from tests.support.workload_api import WorkloadApiHandle, running_workload_api

pytestmark = pytest.mark.usefixtures("envoy_bin")


@dataclass
class Mesh:
    api: WorkloadApiHandle
    sds: RunningServer
    envoy: EnvoyProcess
    port: int
    client: Identity

    def get(self, identity: Identity | None = None) -> int:
        ident = identity or self.client
        return https_get(self.port, mtls_context(ident.bundle_pem, ident.chain_pem, ident.key_pem)).status


@pytest.fixture
def mesh(tmp_path: Path, short_dir: Path) -> Iterator[Mesh]:
    with (
        running_workload_api(mesh_config(data_dir="data"), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        run_in_thread(ServerConfig(listen=short_dir / "sds.sock", workload_api=api.address("mesh"))) as sds,
        echo_backend() as backend,
    ):
        sds.wait_first_secret(20)
        bootstrap = sidecar_bootstrap(
            sds_socket=short_dir / "sds.sock", trust_domain="example.org", backend_port=backend.port
        )
        envoy = EnvoyProcess(bootstrap, short_dir).start()
        try:
            yield Mesh(api, sds, envoy, envoy.listener_port("inbound"), fetch_identity(api.address("ext")))
        finally:
            envoy.stop()


def test_external_svid_gets_200_and_backend_sees_its_spiffe_id(mesh: Mesh) -> None:
    assert mesh.client.spiffe_id == CLIENT_ID
    resp = https_get(
        mesh.port, mtls_context(mesh.client.bundle_pem, mesh.client.chain_pem, mesh.client.key_pem)
    )
    assert resp.status == 200
    assert resp.server_spiffe_id == MESH_ID
    xfcc = resp.json()["headers"]["x-forwarded-client-cert"]
    assert f"URI={CLIENT_ID}" in xfcc
    assert f"By={MESH_ID}" in xfcc
    assert mesh.envoy.active_secrets().keys() >= {"default", "ROOTCA"}


def test_no_cert_other_ca_other_trust_domain_refused(mesh: Mesh) -> None:
    bundle = mesh.client.bundle_pem
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(mesh.port, mtls_context(bundle))
    for ca in (MiniCa.create("example.org"), MiniCa.create("other.org")):  # another CA; another trust domain
        stranger = ca.issue("/external/scone-app")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get(mesh.port, mtls_context(bundle, stranger.chain_pem, stranger.key_pem))
    stats = mesh.envoy.stats("ssl")
    assert sum(v for k, v in stats.items() if k.endswith("ssl.fail_verify_no_cert")) == 1
    assert sum(v for k, v in stats.items() if k.endswith("ssl.fail_verify_error")) == 2
    assert mesh.get() == 200  # and the real client still gets in


def test_rotation_reaches_envoy_without_restart(mesh: Mesh) -> None:
    pid = mesh.envoy.pid
    before = https_get(
        mesh.port, mtls_context(mesh.client.bundle_pem, mesh.client.chain_pem, mesh.client.key_pem)
    )
    old_serial = format(before.server_cert.serial_number, "x")
    assert old_serial in mesh.envoy.cert_serials()
    t0 = time.monotonic()
    mesh.api.rotate()
    mesh.envoy.wait_for(
        "new serial in /certs", lambda: old_serial not in mesh.envoy.cert_serials(), timeout=20
    )
    elapsed = time.monotonic() - t0
    after = https_get(
        mesh.port, mtls_context(mesh.client.bundle_pem, mesh.client.chain_pem, mesh.client.key_pem)
    )
    new_serial = format(after.server_cert.serial_number, "x")
    assert new_serial != old_serial
    assert new_serial in mesh.envoy.cert_serials()
    assert mesh.envoy.pid == pid
    print(
        f"\nrotation → Envoy serving the new certificate: {elapsed * 1000:.0f} ms "
        "(incl. Workload API re-mint)"
    )


def test_nack_recorded_and_previous_secret_keeps_serving(mesh: Mesh) -> None:
    metrics = mesh.sds.server.metrics
    serials = mesh.envoy.cert_serials()
    source = mesh.sds.server.source
    assert isinstance(source, SnapshotPublisher)
    good = publish_mismatched_key(source)
    try:
        mesh.envoy.wait_for("NACK", lambda: metrics.nacks.labels("sotw")._value.get() >= 1, timeout=20)
        assert mesh.envoy.stats("sds")["sds.default.update_rejected"] >= 1
        time.sleep(0.5)
        assert metrics.nacks.labels("sotw")._value.get() == 1  # no NACK loop
        assert mesh.envoy.cert_serials() == serials
        assert mesh.get() == 200
    finally:
        source.publish(good.svids, good.bundles)
    assert mesh.get() == 200


def test_workload_api_restart_while_envoy_connected(mesh: Mesh) -> None:
    metrics = mesh.sds.server.metrics
    failures = 0
    mesh.api.stop()
    mesh.envoy.wait_for(
        "SDS saw the loss", lambda: metrics.workload_api_connected._value.get() == 0, timeout=10
    )
    for _ in range(10):
        failures += mesh.get() != 200
        time.sleep(0.05)
    mesh.api.start()
    mesh.envoy.wait_for(
        "SDS reconnected", lambda: metrics.workload_api_connected._value.get() == 1, timeout=30
    )
    for _ in range(10):
        failures += mesh.get() != 200
    assert failures == 0
    assert metrics.workload_api_reconnects._value.get() >= 1
    # After the restart the rotation path still works end to end.
    old = mesh.envoy.cert_serials()
    mesh.api.rotate()
    mesh.envoy.wait_for("rotation after restart", lambda: mesh.envoy.cert_serials() != old, timeout=20)
    assert mesh.get() == 200
