"""What each ``meshbridge`` bridge command is asked to do: one frozen dataclass per command.

``bridge.cli`` builds these from the parsed ``argparse.Namespace`` (the only place that reads it) and
calls the command functions of :mod:`bridge.commands` with them; tests build them directly and call the
same functions in-process. Fields keep the flags' values as typed (paths, tuples, booleans, ``Literal``
choices) but unvalidated: :mod:`bridge.flags` checks them when it turns them into model objects, so every
problem is reported at once as ``--flag: 'value': rule``. Each field declares its flag (``bridge.cli``
derives it): no default = a required flag, else the field's default; a tuple = a repeatable flag named in
the singular; a ``bool`` defaulting to true = a ``--no-…`` switch; a ``Literal`` = the flag's choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bridge.model import SVIDSTORE_PLUGINS, CertSource, SvidStorePlugin
from bridge.spec import DEFAULT_SDS_IMAGE, DEFAULT_WORKLOAD_API_SOCKET
from bridge.spec_scone import (
    DEFAULT_GHOSTUNNEL_BINARY,
    DEFAULT_GHOSTUNNEL_CERT_DIR,
    DEFAULT_GHOSTUNNEL_WORKLOAD_API,
)
from scone.model import SVIDSTORE_STATE_DIR, Toleration

__all__ = [
    "ApplyParams",
    "CheckParams",
    "ClusterParams",
    "DiffParams",
    "Format",
    "IstioOverlayParams",
    "IstioPolicyParams",
    "RenderParams",
    "SconeAppParams",
    "SconeGhostunnelParams",
    "SconeNetworkShieldParams",
    "SpecSource",
    "SpireEntriesParams",
    "SpireSvidstoreParams",
    "SvidstoreTemplate",
]

Format = Literal["yaml", "json"]
SvidstoreTemplate = Literal["svid", "bundle", "federated-bundles"]
SpecSource = str | Path
"""A bridge spec: a file, or ``"-"`` for stdin."""

_PLUGIN: SvidStorePlugin = SVIDSTORE_PLUGINS[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderParams:
    """``meshbridge render -f FILE -o DIR [--session-hash SESSION=HASH ...]``."""

    file: SpecSource
    output: str | Path  # as given: the summary line echoes the user's spelling ("out/")
    session_hashes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckParams:
    """``meshbridge check -f FILE``."""

    file: SpecSource


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterParams:
    """What ``apply`` and ``diff`` share: the spec and how to reach the cluster."""

    file: SpecSource
    kubeconfig: str | None = None
    context: str | None = None
    request_timeout: float = 10.0
    prune: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffParams(ClusterParams):
    """``meshbridge diff -f FILE [--prune] …``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyParams(ClusterParams):
    """``meshbridge apply -f FILE [--dry-run=server] [--prune] [--force-conflicts] …``."""

    dry_run: bool = False
    force_conflicts: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class IstioOverlayParams:
    """``meshbridge istio overlay --trust-domain TD …``."""

    trust_domain: str
    sds_image: str = DEFAULT_SDS_IMAGE
    istio_namespace: str = "istio-system"
    revision: str | None = None
    workload_api_socket: str = DEFAULT_WORKLOAD_API_SOCKET
    ingress_gateway: bool = True
    output: Format = "yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class IstioPolicyParams:
    """``meshbridge istio policy --service SVC --allow SPIFFE_ID …``; ``labels`` are ``KEY=VALUE``."""

    service: str
    allow: tuple[str, ...]
    namespace: str = "default"
    labels: tuple[str, ...] = ()
    allow_namespaces: tuple[str, ...] = ()
    allow_principals: tuple[str, ...] = ()
    istio_namespace: str = "istio-system"
    peer_authentication: bool = True
    output: Format = "yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpireEntriesParams:
    """``meshbridge spire entries --spiffe-id ID --parent-id ID …``; ``selectors`` are ``TYPE:VALUE``."""

    spiffe_id: str
    parent_id: str
    cas_session: str | None = None
    session_hash: str | None = None
    selectors: tuple[str, ...] = ()
    plugin: SvidStorePlugin = _PLUGIN
    ttl: str = "1h"
    script: bool = False
    output: Format = "json"


@dataclass(frozen=True, slots=True, kw_only=True)
class SpireSvidstoreParams:
    """``meshbridge spire svidstore --cas URL --client-cert F --client-key F --trust-anchor F …``."""

    cas: str
    client_cert: str
    client_key: str
    trust_anchor: str
    plugin: SvidStorePlugin = _PLUGIN
    templates_dir: str = f"{SVIDSTORE_STATE_DIR}/templates"  # persistent: see scone.model
    predecessor_dir: str = f"{SVIDSTORE_STATE_DIR}/predecessors"
    bundle_session: str = "spire-bundle"
    federated_bundles_session: str = "spire-federated-bundles"
    template: SvidstoreTemplate | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SconeAppParams:
    """What both ``scone`` commands share; ``targets`` are ``SVC.NAMESPACE:PORT[=SPIFFE_ID]``."""

    session: str
    mrenclaves: tuple[str, ...]
    targets: tuple[str, ...]
    trust_domain: str | None = None
    cluster_domain: str = "cluster.local"
    tolerate: tuple[Toleration, ...] = ()
    pwd: str = "/"  # noqa: S105 - the enclave's working directory, not a password
    bundle_session: str = "spire-bundle"
    plugin: SvidStorePlugin = _PLUGIN
    output: Format = "yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class SconeNetworkShieldParams:
    """``meshbridge scone network-shield --service NAME --command CMD …``."""

    app: SconeAppParams
    service: str
    command: str
    server_auth: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SconeGhostunnelParams:
    """``meshbridge scone ghostunnel …``; ``listen_ports`` one per target, or none (the targets' ports)."""

    app: SconeAppParams
    listen_ports: tuple[int, ...] = ()
    cert_source: CertSource = "files"
    workload_api_addr: str = DEFAULT_GHOSTUNNEL_WORKLOAD_API
    cert_dir: str = DEFAULT_GHOSTUNNEL_CERT_DIR
    timed_reload: str = "1m"
    status_port: int = 6060
    binary: str = DEFAULT_GHOSTUNNEL_BINARY
    command_line: bool = False
