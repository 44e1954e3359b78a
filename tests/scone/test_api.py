"""The public surface of ``scone`` is pinned: the SPEC engineer codes against it."""

from __future__ import annotations

import scone

# in ruff's RUF022 order: constants, types, then functions
PINNED = """
    TEMPLATE_FILES Attestation CertFiles CertSource Environment GhostunnelApp GhostunnelTunnel MeshTarget
    NetworkShieldApp RenderWarning RenderedSession RenderedText SconeError SvidStoreConfig SvidStorePluginName
    SvidStoreSessions Toleration fill_template ghostunnel_args ghostunnel_command_line ghostunnel_warnings
    placeholder_names render_bundle_session_template render_federated_bundles_session_template
    render_ghostunnel_session render_network_shield_session render_svid_session_template render_svidstore_hcl
    shield_environment tunnel_service_name
"""


def test_public_api_is_pinned_and_sorted() -> None:
    assert scone.__all__ == PINNED.split()
    assert [name for name in scone.__all__ if not hasattr(scone, name)] == []
