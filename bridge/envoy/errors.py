"""Errors of ``bridge.envoy``: one class under ``BridgeError``.

Tree::

    BridgeError
    └── EnvoyError        a bootstrap argument is invalid, or the Envoy process failed / timed out
"""

from __future__ import annotations

from bridge.errors import BridgeError


class EnvoyError(BridgeError):
    """Bad bootstrap input (``<arg>: <value!r>: <rule>``) or an Envoy process problem."""
