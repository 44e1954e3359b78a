"""Inputs of the Istio and SPIRE renderers: small frozen values, already validated by the caller.

The bridge spec (``bridge/``) validates names, ports and SPIFFE IDs and builds these values; the
renderers in :mod:`istio.mesh`, :mod:`istio.policy` and :mod:`istio.spire` still re-check the few rules
whose violation would produce a document the consumer silently misreads, and raise
:class:`istio.errors.IstioError` (``<field path>: <value!r>: <rule>``) for them.

SPIFFE IDs are plain ``str`` (``spiffe://<td>/<path>``): this package never imports ``sds_server``.
Labels are tuples of ``(key, value)`` pairs so that every value here is hashable; use
:func:`labels` to build them from a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Labels = tuple[tuple[str, str], ...]
"""Kubernetes labels as sorted ``(key, value)`` pairs (hashable, order-independent)."""

SvidStorePluginName = Literal["sconecas_sessionmanager", "scone_cas_secretsmanager"]
"""The SPIRE agent SVIDStore plugin that posts SVIDs into SCONE CAS (current, or the tutorial's)."""

DEFAULT_ROOT_NAMESPACE = "istio-system"
"""Istio's root namespace when nothing moves istiod (``values.global.istioNamespace``)."""


def labels(mapping: Mapping[str, str]) -> Labels:
    """``{"app": "httpbin"}`` -> ``(("app", "httpbin"),)``, sorted by key."""
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True, slots=True)
class MeshService:
    """A Kubernetes service inside the mesh that external apps may call.

    ``pod_labels`` select the service's pods (AuthorizationPolicy selector, ClusterSPIFFEID
    podSelector); ``service_account`` makes its SPIFFE ID ``spiffe://<td>/ns/<namespace>/sa/<sa>``.
    """

    name: str
    namespace: str
    service_account: str
    port: int
    pod_labels: Labels


@dataclass(frozen=True, slots=True)
class Gateway:
    """An Istio gateway deployment to put on SPIRE (``components.ingressGateways[]`` entry)."""

    name: str = "istio-ingressgateway"
    labels: Labels = (("istio", "ingressgateway"),)
    namespace: str | None = None
    kind: Literal["ingress", "egress"] = "ingress"


BundleEndpointProfile = Literal["https_spiffe", "https_web"]


@dataclass(frozen=True, slots=True)
class PeerTrustDomain:
    """A trust domain federated with the mesh (the external apps' own), as SPIRE reaches its bundle.

    ``endpoint_spiffe_id`` is the bundle endpoint server's SPIFFE ID (``https_spiffe`` profile only;
    SPIRE's default is ``spiffe://<trust_domain>/spire/server``).
    """

    trust_domain: str
    bundle_endpoint_url: str
    profile: BundleEndpointProfile = "https_spiffe"
    endpoint_spiffe_id: str | None = None


@dataclass(frozen=True, slots=True)
class FederatedTrustDomainParams:
    """One ``ClusterFederatedTrustDomain``: how the mesh's SPIRE fetches ``peer``'s bundle."""

    peer: PeerTrustDomain
    class_name: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class OverlayParams:
    """Everything the ``IstioOperator`` overlay needs.

    ``sds_image`` is the container image with the ``meshbridge`` CLI (runs ``meshbridge sds serve``
    next to istio-proxy). ``workload_api_socket`` is the SPIRE agent socket *as mounted in the SDS
    container* from the SPIFFE CSI driver (``csi_driver``) at ``workload_api_mount``.
    """

    trust_domain: str
    sds_image: str
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    revision: str | None = None
    profile: str = "default"
    template_name: str = "spire"
    gateways: tuple[Gateway, ...] = (Gateway(),)
    csi_driver: str = "csi.spiffe.io"
    workload_api_mount: str = "/spiffe-workload-api"
    workload_api_socket_name: str = "spire-agent.sock"
    sds_socket_dir: str = "/run/secrets/workload-spiffe-uds"
    proxy_uid: int = 1337
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pin_classic_sidecars: bool = False
    """Also set istiod's mesh-wide ``ENABLE_NATIVE_SIDECARS=false`` (Istio < 1.24, which lacks the
    per-pod ``sidecar.istio.io/nativeSidecar`` annotation). The SDS container must start before
    istio-proxy, which holds only while istio-proxy is a regular container; the annotation says so for
    the SPIRE-backed pods alone, the env changes every workload in the mesh."""
    peer_trust_domains: tuple[PeerTrustDomain, ...] = ()
    """Trust domains admitted by Istio's inbound SAN check besides the mesh's (``caCertificates``)."""


@dataclass(frozen=True, slots=True)
class ClusterSpiffeIdParams:
    """One ``ClusterSPIFFEID`` for the pods of ``service``.

    ``dns_names`` adds ``dnsNameTemplates`` ``<svc>.<ns>.svc.cluster.local`` and ``<svc>.<ns>.svc``:
    set it whenever some external app authenticates the service by DNS name (network shield with
    server authentication, Ghostunnel fed from files). ``cluster_domain`` is the cluster DNS suffix.
    """

    service: MeshService
    dns_names: bool = False
    class_name: str | None = None
    federates_with: tuple[str, ...] = ()
    cluster_domain: str = "cluster.local"
    ttl: str | None = None


@dataclass(frozen=True, slots=True)
class Selector:
    """A SPIRE selector ``type:value`` (the first colon splits type from value)."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


@dataclass(frozen=True, slots=True)
class ExternalAppEntry:
    """The SPIRE registration entry of one external (non-mesh) app.

    ``cas_session`` (``<namespace>/<name>``) set: the SVID is stored into SCONE CAS by the SVIDStore
    plugin for the session of that name (network shield, Ghostunnel with ``files``); the entry gets
    the plugin's selectors and its session hash at apply time. ``cas_session`` ``None``: a Workload
    API entry (Ghostunnel with ``workload-api``) selected by ``selectors``. ``federates_with`` lists
    trust domain names (``other.org``).
    """

    spiffe_id: str
    parent_id: str
    cas_session: str | None = None
    selectors: tuple[Selector, ...] = ()
    dns_names: tuple[str, ...] = ()
    federates_with: tuple[str, ...] = ()
    x509_svid_ttl: int | None = None
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class EntriesParams:
    """The entries of all external apps, and which SVIDStore plugin stores their SVIDs."""

    entries: tuple[ExternalAppEntry, ...]
    plugin: SvidStorePluginName = "sconecas_sessionmanager"
    spire_server: str = "spire-server"
    server_socket_path: str | None = None


@dataclass(frozen=True, slots=True)
class AuthorizationParams:
    """One ALLOW ``AuthorizationPolicy`` on the pods of ``service``.

    ``allowed_spiffe_ids`` are the external apps' SPIFFE IDs (with ``spiffe://``; rendered without it,
    as Istio principals are). Note Istio semantics: once an ALLOW policy selects a workload, requests
    matching no ALLOW rule are denied, in-mesh callers included; list in-mesh callers in
    ``mesh_principals`` (SPIFFE IDs) or ``mesh_namespaces`` to keep them working.
    """

    service: MeshService
    allowed_spiffe_ids: tuple[str, ...]
    mesh_principals: tuple[str, ...] = ()
    mesh_namespaces: tuple[str, ...] = ()
    name: str | None = None
