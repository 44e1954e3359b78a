"""Errors of the ``istio`` package.

Tree::

    IstioError        base: an input the Istio/SPIRE renderers cannot turn into a working document

Messages read ``<field path>: <value!r>: <rule>``. The bridge spec validates first, so in practice
these fire only when a caller builds the model values by hand.
"""

from __future__ import annotations


class IstioError(Exception):
    """Base of every error raised on purpose by ``istio``."""


def raise_problems(problems: list[str]) -> None:
    """Raise one :class:`IstioError` listing every problem found, one a line (none: return)."""
    if problems:
        raise IstioError("\n".join(problems))
