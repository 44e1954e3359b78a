"""Errors of the embedded Workload API (``sds_server.workload_api``).

Tree::

    SdsError                      (sds_server.errors) base of the whole sds_server package
    └── WorkloadApiError          base of the embedded Workload API
        ├── ConfigError           the config (YAML, command line, limits) is invalid; ``problems`` lists each
        ├── CaError               the local CA cannot load, mint or rotate
        ├── CallerChangedError    the caller is no longer the process (uid/gid) that connected
        ├── JwtSvidError          a JWT-SVID is malformed, badly signed, expired or for another audience
        └── SocketError           a Workload API socket cannot be served (in use by a live server, …)

Messages read ``<what>: <value!r>: <rule>``. The CLI prints ``error: <message>`` and exits 2.
"""

from __future__ import annotations

from collections.abc import Sequence

from sds_server.errors import SdsError


class WorkloadApiError(SdsError):
    """Base of every error raised on purpose by the embedded Workload API."""


class ConfigError(WorkloadApiError):
    """The Workload API config is invalid.

    ``problems: list[str]`` holds every problem found (``<path>: <value!r>: <rule>``), as
    ``SdsConfigError`` and ``bridge.errors.SpecError`` do, so a user fixes them all in one go;
    ``source`` names the file (or ``command line``) and prefixes the message.
    """

    def __init__(self, problems: Sequence[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            message = f"{source}: {len(self.problems)} problems:\n{lines}"
        super().__init__(message)


class CaError(WorkloadApiError):
    """The local CA cannot do what was asked."""


class CallerChangedError(WorkloadApiError):
    """The process behind a connection now runs as another uid/gid than when it connected."""


class JwtSvidError(WorkloadApiError):
    """A JWT-SVID does not validate (JWT-SVID.md)."""


class SocketError(WorkloadApiError):
    """A Workload API socket cannot be bound or is in use by a live server."""
