"""The server around the servicer: health, metrics, socket mode, caller UIDs, resilience, logs, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import structlog
from grpclib import GRPCError
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from sds_server.errors import SdsConfigError
from sds_server.server import ServerConfig
from sds_server.testing import publish_mismatched_key, run_in_thread
from tests.sds_server.client import channel, secrets_of, sotw
from tests.sds_server.wl import mesh_config
from tests.support.pki import MiniCa
from tests.support.workload_api import running_sds_serve, running_workload_api


def _health(sock: Path, service: str = "") -> int:
    async def check() -> int:
        ch = Channel(path=str(sock))
        try:
            resp = await HealthStub(ch).Check(HealthCheckRequest(service=service), timeout=5)
            return int(resp.status)
        finally:
            ch.close()

    return asyncio.run(check())


GRPCIO_HEALTH = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel("unix:" + sys.argv[1]) as ch:
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))
"""


def _health_grpcio(sock: Path) -> str:
    """grpcio's own ``grpc.health.v1`` client (what probes use), in a subprocess: grpcio's and grpclib's
    generated health modules register the same proto names and cannot share one process."""
    res = subprocess.run(
        [sys.executable, "-c", GRPCIO_HEALTH, str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return res.stdout.strip() or res.stderr.strip().splitlines()[-1]


def test_health_serving_only_once_the_first_svid_is_held(short_dir: Path, ca: MiniCa) -> None:
    with run_in_thread(ServerConfig(listen=short_dir / "sds.sock")) as running:
        sock = running.server.config.listen
        assert _health(sock) == HealthCheckResponse.NOT_SERVING
        running.server.source.publish([ca.issue("/w").svid()], [ca.bundle()])
        running.wait_first_secret(5)
        assert _health(sock) == HealthCheckResponse.SERVING
        assert _health(sock, "envoy.service.secret.v3.SecretDiscoveryService") == HealthCheckResponse.SERVING


def test_socket_mode_default_0600_and_configurable(short_dir: Path) -> None:
    with run_in_thread(ServerConfig(listen=short_dir / "a.sock")):
        assert stat.S_IMODE((short_dir / "a.sock").stat().st_mode) == 0o600
    assert not (short_dir / "a.sock").exists()  # removed on stop
    with run_in_thread(
        ServerConfig(listen=short_dir / "b.sock", socket_mode=0o660, socket_owner=os.getuid())
    ):
        st = (short_dir / "b.sock").stat()
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_uid == os.getuid()


def test_allowed_uids_checked_per_connection(short_dir: Path, ca: MiniCa) -> None:
    me = os.getuid()
    with run_in_thread(
        ServerConfig(listen=short_dir / "no.sock", allowed_uids=frozenset({me + 4242}))
    ) as running:
        with pytest.raises(GRPCError) as err:
            _health(short_dir / "no.sock")
        assert err.value.status is Status.PERMISSION_DENIED
        assert running.server.metrics.denied_connections._value.get() == 1
    with run_in_thread(ServerConfig(listen=short_dir / "yes.sock", allowed_uids=frozenset({me}))):
        assert _health(short_dir / "yes.sock") == HealthCheckResponse.NOT_SERVING


def test_metrics_endpoint(short_dir: Path, ca: MiniCa) -> None:
    cfg = ServerConfig(listen=short_dir / "sds.sock", metrics_address=("127.0.0.1", 0))
    with run_in_thread(cfg) as running:
        running.server.source.publish([ca.issue("/ns/x/sa/y").svid()], [ca.bundle()])
        running.wait_first_secret(5)

        async def one_stream() -> None:
            async with channel(cfg.listen) as ch, sotw(ch) as s:
                await s.request(["default"])
                await s.ack(["default"], await s.recv())
                await s.nothing(0.2)

        asyncio.run(one_stream())
        port = running.server.metrics_port
        deadline = time.monotonic() + 5
        while True:  # the stream's close is processed asynchronously
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if 'sds_streams_open{api="sotw"} 0.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    for name in (
        'sds_responses_sent_total{api="sotw"} 1.0',
        'sds_acks_total{api="sotw"} 1.0',
        'sds_nacks_total{api="sotw"} 0.0',
        'sds_streams_open{api="sotw"} 0.0',
        "workload_api_connected 0.0",
        "workload_api_reconnects_total 0.0",
        'sds_svid_seconds_to_expiry{serial="',
    ):
        assert name in text, name


def test_expired_svid_withheld_loudly(short_dir: Path, ca: MiniCa) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    expired = ca.issue("/ns/x/sa/old", ttl=dt.timedelta(minutes=1), not_before=past)
    with (
        structlog.testing.capture_logs() as logs,
        run_in_thread(ServerConfig(listen=short_dir / "sds.sock")) as running,
    ):
        running.server.source.publish([expired.svid()], [ca.bundle()])
        deadline = time.monotonic() + 5
        while running.server.servicer.snapshot is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running.server.servicer.snapshot is not None
        assert running.server.servicer.snapshot.get("default") is None
        assert running.server.metrics.svids_expired_withheld._value.get() == 1
        assert _health(short_dir / "sds.sock") == HealthCheckResponse.NOT_SERVING
    errors = [e for e in logs if e["event"] == "svid.expired.withheld"]
    assert errors
    assert errors[0]["log_level"] == "error"
    assert errors[0]["spiffe_id"] == expired.spiffe_id


def test_down_at_start_then_permission_denied_then_served(tmp_path: Path, short_dir: Path) -> None:
    """Workload API absent at start → server up, stream waits; no entry → PermissionDenied logged and
    retried; entry added (SIGHUP reload) → the waiting stream gets its secret."""
    wl_dir = Path(short_dir / "wl")
    wl_dir.mkdir()
    sock = wl_dir / "api.sock"
    nobody = mesh_config()
    for e in nobody["entries"]:
        e["selectors"] = [f"unix:uid:{os.getuid() + 4242}"]
    nobody["sockets"] = [
        {"name": "mesh", "path": str(sock), "mode": "0777"},
        {"name": "ext", "path": str(wl_dir / "ext.sock"), "mode": "0777"},
    ]
    cfg = ServerConfig(listen=short_dir / "sds.sock", workload_api=f"unix://{sock}")
    with structlog.testing.capture_logs() as logs, run_in_thread(cfg) as running:

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            async with channel(cfg.listen) as ch, sotw(ch) as s:
                await s.request(["default", "ROOTCA"])
                await s.nothing(0.5)  # Workload API down: held
                with running_workload_api(nobody, tmp_path / "wl") as api:
                    m = running.server.metrics
                    for _ in range(100):
                        if m.workload_api_permission_denied._value.get() >= 1:
                            break
                        await asyncio.sleep(0.1)
                    assert m.workload_api_permission_denied._value.get() >= 1
                    await s.nothing(0.2)
                    allowed = mesh_config()
                    allowed["sockets"] = nobody["sockets"]
                    await loop.run_in_executor(None, api.reload, allowed)
                    resp = await s.recv(wait=40)  # next retry (backoff ≤ a few s) gets the SVID
                    assert set(secrets_of(resp)) == {"default", "ROOTCA"}

        asyncio.run(scenario())
    denied = [e for e in logs if e["event"] == "sds.source.permission_denied"]
    assert denied
    assert "no registration entry for this workload" in denied[0]["hint"]


def test_logs_never_contain_key_material(tmp_path: Path, short_dir: Path) -> None:
    with (
        structlog.testing.capture_logs() as logs,
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        run_in_thread(
            ServerConfig(listen=short_dir / "sds.sock", workload_api=api.address("mesh"))
        ) as running,
    ):
        running.wait_first_secret(20)

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            async with channel(short_dir / "sds.sock") as ch, sotw(ch) as s:
                await s.request(["default", "ROOTCA"])
                await s.ack(["default", "ROOTCA"], await s.recv())
                await loop.run_in_executor(None, api.rotate)
                await s.ack(["default", "ROOTCA"], await s.recv())
                await loop.run_in_executor(None, publish_mismatched_key, running.server.source)
                bad = await s.recv()
                await s.request(["default", "ROOTCA"], nonce=bad.nonce, error="KEY_VALUES_MISMATCH")
                await s.nothing(0.3)

        asyncio.run(scenario())
        snap = running.server.servicer.snapshot
        assert snap is not None
        keys = [s.key_pem for s in snap.svids]
    assert any(e["event"] == "svid.rotated" for e in logs)
    assert any(e["event"] == "sds.nack" for e in logs)
    bodies = [k.split(b"\n")[1].decode() for k in keys]
    for event in logs:
        for value in event.values():
            text = str(value)
            assert "PRIVATE KEY" not in text
            assert not any(b in text for b in bodies)


def test_cli_sigterm_drains_and_exits_0_within_5s(tmp_path: Path, short_dir: Path) -> None:
    sock, log = short_dir / "sds.sock", tmp_path / "sds.log"
    with (
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        running_sds_serve(api.address("mesh"), sock, log, "--socket-mode", "0640") as proc,
    ):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o640
        assert _health_grpcio(sock) == "SERVING"

        async def hold_stream_then_terminate() -> float:
            elapsed = -1.0
            try:
                async with channel(sock) as ch, sotw(ch) as s:
                    await s.request(["default"])
                    await s.recv()
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10)
                    elapsed = time.monotonic() - t0
            except StreamTerminatedError:
                pass  # the server closed our stream while draining: expected
            return elapsed

        elapsed = asyncio.run(hold_stream_then_terminate())
        assert proc.returncode == 0
        print(f"\nSIGTERM → exit: {elapsed:.2f} s")
        assert 0 <= elapsed < 5
        assert not sock.exists()
    assert '"event": "sds.stopped"' in log.read_text()


