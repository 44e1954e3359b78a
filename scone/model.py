"""Inputs of the SCONE renderers: small frozen values, already validated by the caller.

The bridge spec (``bridge/``) validates names, ports and SPIFFE IDs and builds these values; the
renderers re-check the rules whose violation would give CAS or Ghostunnel something they misread, and
raise :class:`scone.errors.SconeError` (``<field path>: <value!r>: <rule>``).

SPIFFE IDs are plain ``str``: this package never imports ``sds_server`` nor ``istio``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SvidStorePluginName = Literal["sconecas_sessionmanager", "scone_cas_secretsmanager"]
"""The SPIRE agent SVIDStore plugin that posts SVIDs into SCONE CAS (current, or the tutorial's)."""

Toleration = Literal[
    "debug-mode",
    "hyperthreading",
    "outdated-tcb",
    "insecure-igpu",
    "software-hardening-needed",
    "insecure-configuration",
]
"""``security.attestation.tolerate`` values (SCONE CAS session language v0.3, "Attestation Security")."""

CertSource = Literal["files", "workload-api"]
"""Where Ghostunnel gets its SVID: files CAS injects into the enclave, or a SPIFFE Workload API."""

Environment = tuple[tuple[str, str], ...]
"""Extra service environment as ``(name, value)`` pairs (hashable)."""


@dataclass(frozen=True, slots=True)
class Attestation:
    """``security.attestation`` of a session. Every toleration weakens attestation: keep them explicit.

    ``ignore_advisories`` ``("*",)`` renders ``"*"`` (ignore all), which is reported as a warning.
    """

    tolerate: tuple[Toleration, ...] = ()
    ignore_advisories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MeshTarget:
    """A mesh service an external app calls, as the app's TLS client sees it.

    ``spiffe_id`` is the service's SPIFFE ID (``spiffe://<td>/ns/<ns>/sa/<sa>``) — what Ghostunnel
    verifies with ``--verify-uri``; the DNS name dialled is ``<name>.<namespace>.svc.<cluster_domain>``.
    """

    name: str
    namespace: str
    port: int
    spiffe_id: str
    cluster_domain: str = "cluster.local"
    destination_ip: str = "*"

    @property
    def dns_name(self) -> str:
        """``<name>.<namespace>.svc.<cluster_domain>``."""
        return f"{self.name}.{self.namespace}.svc.{self.cluster_domain}"


@dataclass(frozen=True, slots=True)
class SvidStoreSessions:
    """Names of the sessions the SVIDStore plugin posts, and the plugin posting them.

    The SVID session of an app whose own session is ``<ns>/<app>`` is named
    ``<svid_session_prefix><ns>/<app>`` (both plugins build it as prefix + ``session_name`` selector;
    the tutorial plugin *only* supports a prefix). The bundle and federated-bundles sessions have
    literal names: ``sconecas_sessionmanager`` does not reliably substitute their name placeholders.
    """

    plugin: SvidStorePluginName = "sconecas_sessionmanager"
    svid_session_prefix: str = "spire-svid-"
    bundle_session: str = "spire-ca"
    federated_bundles_session: str = "spire-federated-bundles"
    svid_intermediates: bool = False
    """``sconecas_sessionmanager`` at ufcg-lsd/spire 76ebd5c4 (the newest revision of
    ``pkg/agent/plugin/svidstore/sconecas/scone.go``) splits the SVID chain: ``<\\svid>`` is the leaf
    only, ``<\\svid-intermediates>`` the rest (``generateSVIDSessionText``: ``strings.SplitN(svidChain,
    endCertificateStr, 2)``). The SVID template then carries an ``svid-intermediates`` x509-ca secret and
    ``issuer: svid-intermediates``, so ``:chain`` holds SPIRE's intermediate under an UpstreamAuthority.
    Off by default until the demo's CAS emulator models ``issuer``; ``False`` is also right for builds
    before 76ebd5c4 (e.g. 354e6031), where ``<\\svid>`` is the whole chain and
    ``<\\svid-intermediates>`` would stay in the session as literal text."""
    mesh_bundle_federated: bool = False
    """The apps live in their own trust domain, federated with the mesh's: the mesh's CA reaches them
    in the federated-bundles session (the bundles of the trust domains their entries federate with),
    not in the bundle session (their own trust domain's CA)."""

    def svid_session(self, app_session: str) -> str:
        """The name of the session holding the SVID of the app whose session is ``app_session``."""
        return f"{self.svid_session_prefix}{app_session}"


#: Where the SVIDStore plugin keeps its templates and predecessor hashes: persistent, because the plugin
#: cannot recover lost predecessor hashes and ``/run`` is wiped at boot.
SVIDSTORE_STATE_DIR = "/var/lib/spire/svidstore"


@dataclass(frozen=True, slots=True)
class SvidStoreConfig:
    """The SPIRE agent's SVIDStore plugin configuration (paths are on the agent's host).

    ``cas_address`` is the plugin's ``cas_connection_string`` (current) / ``cas_address`` (tutorial),
    e.g. ``https://cas.scone:8081``. ``trust_anchor_certificate`` is the CAS identity certificate (first
    certificate of the chain in ``/cas/config.json`` written by ``scone cas attest``).
    ``insecure_skip_verify_tls`` exists only to be refused loudly (reported as a warning).
    """

    cas_address: str
    cas_client_certificate: str
    cas_client_key: str
    trust_anchor_certificate: str
    sessions: SvidStoreSessions = SvidStoreSessions()
    cas_predecessor_dir: str = f"{SVIDSTORE_STATE_DIR}/predecessors"
    template_dir: str = f"{SVIDSTORE_STATE_DIR}/templates"
    insecure_skip_verify_tls: bool = False


@dataclass(frozen=True, slots=True)
class NetworkShieldApp:
    """An enclave app whose outbound TLS to mesh services is added by SCONE's network shield.

    ``session_name`` is ``<cas namespace>/<name>``. ``server_auth`` ``False`` sets
    ``_SERVER_AUTH=disabled`` (the thesis's setting; insecure, reported as a warning). ``shield_mode``
    ``protected`` refuses every connection not configured; ``unsupported_protocols`` ``unprotected``
    keeps UDP (so DNS lookups of the mesh service names) working — the shield's own default under
    ``protected`` is ``refuse``.
    """

    session_name: str
    service_name: str
    command: str
    mrenclaves: tuple[str, ...]
    targets: tuple[MeshTarget, ...]
    pwd: str = "/"  # noqa: S105 - working directory, not a password
    environment: Environment = ()
    attestation: Attestation = Attestation()
    svidstore: SvidStoreSessions = SvidStoreSessions()
    server_auth: bool = True
    shield_mode: Literal["protected", "unprotected"] = "protected"
    unsupported_protocols: Literal["unprotected", "refuse"] = "unprotected"
    image_name: str | None = None
    version: str = "0.3.10"


@dataclass(frozen=True, slots=True)
class CertFiles:
    """Where Ghostunnel reads its certificate, key and trust bundle (PEM files)."""

    cert: str = "/run/meshbridge/svid.pem"
    key: str = "/run/meshbridge/svid-key.pem"
    cacert: str = "/run/meshbridge/bundle.pem"


@dataclass(frozen=True, slots=True)
class GhostunnelTunnel:
    """One Ghostunnel in client mode: plain ``listen_host:listen_port`` in, mTLS to ``target`` out.

    ``connect_to`` (``host:port``) dials that address instead of the service DNS name and passes the DNS
    name as ``--override-server-name`` (tests, port-forwards). ``status_port`` adds
    ``--status 127.0.0.1:<port>`` (``/_status``, ``/_metrics``). ``cert_source`` ``files`` reads
    ``files`` with ``--timed-reload``; ``workload-api`` uses ``--use-workload-api-addr``.
    """

    target: MeshTarget
    listen_port: int
    listen_host: str = "127.0.0.1"
    cert_source: CertSource = "files"
    files: CertFiles = CertFiles()
    workload_api_addr: str = "unix:///run/spire/sockets/agent.sock"
    timed_reload: str = "5m"
    status_port: int | None = None
    connect_to: str | None = None
    connect_timeout: str | None = None


@dataclass(frozen=True, slots=True)
class GhostunnelApp:
    """A confidential (SCONE-built) Ghostunnel run by CAS: one service per tunnel.

    With ``files`` tunnels the session imports the SVID and bundle and has CAS inject them into the
    enclave as files (``images[image_name].injection_files``) after attestation.
    """

    session_name: str
    mrenclaves: tuple[str, ...]
    tunnels: tuple[GhostunnelTunnel, ...]
    binary: str = "/usr/local/bin/ghostunnel"
    image_name: str = "ghostunnel"
    pwd: str = "/"  # noqa: S105 - working directory, not a password
    attestation: Attestation = Attestation()
    svidstore: SvidStoreSessions = SvidStoreSessions()
    version: str = "0.3.10"


@dataclass(frozen=True, slots=True)
class RenderWarning:
    """A setting that works but weakens security; the CLI prints these (``warning: <str>``)."""

    path: str
    value: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.value!r}: {self.message}"


@dataclass(frozen=True, slots=True)
class RenderedSession:
    """A CAS session (plain dict for ``yaml.safe_dump``) and what is worth warning about in it."""

    session: dict[str, object]
    warnings: tuple[RenderWarning, ...] = ()


@dataclass(frozen=True, slots=True)
class RenderedText:
    """A text artifact (HCL, template) and what is worth warning about in it."""

    text: str
    warnings: tuple[RenderWarning, ...] = ()
