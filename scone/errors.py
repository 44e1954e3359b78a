"""Errors of the ``scone`` package.

Tree::

    SconeError        base: an input the SCONE/SVIDStore renderers cannot turn into a working artifact

Messages read ``<field path>: <value!r>: <rule>``. The bridge spec validates first, so in practice
these fire only when a caller builds the model values by hand.
"""

from __future__ import annotations


class SconeError(Exception):
    """Base of every error raised on purpose by ``scone``."""


def raise_problems(problems: list[str]) -> None:
    """Raise one :class:`SconeError` listing every problem found, one a line (none: return)."""
    if problems:
        raise SconeError("\n".join(problems))
