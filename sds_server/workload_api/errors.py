"""Errors of the embedded Workload API (``sds_server.workload_api``).

Tree::

    WorkloadApiError              base
    ├── ConfigError               the YAML config is invalid (every problem with its path)
    └── CaError                   the local CA cannot load, mint or rotate
"""

from __future__ import annotations


class WorkloadApiError(Exception):
    """Base of every error raised on purpose by the embedded Workload API."""


class ConfigError(WorkloadApiError):
    """The Workload API config is invalid."""


class CaError(WorkloadApiError):
    """The local CA cannot do what was asked."""
