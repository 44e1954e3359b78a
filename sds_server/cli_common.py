"""Argument types the ``meshbridge sds`` and ``meshbridge workload-api`` commands share."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """An ``argparse`` type: a decimal integer above zero."""
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: a positive integer")
    return int(value)
