"""Errors of the ``bridge`` package.

Tree::

    BridgeError                   base: anything ``bridge`` raises on purpose (CLI: ``error: …``, exit 2)
    └── SpecError                 the bridge spec is invalid; carries every problem found at once

Messages read ``<field path>: <value!r>: <rule>``.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error raised on purpose by ``bridge``."""


class SpecError(BridgeError):
    """The bridge spec is invalid. ``problems`` lists every ``path: value: rule`` line found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
