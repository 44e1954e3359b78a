"""Errors of the demo: one class under the package base, so the CLI prints ``error: …`` and exits 2.

Tree::

    BridgeError (bridge.errors)
    └── DemoError        the demo cannot set itself up (a binary missing, a process died, a rendered
                         artifact it needs is absent or malformed — a wrong session fails here)
"""

from __future__ import annotations

from bridge.errors import BridgeError


class DemoError(BridgeError):
    """The demo cannot run: the message names what is wrong and what to do."""
