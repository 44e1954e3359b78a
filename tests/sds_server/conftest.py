"""Fixtures for the SDS suite: short socket dirs, test CAs, an SDS server on a static source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sds_server.server import ServerConfig
from sds_server.testing import RunningServer, run_in_thread
from tests.support.pki import MiniCa


@pytest.fixture(scope="session")
def ca() -> MiniCa:
    return MiniCa.create("example.org")


@pytest.fixture
def static_server(short_dir: Path) -> Iterator[RunningServer]:
    """An SDS server in a background thread, fed by a ``StaticSource`` (``server.source.publish``)."""
    with run_in_thread(ServerConfig(listen=short_dir / "sds.sock")) as running:
        yield running


@pytest.fixture
def file_server(short_dir: Path) -> Iterator[tuple[RunningServer, Path]]:
    """An SDS server serving file-mounted credentials (``file-cert:``/``file-root:``) from ``creds/``."""
    creds = short_dir / "creds"
    creds.mkdir()
    cfg = ServerConfig(listen=short_dir / "sds.sock", file_credentials_dirs=(creds,), file_poll_seconds=0.1)
    with run_in_thread(cfg) as running:
        yield running, creds
