"""Issue 12 §3, federation: two real spire-servers (two trust domains) exchange bundles with
``spire-server bundle show|set -format spiffe``; entries ``-federatesWith`` the partner. The partner's
bundle reaches Envoy through ``meshbridge sds serve`` (``ALL``, or ``ROOTCA`` with
``--rootca-all-bundles``), the partner's real Ghostunnel client is admitted; after ``bundle delete`` it is
refused while a local client still gets in."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bridge.envoy import EnvoyProcess, sidecar_bootstrap
from bridge.spire_local import ServerSettings, local_spire
from tests.spire.support import (
    CLIENT_ID,
    MESH_ID,
    NOBODY,
    WHOLE_MESH,
    ghostunnel_client,
    http_get_unix,
    sds_serve,
)
from tests.support.envoy import echo_backend

pytestmark = WHOLE_MESH

PARTNER_ID = "spiffe://partner.org/external/app"


def _trust_domains(secret: dict[str, Any]) -> set[str]:
    """Trust domain names in an Envoy SPIFFE-validator secret (``/config_dump`` JSON)."""
    ctx = secret.get("secret", {}).get("validation_context", {})
    typed = ctx.get("custom_validator_config", {}).get("typed_config", {})
    return {td.get("name", "") for td in typed.get("trust_domains", [])}


@pytest.mark.parametrize("secret_name", ["ALL", "ROOTCA"])
def test_federated_bundle_reaches_envoy_partner_admitted_then_refused_after_bundle_delete(
    short_dir: Path, ghostunnel_bin: Path, secret_name: str
) -> None:
    short_dir.chmod(0o755)
    settings = ServerSettings(ca_ttl="2h")
    with (
        local_spire("example.org", settings, directory=short_dir / "mesh") as mesh,
        local_spire("partner.org", settings, directory=short_dir / "partner") as partner,
    ):
        mesh.server.bundle_set(partner.trust_domain_id, partner.server.bundle_show("spiffe"))
        partner.server.bundle_set(mesh.trust_domain_id, mesh.server.bundle_show("spiffe"))
        mesh.server.entry_create(MESH_ID, ["unix:uid:0"], federates_with=[partner.trust_domain_id])
        mesh.server.entry_create(CLIENT_ID, [f"unix:uid:{NOBODY}"])
        partner.server.entry_create(PARTNER_ID, [f"unix:uid:{NOBODY}"], federates_with=[mesh.trust_domain_id])
        mesh.agent.wait_for_ids([MESH_ID])

        extra = ["--rootca-all-bundles"] if secret_name == "ROOTCA" else []
        with (
            sds_serve(mesh.agent.address, short_dir / "sds.sock", short_dir / "sds.log", extra) as sds,
            echo_backend() as backend,
        ):
            bootstrap = sidecar_bootstrap(
                sds_socket=short_dir / "sds.sock",
                trust_domain="example.org",
                backend_port=backend.port,
                validation="spiffe" if secret_name == "ALL" else "rootca",
                san_prefixes=[],
            )
            with EnvoyProcess(bootstrap, short_dir / "envoy") as envoy:
                port = envoy.listener_port("inbound", timeout=60)
                envoy.wait_secret(
                    secret_name, lambda s: _trust_domains(s) == {"example.org", "partner.org"}, timeout=30
                )
                client = partial(
                    ghostunnel_client,
                    ghostunnel_bin,
                    uid=NOBODY,
                    target_port=port,
                    verify_uri=MESH_ID,
                    directory=short_dir,
                )
                with (
                    client(workload_api=partner.agent.address, name="partner") as (_, partner_listen),
                    client(workload_api=mesh.agent.address, name="local") as (_, local_listen),
                ):
                    status, body = http_get_unix(partner_listen)
                    assert status == 200, body
                    assert f"URI={PARTNER_ID}" in body["headers"]["x-forwarded-client-cert"]
                    assert http_get_unix(local_listen)[0] == 200

                    mesh.server.bundle_delete(partner.trust_domain_id)
                    envoy.wait_secret(secret_name, lambda s: _trust_domains(s) == {"example.org"}, timeout=40)
                    assert http_get_unix(partner_listen)[0] != 200
                    assert http_get_unix(local_listen)[0] == 200
                assert sds.events("svid.received")
