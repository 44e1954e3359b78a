"""Issue 13 §2/§3 through a real ``meshbridge sds serve`` process and its JSON logs.

* ``sds.name.held``: a real grpclib client and a real grpcio client subscribe to names nothing serves;
  each (stream, name) is warned about once, after the hold period (3 s), never again while the stream
  stays, and never for a name that is served.
* A client whose connection breaks while a push is being written (a raw HTTP/2 client whose stream
  window is too small for the push, then closes its socket): the push ends with its stream, logged at
  debug, never at error, and is not reported as a client that stopped reading (before the fix it waited
  out the 10 s send timeout and logged ``sds.stream.send_timeout`` for a stream already gone); the
  server keeps serving. An *unexpected*
  push error (logged at error) is by construction a bug in the server: every error a client can cause is
  a transport error (``GRPCError``, ``ConnectionError``/``OSError``, ``TimeoutError``, grpclib's stream
  errors), so it cannot be provoked from outside without a test hook in the production module.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from sds_server.secrets import SECRET_TYPE_URL
from tests.sds_server.client import SERVICE, channel, sotw, sotw_request
from tests.sds_server.wl import mesh_config
from tests.support.workload_api import log_events, running_sds_serve, running_workload_api, wait_for

UNKNOWN_1 = "spiffe://example.org/nobody"
UNKNOWN_2 = "spiffe://elsewhere.test"
HOLD = 3.0  # SdsLimits.held_warning_seconds (not a CLI option)


def _events(log: Path, name: str | None = None) -> list[dict[str, Any]]:
    return log_events(log.read_text(), name)


def _held(log: Path) -> list[tuple[str, str]]:
    return sorted((e["node"], e["name"]) for e in _events(log, "sds.name.held"))


def test_held_name_warned_once_per_stream_and_name_real_clients(tmp_path: Path, short_dir: Path) -> None:
    log = tmp_path / "sds.log"
    sock = short_dir / "sds.sock"
    with (
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        running_sds_serve(api.address("mesh"), sock, log),
    ):

        async def scenario() -> None:
            started = time.monotonic()
            grpcio = grpc.aio.insecure_channel(f"unix:{sock}")
            call = grpcio.stream_stream(
                SERVICE + "StreamSecrets",
                request_serializer=DiscoveryRequest.SerializeToString,
                response_deserializer=DiscoveryResponse.FromString,
            )()
            try:
                async with channel(sock) as ch, sotw(ch) as a:
                    # grpclib stream "a": one served name, two held; ACKed and re-sent (same names)
                    names = ["default", UNKNOWN_1, UNKNOWN_2]
                    await a.request(names, node="node-a")
                    resp = await a.recv()
                    await a.request(names, node="node-a", version=resp.version_info, nonce=resp.nonce)
                    # grpcio stream "b": only a held name (no response expected)
                    await call.write(sotw_request([UNKNOWN_1], node="node-b"))
                    wait = time.monotonic() + 15
                    while len(_held(log)) < 3 and time.monotonic() < wait:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                    first = _held(log)
                    assert time.monotonic() - started >= HOLD  # not before the hold period
                    # keep both streams open two more hold periods: no repeat
                    await asyncio.sleep(2 * HOLD)
                    assert _held(log) == first
            finally:
                call.cancel()
                await grpcio.close()

        asyncio.run(scenario())

    assert _held(log) == sorted([("node-a", UNKNOWN_1), ("node-a", UNKNOWN_2), ("node-b", UNKNOWN_1)])
    warnings = _events(log, "sds.name.held")
    assert all(e["level"] == "warning" and e["seconds"] >= HOLD for e in warnings)
    assert all(e["known"] is False for e in warnings)


# ---- a connection that breaks mid-push ----------------------------------------------------------
def _grpc_frame(msg: bytes) -> bytes:
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


class _TinyWindowClient:
    """A raw HTTP/2 client (h2, no gRPC library) whose stream window is ``window`` bytes and which never
    sends WINDOW_UPDATE: a push bigger than what is left blocks in the server's write."""

    def __init__(self, sock_path: Path, window: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(sock_path))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.sock.sendall(self.conn.data_to_send())
        self.received = 0

    def open_sotw(self, names: list[str]) -> None:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", SERVICE + "StreamSecrets"),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        self.conn.send_data(
            sid, _grpc_frame(sotw_request(names, node="node-tiny-window").SerializeToString())
        )
        self.sock.sendall(self.conn.data_to_send())

    def read_until(self, nbytes: int, timeout: float) -> int:
        """Read until ``nbytes`` of DATA arrived in total (no WINDOW_UPDATE is ever sent)."""
        deadline = time.monotonic() + timeout
        while self.received < nbytes and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            for ev in self.conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    self.received += len(ev.data)
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)  # SETTINGS/PING acks only
        return self.received

    def close(self) -> None:
        self.sock.close()  # no GOAWAY, no RST_STREAM: the peer just goes


def test_connection_broken_mid_push_is_a_dead_client_not_an_error(tmp_path: Path, short_dir: Path) -> None:
    log = tmp_path / "sds.log"
    sock = short_dir / "sds.sock"
    with (
        running_workload_api(mesh_config(), tmp_path / "wl", sockets=("mesh", "ext")) as api,
        running_sds_serve(api.address("mesh"), sock, log, log_level="debug") as proc,
    ):
        # first, how big is the first response? (a normal client)
        async def first_size() -> int:
            async with channel(sock) as ch, sotw(ch) as s:
                await s.request(["default", "ROOTCA"], node="node-probe")
                return len((await s.recv()).SerializeToString())

        size = asyncio.run(first_size())
        # the window holds the first response (+ frame headers) and not much more: the next push blocks
        client = _TinyWindowClient(sock, window=size + 64)
        try:
            client.open_sotw(["default", "ROOTCA"])
            assert client.read_until(size, 10) >= size
            snapshots = len(_events(log, "sds.snapshot"))
            api.rotate()  # new SVID → snapshot → push to our stream, which cannot be written
            wait_for(
                lambda: len(_events(log, "sds.snapshot")) > snapshots or None,
                20,
                "the rotation's snapshot",
            )
            time.sleep(0.5)  # the push is now waiting for window in the server's write
        finally:
            client.close()
        ended = ("sds.push.cancelled", "sds.push.failed")
        wait_for(
            lambda: any(e.get("event") in ended for e in _events(log)) or None,
            15,
            "the blocked push to end",
        )
        failed = [e for e in _events(log) if e.get("event") in ended]
        assert failed and all(e["level"] == "debug" for e in failed), failed  # noqa: PT018
        assert all(e.get("node") == "node-tiny-window" for e in failed)

        # the server still serves
        async def still_serves() -> list[str]:
            async with channel(sock) as ch, sotw(ch) as s:
                await s.request(["default"], node="node-after")
                resp = await s.recv()
                return [r.type_url for r in resp.resources]

        assert asyncio.run(still_serves()) == [SECRET_TYPE_URL]
        assert proc.poll() is None
    errors = [e for e in _events(log) if e.get("level") in ("error", "critical")]
    assert errors == [], errors
    # the push ended with its stream, not 10 s later as a "client stopped reading" (it did, before the fix)
    assert not _events(log, "sds.stream.send_timeout")
