"""The bridge spec as frozen domain values.

A :class:`Bridge` is what ``bridge.spec.load_spec`` returns after every rule has been checked: every
SPIFFE ID is a canonical, already validated ``str`` (``sds_server.spiffe_id`` did the parsing), every
default is filled in and every cross reference (an app's targets) is resolved to the
:class:`MeshService` it names. Renderers never see raw YAML and never re-validate.

Vocabulary, from the mission's three worlds:

* the **mesh** (Istio, STRICT mTLS, identities issued by SPIRE and served to sidecars over SDS);
* **mesh services** - workloads inside the mesh that external apps may call;
* **external apps** - SCONE confidential applications outside the mesh, reaching mesh services either
  through SCONE's *network shield* (TLS inside the enclave) or a confidential *Ghostunnel* in client
  mode; their SVIDs reach CAS through SPIRE's SVIDStore plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from scone.model import SvidStorePluginName, Toleration

AppMode = Literal["network-shield", "ghostunnel"]
CertSource = Literal["files", "workload-api"]
GatewayKind = Literal["ingress", "egress"]
BundleEndpointProfile = Literal["https_spiffe", "https_web"]
SvidStorePlugin = SvidStorePluginName
Protocol = Literal["http", "http2", "grpc", "tcp", "tls"]

GATEWAY_KINDS: tuple[GatewayKind, ...] = ("ingress", "egress")
APP_MODES: tuple[AppMode, ...] = ("network-shield", "ghostunnel")
CERT_SOURCES: tuple[CertSource, ...] = ("files", "workload-api")
# The SCONE-side vocabularies are defined once, in scone.model (the renderer that consumes them).
SVIDSTORE_PLUGINS: tuple[SvidStorePlugin, ...] = get_args(SvidStorePlugin)
PROTOCOLS: tuple[Protocol, ...] = ("http", "http2", "grpc", "tcp", "tls")
BUNDLE_ENDPOINT_PROFILES: tuple[BundleEndpointProfile, ...] = ("https_spiffe", "https_web")
TOLERATIONS: tuple[Toleration, ...] = get_args(Toleration)

API_VERSION = "meshbridge.io/v1alpha1"
KIND = "Bridge"


@dataclass(frozen=True, slots=True)
class SdsSettings:
    """How Istio sidecars reach an SDS socket at ``/run/secrets/workload-spiffe-uds/socket``.

    meshbridge's SDS server runs as an extra (native sidecar) container in each pod, added by the
    injection template; it reads the SPIRE agent's Workload API socket from the SPIFFE CSI volume at
    ``workload_api_socket`` and serves SDS to istio-proxy on a shared ``emptyDir``.
    """

    image: str
    workload_api_socket: str


@dataclass(frozen=True, slots=True)
class Gateway:
    """An Istio gateway deployment that must get its identity from SPIRE too."""

    name: str
    kind: GatewayKind
    labels: tuple[tuple[str, str], ...]
    namespace: str | None


@dataclass(frozen=True, slots=True)
class Mesh:
    """The Istio installation the bridge configures."""

    istio_namespace: str
    revision: str | None
    profile: str
    cluster_domain: str
    sds: SdsSettings
    gateways: tuple[Gateway, ...]


@dataclass(frozen=True, slots=True)
class MeshService:
    """A Kubernetes service in the mesh that external apps may call."""

    name: str
    namespace: str
    service_account: str
    port: int
    protocol: Protocol
    labels: tuple[tuple[str, str], ...]
    spiffe_id: str
    """Istio's identity for the service's pods: ``spiffe://<td>/ns/<namespace>/sa/<service account>``."""
    dns_names: tuple[str, ...]
    """``<name>.<namespace>.svc.<cluster domain>`` (what external apps dial), then ``<name>.<ns>.svc``."""
    mesh_principals: tuple[str, ...] = ()
    """In-mesh callers' SPIFFE IDs to keep admitting once an ALLOW AuthorizationPolicy selects the pods."""
    mesh_namespaces: tuple[str, ...] = ()
    """In-mesh namespaces whose workloads keep being admitted (same reason)."""
    svid_dns_names: bool | None = None
    """DNS SANs in the service's SVID: ``None`` = exactly when a caller authenticates it by name."""

    @property
    def key(self) -> str:
        """``<namespace>/<name>``: unique within a bridge."""
        return f"{self.namespace}/{self.name}"

    @property
    def fqdn(self) -> str:
        """The DNS name external apps dial and authenticate."""
        return self.dns_names[0]

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def lists_mesh_callers(self) -> bool:
        """Whether the spec lists in-mesh callers (``meshCallers``): an ALLOW policy must then name them."""
        return bool(self.mesh_principals or self.mesh_namespaces)


