"""Issue 13 §4: a real ``meshbridge sds serve`` process is one asyncio loop without grpcio.

Checked from outside, through ``/proc``: the thread count of the process, and whether grpcio's runtime
(``grpc/_cython/cygrpc*.so``, which ``import grpc`` always loads) is mapped into it. Memory and speed are
figures, not behaviour: ``bench/sds_fanout.py`` prints them.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from tests.sds_server.wl import mesh_config
from tests.support.workload_api import running_sds_serve, running_workload_api, wait_for


def _serving(sock: Path) -> bool:
    async def check() -> bool:
        ch = Channel(path=str(sock))
        try:
            resp = await HealthStub(ch).Check(HealthCheckRequest(service=""), timeout=2)
        except (TimeoutError, OSError):
            return False
        finally:
            ch.close()
        return bool(resp.status == HealthCheckResponse.SERVING)

    return asyncio.run(check())


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line in /proc/PID/status")


def _grpcio_mapped(pid: int) -> list[str]:
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split()[-1] for line in maps if "/grpc/_cython/" in line})


@pytest.fixture
def serving_pid(tmp_path: Path, short_dir: Path) -> Iterator[int]:
    """``meshbridge sds serve`` (``--metrics`` on) once it serves a default SVID; yields its pid."""
    sock = short_dir / "sds.sock"
    with (
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        running_sds_serve(
            api.address("mesh"), sock, tmp_path / "sds.log", "--metrics", "127.0.0.1:0"
        ) as proc,
    ):
        wait_for(lambda: _serving(sock), 30, "health SERVING")
        yield proc.pid


def _metrics_port(log: Path) -> int:
    for line in log.read_text().splitlines():
        if '"sds.listening"' in line:
            port: int = json.loads(line)["metrics_port"]
            return port
    raise AssertionError(f"no sds.listening event:\n{log.read_text()}")


def test_sds_serve_is_one_thread_while_serving(serving_pid: int, tmp_path: Path) -> None:
    """No watcher thread, no executor, no grpcio poller, no metrics thread: the Workload API stream, every
    SDS stream and the ``--metrics`` endpoint share the main thread's loop."""
    port = _metrics_port(tmp_path / "sds.log")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert b"sds_streams_open" in resp.read()
    assert _threads(serving_pid) == 1


def test_sds_serve_does_not_load_grpcio(serving_pid: int) -> None:
    assert _grpcio_mapped(serving_pid) == []
