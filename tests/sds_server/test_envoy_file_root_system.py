"""``file-root:system`` through real Envoy (istio-agent's name for the OS trust store, used when
``VERIFY_CERTIFICATE_AT_CLIENT`` is on): an upstream cluster validating with it receives a
``validation_context`` whose ``trusted_ca`` is this machine's system bundle (Envoy's ``config_dump`` and
``/certs`` show those CAs), and a TLS connection to a server whose certificate chains to a self-made CA —
not in the system store, which the test cannot modify — fails verification while that secret is served."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sds_server.file_credentials import SYSTEM_ROOT, os_root_file
from sds_server.testing import RunningServer
from tests.sds_server.test_envoy_file_credentials import _install, _ok, _wait, _write, gateway_and_egress
from tests.support.pki import MiniCa

pytestmark = pytest.mark.usefixtures("envoy_bin")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_upstream_validating_with_file_root_system_gets_the_system_bundle_and_refuses_a_private_ca(
    file_server: tuple[RunningServer, Path],
    short_dir: Path,
    ca: MiniCa,
    delta: bool,
) -> None:
    system = os_root_file()
    if system is None:
        pytest.skip("no OS trust store on this machine")
    system_pem = system.read_bytes()
    # counted, not parsed: a system store may hold a root cryptography warns about (serial <= 0)
    system_count = system_pem.count(b"-----BEGIN CERTIFICATE-----")
    server, creds = file_server
    _install(creds, "gw", ca.issue("/ns/istio-system/sa/ingressgateway"))
    _install(creds, "client", ca.issue("/ns/default/sa/egress"))
    _write(creds / "clients-ca.pem", ca.roots_pem)
    with gateway_and_egress(server, creds, short_dir, upstream_root=SYSTEM_ROOT, delta=delta) as (_, egress):
        out = egress.listener_port("outbound")
        entry = egress.wait_secret(SYSTEM_ROOT)
        trusted = entry["secret"]["validation_context"]["trusted_ca"]["inline_bytes"]
        assert base64.b64decode(trusted) == system_pem

        def ca_certs() -> int:
            return max((len(c.get("ca_cert", [])) for c in egress.certs().get("certificates", [])), default=0)

        _wait(lambda: ca_certs() == system_count)  # /certs lists every system CA
        # the gateway's certificate chains to our private CA, which is not a system root
        assert not _ok(out)
        egress.wait_for(
            "a verification failure on the upstream cluster",
            lambda: (
                egress.stats(r"cluster\.upstream\.ssl\.fail_verify_error").get(
                    "cluster.upstream.ssl.fail_verify_error", 0
                )
                > 0
            ),
            10,
        )
        assert egress.active_secrets().get(SYSTEM_ROOT) is not None  # still served
