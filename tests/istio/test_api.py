"""The public surface of ``istio`` is pinned: the SPEC engineer codes against it."""

from __future__ import annotations

import istio

# in ruff's RUF022 order: types first, then functions
PINNED = """
    AuthorizationParams ClusterSpiffeIdParams EntriesParams ExternalAppEntry FederatedTrustDomainParams
    Gateway IstioError Labels MeshService OverlayParams PeerTrustDomain Selector SvidStorePluginName
    cluster_spiffe_id_name entry_selectors injection_annotation labels mesh_spiffe_id principal
    principal_matches render_authorization_policy render_cluster_federated_trust_domain
    render_cluster_spiffe_id render_entries_json render_entries_script render_external_deny_policy
    render_gateway_cluster_spiffe_id render_istio_operator render_peer_authentication sds_container
    service_dns_names source_matches
"""


def test_public_api_is_pinned_and_sorted() -> None:
    assert istio.__all__ == PINNED.split()
    assert [name for name in istio.__all__ if not hasattr(istio, name)] == []
