"""The Go peers ``make peers`` builds, for tests: skip only where ``go`` itself is missing, else fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bridge.binaries import find_peer


def require_peer(name: str) -> Path:
    """The binary of peer ``name``; without one, skip (no ``go`` to build it) or fail (run ``make peers``)."""
    path = find_peer(name)
    if path is not None:
        return path
    if shutil.which("go") is None:
        pytest.skip(f"no {name}: 'go' is not installed, so 'make peers' cannot build it")
    pytest.fail(f"no {name} binary although go is installed: run 'make peers' (builds .peers/bin/{name})")
