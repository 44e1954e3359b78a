"""Envoy for meshbridge: pure bootstrap builders and a runner for the real binary."""

from __future__ import annotations

from bridge.envoy.bootstrap import (
    DEFAULT_NODE_ID,
    SDS_CLUSTER,
    SourceRule,
    egress_bootstrap,
    sds_cluster,
    sds_config,
    sidecar_bootstrap,
)
from bridge.envoy.errors import EnvoyError
from bridge.envoy.process import EnvoyProcess, running_envoy

__all__ = [
    "DEFAULT_NODE_ID",
    "SDS_CLUSTER",
    "EnvoyError",
    "EnvoyProcess",
    "SourceRule",
    "egress_bootstrap",
    "running_envoy",
    "sds_cluster",
    "sds_config",
    "sidecar_bootstrap",
]