@dataclass(frozen=True, slots=True)
class Target:
    """A mesh service an external app may call; ``listen_port`` is Ghostunnel's local plain port."""

    service: MeshService
    listen_port: int | None


@dataclass(frozen=True, slots=True)
class SconeSettings:
    """Where and how the external app runs under SCONE: its CAS, session and attestation policy."""

    cas_address: str
    cas_namespace: str
    session_name: str
    """Session name inside ``cas_namespace``; the session's ``name`` is ``<cas_namespace>/<session_name>``."""
    service_name: str
    mrenclaves: tuple[str, ...]
    command: str
    pwd: str
    tolerations: tuple[Toleration, ...]
    ignore_advisories: tuple[str, ...] = ()
    """``security.attestation.ignore_advisories``: with ``outdated-tcb`` tolerated, CAS still refuses
    a platform whose TCB is out of date because of an advisory not listed here (SCONE CAS session
    language, "Attestation Security")."""

    @property
    def qualified_session_name(self) -> str:
        return f"{self.cas_namespace}/{self.session_name}"


@dataclass(frozen=True, slots=True)
class GhostunnelSettings:
    """The confidential Ghostunnel's certificate source and knobs (client mode)."""

    binary: str
    """Path of the SCONE-built Ghostunnel inside the app's image."""
    cert_source: CertSource
    workload_api_addr: str | None
    """``unix:///path`` of the Workload API inside the enclave's view (``workload-api`` source only)."""
    workload_api_selectors: tuple[tuple[str, str], ...]
    """SPIRE selectors ``(type, value)`` attesting the Ghostunnel process (``workload-api`` only)."""
    cert_dir: str
    """Directory inside the enclave where CAS injects ``svid.pem``, ``svid-key.pem``, ``bundle.pem``."""
    timed_reload: str
    status_port: int


@dataclass(frozen=True, slots=True)
class ExternalApp:
    """A SCONE app outside the mesh that calls mesh services with its own SPIFFE identity."""

    name: str
    mode: AppMode
    spiffe_id: str
    parent_id: str
    scone: SconeSettings
    targets: tuple[Target, ...]
    server_auth: bool
    """Network shield only: verify the mesh service's certificate (DNS name, mesh CA). Opt-out: insecure."""
    ghostunnel: GhostunnelSettings | None
    """Set exactly when ``mode == 'ghostunnel'``."""

    @property
    def authenticates_by_dns_name(self) -> bool:
        """Whether this app's TLS client checks the mesh service's DNS name in its certificate.

        The network shield does when server authentication is on; Ghostunnel does when fed from files
        (Go's standard verification runs before ``--verify-uri``; observed with the real binary).
        """
        if self.mode == "network-shield":
            return self.server_auth
        return self.ghostunnel is not None and self.ghostunnel.cert_source == "files"

    @property
    def stores_svid_in_cas(self) -> bool:
        """Whether the app's SVID reaches it through CAS (SVIDStore), not a Workload API socket."""
        return not (self.ghostunnel is not None and self.ghostunnel.cert_source == "workload-api")


