"""SCONE side of meshbridge: pure renderers from frozen values to plain dicts / text.

* :mod:`scone.svidstore` — the SPIRE agent's ``SVIDStore`` HCL block and the three session templates
  (SVID, trust bundle, federated bundles) the plugin posts to CAS.
* :mod:`scone.network_shield` — the CAS session of an app protected by SCONE's network shield.
* :mod:`scone.ghostunnel` — Ghostunnel client argv / command line, and the CAS session running a
  confidential Ghostunnel.

Nothing here does I/O or imports ``sds_server``/``grpc``/``istio``; errors are :class:`SconeError`,
warn-worthy settings come back as :class:`RenderWarning` values.
"""

from scone.errors import SconeError
from scone.ghostunnel import (
    ghostunnel_args,
    ghostunnel_command_line,
    ghostunnel_warnings,
    render_ghostunnel_session,
    tunnel_service_name,
)
from scone.model import (
    Attestation,
    CertFiles,
    CertSource,
    Environment,
    GhostunnelApp,
    GhostunnelTunnel,
    MeshTarget,
    NetworkShieldApp,
    RenderedSession,
    RenderedText,
    RenderWarning,
    SvidStoreConfig,
    SvidStorePluginName,
    SvidStoreSessions,
    Toleration,
)
from scone.network_shield import render_network_shield_session, shield_environment
from scone.svidstore import (
    TEMPLATE_FILES,
    fill_template,
    placeholder_names,
    render_bundle_session_template,
    render_federated_bundles_session_template,
    render_svid_session_template,
    render_svidstore_hcl,
)

__all__ = [
    "TEMPLATE_FILES",
    "Attestation",
    "CertFiles",
    "CertSource",
    "Environment",
    "GhostunnelApp",
    "GhostunnelTunnel",
    "MeshTarget",
    "NetworkShieldApp",
    "RenderWarning",
    "RenderedSession",
    "RenderedText",
    "SconeError",
    "SvidStoreConfig",
    "SvidStorePluginName",
    "SvidStoreSessions",
    "Toleration",
    "fill_template",
    "ghostunnel_args",
    "ghostunnel_command_line",
    "ghostunnel_warnings",
    "placeholder_names",
    "render_bundle_session_template",
    "render_federated_bundles_session_template",
    "render_ghostunnel_session",
    "render_network_shield_session",
    "render_svid_session_template",
    "render_svidstore_hcl",
    "shield_environment",
    "tunnel_service_name",
]
