"""The SDS server's limits, in one frozen value (defaults chosen for one sidecar's SDS server).

Transport limits (message cap, backlog, idle connections: the inherited
:class:`sds_server.grpc_server.Limits`) are enforced by :class:`sds_server.grpc_server.Server`; the rest
by the servicer. Each default names its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from sds_server.errors import SdsConfigError
from sds_server.grpc_server import Limits

UNKNOWN_NAMES_POLICIES = ("hold", "error")


@dataclass(frozen=True, slots=True)
class SdsLimits(Limits):
    """Caps and timeouts of one SDS server (the transport's, and these)."""

    # Envoy opens one SDS stream per secret name; a gateway with many credentialNames stays far below.
    max_names_per_stream: int = 1024
    max_streams_per_uid: int = 2048
    # A push that cannot be written for this long means the client stopped reading: cut it off.
    send_timeout_seconds: float = 10.0
    # A name held (subscribed, not servable) this long gets one warning per (stream, name).
    held_warning_seconds: float = 3.0
    # "hold": keep unknown names pending (SotW allows it); "error": InvalidArgument like SPIRE's agent.
    unknown_names: str = "hold"
    # A default SVID not renewed by this fraction of its lifetime raises svid.rotation_overdue
    # (SPIRE and the embedded Workload API renew at 1/2).
    rotation_overdue_fraction: float = 0.6

    def __post_init__(self) -> None:
        if self.unknown_names not in UNKNOWN_NAMES_POLICIES:
            raise SdsConfigError(
                f"unknown_names: {self.unknown_names!r}: must be one of {', '.join(UNKNOWN_NAMES_POLICIES)}"
            )
        problems = self.not_positive("max_names_per_stream", "max_streams_per_uid", "send_timeout_seconds")
        if problems:
            raise SdsConfigError(problems)
        if not 0 < self.rotation_overdue_fraction < 1:
            raise SdsConfigError(
                f"rotation_overdue_fraction: {self.rotation_overdue_fraction!r}: must be between 0 and 1"
            )
