"""Real Envoy against our SDS server fed by a test PKI: the checks that need certificates the embedded
Workload API cannot mint (same CA, other trust domain) and RBAC by SPIFFE ID."""

from __future__ import annotations

import gc
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.envoy import EnvoyError, EnvoyProcess, sidecar_bootstrap
from sds_server.testing import RunningServer
from tests.support.envoy import echo_backend, https_get, mtls_context
from tests.support.pki import MiniCa

pytestmark = pytest.mark.usefixtures("envoy_bin")


@pytest.fixture
def backend_port() -> Iterator[int]:
    with echo_backend() as backend:
        yield backend.port


def _start(
    static_server: RunningServer, ca: MiniCa, short_dir: Path, backend_port: int, **kw: object
) -> EnvoyProcess:
    static_server.server.source.publish([ca.issue("/ns/default/sa/httpbin").svid()], [ca.bundle()])
    static_server.wait_first_secret(10)
    bootstrap = sidecar_bootstrap(
        sds_socket=static_server.server.config.listen,
        trust_domain="example.org",
        backend_port=backend_port,
        **kw,
    )
    return EnvoyProcess(bootstrap, short_dir).start()


def test_same_ca_other_trust_domain_refused_by_san_prefix(
    static_server: RunningServer, ca: MiniCa, short_dir: Path, backend_port: int
) -> None:
    envoy = _start(static_server, ca, short_dir, backend_port)
    try:
        port = envoy.listener_port("inbound")
        good = ca.issue("/external/scone-app")
        assert https_get(port, mtls_context(ca.roots_pem, good.chain_pem, good.key_pem)).status == 200
        # Signed by the mesh CA but naming another trust domain: only the SAN prefix stops it.
        impostor = ca.issue("/external/scone-app")
        foreign = MiniCa("other.org", ca.key, ca.cert).issue("/external/scone-app")
        assert foreign.cert.issuer == impostor.cert.issuer
        with pytest.raises((ssl.SSLError, ConnectionError)):
            https_get(port, mtls_context(ca.roots_pem, foreign.chain_pem, foreign.key_pem))
        stats = envoy.stats("ssl")
        assert sum(v for k, v in stats.items() if k.endswith("ssl.fail_verify_san")) >= 1
    finally:
        envoy.stop()


@pytest.mark.parametrize("layer", ["http", "network"])
def test_rbac_admits_only_named_principals(
    static_server: RunningServer, ca: MiniCa, short_dir: Path, backend_port: int, layer: str
) -> None:
    envoy = _start(
        static_server,
        ca,
        short_dir,
        backend_port,
        allowed_principals=["example.org/external/scone-app"],  # Istio's principal form
        rbac=layer,
    )
    try:
        port = envoy.listener_port("inbound")
        allowed = ca.issue("/external/scone-app")
        other = ca.issue("/external/someone-else")
        assert https_get(port, mtls_context(ca.roots_pem, allowed.chain_pem, allowed.key_pem)).status == 200
        if layer == "http":
            assert https_get(port, mtls_context(ca.roots_pem, other.chain_pem, other.key_pem)).status == 403
        else:
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                https_get(port, mtls_context(ca.roots_pem, other.chain_pem, other.key_pem))
    finally:
        envoy.stop()


def test_delta_grpc_sidecar_gets_secrets(
    static_server: RunningServer, ca: MiniCa, short_dir: Path, backend_port: int
) -> None:
    envoy = _start(static_server, ca, short_dir, backend_port, delta=True)
    try:
        port = envoy.listener_port("inbound")
        client = ca.issue("/external/scone-app")
        resp = https_get(port, mtls_context(ca.roots_pem, client.chain_pem, client.key_pem))
        assert resp.status == 200
        assert static_server.server.metrics.acks.labels("delta")._value.get() >= 2
    finally:
        envoy.stop()


def test_envoy_process_reports_a_bad_bootstrap(short_dir: Path) -> None:
    bad = {"static_resources": {"clusters": [{"name": "x", "type": "NOT_A_TYPE"}]}}
    with pytest.raises(EnvoyError, match="exited with code"):
        EnvoyProcess(bad, short_dir, name="bad").start(timeout=20)


def test_envoy_process_reports_a_binary_that_cannot_run(short_dir: Path) -> None:
    missing = short_dir / "no-such-envoy"
    proc = EnvoyProcess({}, short_dir, name="missing", binary=missing)
    with pytest.raises(EnvoyError, match=r"cannot run it \(No such file or directory\)"):
        proc.start(timeout=5)
    assert not proc.running()
    gc.collect()  # an unclosed log file would surface here as a ResourceWarning (filterwarnings=error)