@dataclass(frozen=True, slots=True)
class SpireSettings:
    """SPIRE side: the SVIDStore plugin that posts SVIDs into CAS, and ClusterSPIFFEID settings."""

    svidstore_plugin: SvidStorePlugin
    parent_id: str
    """Default SPIRE parent ID of external apps' entries (``""`` when every app sets its own)."""
    cas_connection: str
    """``https://host:port`` of CAS, as the SVIDStore plugin dials it."""
    cas_client_certificate: str
    cas_client_key: str
    trust_anchor_certificate: str
    cas_predecessor_dir: str
    templates_dir: str
    """Where the agent reads the three session templates (the files under ``spire/svidstore-templates``)."""
    bundle_session_name: str
    """Literal name of the CAS session holding the trust bundle (``spire-ca`` secret)."""
    federated_bundles_session_name: str
    cluster_name: str
    class_name: str | None
    """``className`` of our ClusterSPIFFEIDs / ClusterFederatedTrustDomains: which spire-controller-manager
    reconciles them (the hardened chart's watches only its own class)."""
    svid_ttl: int
    """``x509_svid_ttl`` of external apps' entries, seconds."""


@dataclass(frozen=True, slots=True)
class Federation:
    """The external apps' own trust domain, federated with the mesh's only where they are admitted.

    Its SPIRE server (the one the SGX host's agent belongs to) serves its bundle at
    ``bundle_endpoint_url``; the mesh's SPIRE fetches it through a ``ClusterFederatedTrustDomain`` and
    hands it only to the pods whose ``ClusterSPIFFEID`` has ``federatesWith`` it (the apps' targets).
    """

    trust_domain: str
    bundle_endpoint_url: str
    profile: BundleEndpointProfile
    endpoint_spiffe_id: str | None
    """The bundle endpoint server's SPIFFE ID (``https_spiffe`` only)."""


@dataclass(frozen=True, slots=True)
class Bridge:
    """A whole, validated bridge spec."""

    trust_domain: str
    mesh: Mesh
    services: tuple[MeshService, ...]
    apps: tuple[ExternalApp, ...]
    spire: SpireSettings
    federation: Federation | None = None
    _callers: Mapping[str, tuple[ExternalApp, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        callers: dict[str, list[ExternalApp]] = {}
        for app in self.apps:
            for target in app.targets:
                callers.setdefault(target.service.key, []).append(app)
        index = MappingProxyType({key: tuple(apps) for key, apps in callers.items()})
        object.__setattr__(self, "_callers", index)

    def callers_of(self, service: MeshService) -> tuple[ExternalApp, ...]:
        """External apps that declare ``service`` as a target, in spec order."""
        return self._callers.get(service.key, ())

    def in_federation(self, app: ExternalApp) -> bool:
        """Whether ``app``'s SPIFFE ID is in the federated (apps') trust domain, not the mesh's."""
        return self.federation is not None and app.spiffe_id.startswith(
            f"spiffe://{self.federation.trust_domain}/"
        )

    def federates_with(self, service: MeshService) -> tuple[str, ...]:
        """Trust domains the service's SVID entry federates with: the apps' one, if an app in it calls."""
        if self.federation is None:
            return ()
        if any(self.in_federation(a) for a in self.callers_of(service)):
            return (self.federation.trust_domain,)
        return ()

    def needs_dns_names(self, service: MeshService) -> bool:
        """Whether some caller authenticates ``service`` by DNS name (its SVID must carry the names)."""
        return any(a.authenticates_by_dns_name for a in self.callers_of(service))

    def carries_dns_names(self, service: MeshService) -> bool:
        """Whether the service's ClusterSPIFFEID puts its DNS names in its SVID (``svidDnsNames``/auto)."""
        if service.svid_dns_names is not None:
            return service.svid_dns_names
        return self.needs_dns_names(service)
