"""Issue 13 §4: a real ``meshbridge sds serve`` process is one asyncio loop without grpcio.

Checked from outside, through ``/proc``: the thread count of the process, and whether grpcio's runtime
(``grpc/_cython/cygrpc*.so``, which ``import grpc`` always loads) is mapped into it. Memory and speed are
figures, not behaviour: ``bench/sds_fanout.py`` prints them.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.sds_server.wl import mesh_config
from tests.support.workload_api import log_events, running_sds_serve, running_workload_api


def _grpcio_mapped(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if "/grpc/_cython/" in line})


@pytest.fixture
def serving_pid(tmp_path: Path, short_dir: Path) -> Iterator[int]:
    """``meshbridge sds serve`` (``--metrics`` on) once it serves a default SVID; yields its pid."""
    log, metrics = tmp_path / "sds.log", ("--metrics", "127.0.0.1:0")
    with (
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        running_sds_serve(api.address("mesh"), short_dir / "sds.sock", log, *metrics) as proc,
    ):
        yield proc.pid


def test_sds_serve_is_one_thread_while_serving(serving_pid: int, tmp_path: Path) -> None:
    """No watcher thread, no executor, no grpcio poller, no metrics thread: the Workload API stream, every
    SDS stream and the ``--metrics`` endpoint share the main thread's loop."""
    (listening,) = log_events((tmp_path / "sds.log").read_text(), "sds.listening")
    port = listening["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert b"sds_streams_open" in resp.read()
    assert psutil.Process(serving_pid).num_threads() == 1


def test_sds_serve_does_not_load_grpcio(serving_pid: int) -> None:
    assert _grpcio_mapped(serving_pid) == []
