"""Subcommands of this subsystem (placeholder until its owner fills it in)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this subsystem's subcommands to ``meshbridge``."""
