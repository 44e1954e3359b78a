"""Istio and SPIRE side of meshbridge: pure renderers from frozen values to plain dicts / text.

* :mod:`istio.mesh` — the ``IstioOperator`` overlay (trust domain, SPIRE injection template with the
  meshbridge SDS container, gateways).
* :mod:`istio.policy` — mesh-wide STRICT ``PeerAuthentication``, per-service ``AuthorizationPolicy``.
* :mod:`istio.spire` — ``ClusterSPIFFEID`` per mesh service, registration entries (``-data`` JSON and a
  ``spire-server entry create`` script) for the external apps.

Nothing here does I/O or imports ``sds_server``/``grpc``/``scone``; errors are :class:`IstioError`.
"""

from istio.errors import IstioError
from istio.mesh import injection_annotation, render_istio_operator, sds_container
from istio.model import (
    AuthorizationParams,
    ClusterSpiffeIdParams,
    EntriesParams,
    ExternalAppEntry,
    FederatedTrustDomainParams,
    Gateway,
    Labels,
    MeshService,
    OverlayParams,
    PeerTrustDomain,
    Selector,
    SvidStorePluginName,
    labels,
)
from istio.policy import (
    principal,
    principal_matches,
    render_authorization_policy,
    render_external_deny_policy,
    render_peer_authentication,
    source_matches,
)
from istio.spire import (
    cluster_spiffe_id_name,
    entry_selectors,
    mesh_spiffe_id,
    render_cluster_federated_trust_domain,
    render_cluster_spiffe_id,
    render_entries_json,
    render_entries_script,
    render_gateway_cluster_spiffe_id,
    service_dns_names,
)

__all__ = [
    "AuthorizationParams",
    "ClusterSpiffeIdParams",
    "EntriesParams",
    "ExternalAppEntry",
    "FederatedTrustDomainParams",
    "Gateway",
    "IstioError",
    "Labels",
    "MeshService",
    "OverlayParams",
    "PeerTrustDomain",
    "Selector",
    "SvidStorePluginName",
    "cluster_spiffe_id_name",
    "entry_selectors",
    "injection_annotation",
    "labels",
    "mesh_spiffe_id",
    "principal",
    "principal_matches",
    "render_authorization_policy",
    "render_cluster_federated_trust_domain",
    "render_cluster_spiffe_id",
    "render_entries_json",
    "render_entries_script",
    "render_external_deny_policy",
    "render_gateway_cluster_spiffe_id",
    "render_istio_operator",
    "render_peer_authentication",
    "sds_container",
    "service_dns_names",
    "source_matches",
]