def test_cli_bad_options_exit_2(short_dir: Path) -> None:
    cmd = [sys.executable, "-m", "bridge.cli", "sds", "serve", "--workload-api", "unix:///nope", "--listen",
           str(short_dir / "x.sock"), "--metrics", "nohostport"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 2
    assert res.stderr.strip().endswith(
        "error: --metrics: 'nohostport': expected HOST:PORT, e.g. 127.0.0.1:9102"
    )


@pytest.mark.parametrize("address", ["relative/agent.sock", "unix://host/agent.sock", "unix:agent.sock"])
def test_cli_unusable_workload_api_address_exit_2(short_dir: Path, address: str) -> None:
    """An address py-spiffe can never connect to is bad input, not an endless retry loop."""
    cmd = [sys.executable, "-m", "bridge.cli", "sds", "serve", "--workload-api", address,
           "--listen", str(short_dir / "x.sock")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: workload_api: {address!r}: expected unix:///"), last
    assert not (short_dir / "x.sock").exists()


def test_cli_busy_metrics_port_exit_2_and_nothing_left_behind(short_dir: Path) -> None:
    """A metrics address in use is bad input: one error line, exit 2, no SDS socket file left behind."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        sock = short_dir / "sds.sock"
        cmd = [sys.executable, "-m", "bridge.cli", "sds", "serve", "--workload-api",
               f"unix://{short_dir}/absent.sock", "--listen", str(sock),
               "--metrics", f"127.0.0.1:{port}"]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --metrics: '127.0.0.1:{port}': cannot listen"), last
    assert not sock.exists()


def test_start_failure_leaves_no_socket_or_metrics_port(short_dir: Path) -> None:
    """In-process: the SDS socket binds, then the metrics port fails → the socket is not left behind."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = ServerConfig(listen=short_dir / "sds.sock", metrics_address=("127.0.0.1", port))
        with pytest.raises(SdsConfigError, match="cannot listen"), run_in_thread(cfg):
            pass
    assert not cfg.listen.exists()


def test_cached_svid_withheld_when_it_expires_while_workload_api_is_down(
    tmp_path: Path, short_dir: Path
) -> None:
    cfg = mesh_config()
    cfg["svid_ttl"] = "4s"
    with (
        structlog.testing.capture_logs() as logs,
        running_workload_api(cfg, tmp_path / "wl", sockets=("mesh", "ext")) as api,
        run_in_thread(
            ServerConfig(listen=short_dir / "sds.sock", workload_api=api.address("mesh"))
        ) as running,
    ):
        running.wait_first_secret(20)
        assert _health(short_dir / "sds.sock") == HealthCheckResponse.SERVING
        api.stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            snap = running.server.servicer.snapshot  # swapped on the loop after the source rebuilt it
            if snap is not None and snap.get("default") is None:
                break
            time.sleep(0.1)
        assert running.server.metrics.svids_expired_withheld._value.get() == 1
        snap = running.server.servicer.snapshot
        assert snap is not None
        assert snap.get("default") is None  # withheld: never served past NotAfter
        assert snap.get("ROOTCA") is not None  # the bundle is still served
        assert _health(short_dir / "sds.sock") == HealthCheckResponse.NOT_SERVING
    assert any(e["event"] == "svid.expired.withheld" and e["log_level"] == "error" for e in logs)


def _connect_as(uid: int, path: Path) -> int:
    """Fork, drop to ``uid`` and connect to the Unix socket; return the child's errno (0 = connected)."""
    pid = os.fork()
    if pid == 0:  # child: only syscalls, then _exit
        code = 0
        try:
            os.setgid(65534)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            s.close()
        except OSError as exc:
            code = exc.errno or 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the socket and act as other UIDs")
def test_socket_owner_1337_mode_0600_kernel_lets_only_owner_in(short_dir: Path) -> None:
    short_dir.chmod(0o755)  # let other users reach the socket file itself
    sock = short_dir / "sds.sock"
    with run_in_thread(ServerConfig(listen=sock, socket_owner=1337)):
        st = sock.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1337, 0o600)
        assert _connect_as(1337, sock) == 0  # istio-proxy's UID
        assert _connect_as(65534, sock) == errno.EACCES  # anyone else: refused by the kernel


def test_live_but_busy_socket_is_neither_replaced_nor_waited_on(short_dir: Path) -> None:
    """A server that holds the path but does not accept (backlog full) is not a stale socket."""
    path = short_dir / "sds.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen(0)
        inode = path.stat().st_ino
        fillers = []
        try:
            for _ in range(3):  # fill the accept queue: further connects get EAGAIN / would block
                f = socket.socket(socket.AF_UNIX)
                f.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    f.connect(str(path))
                fillers.append(f)
            t0 = time.monotonic()
            with (
                pytest.raises(SdsConfigError, match="refusing to replace it"),
                run_in_thread(ServerConfig(listen=path)),
            ):
                pass
            assert time.monotonic() - t0 < 10
            assert path.stat().st_ino == inode  # still the live server's socket
        finally:
            for f in fillers:
                f.close()
