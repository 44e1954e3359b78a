"""Issue 13 §3: the embedded Workload API has the SDS server's transport caps, and admits a call before
reading its request. Every test runs a real ``meshbridge workload-api serve`` process and talks to it with
real clients (grpcio, raw sockets); memory is read from ``/proc/PID/status`` (behaviour: the peak does not
grow by the payload; the figures themselves are in the README's "Measured" table)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from spiffe._proto import workload_pb2

from tests.support.workload_api import HEADER, UID, entry, raw_stub, running_workload_api, status_of

A = "spiffe://example.org/a"
CONFIG = {"trust_domain": "example.org", "entries": [entry(A, UID)]}
MiB = 1024 * 1024
FETCH_JWT_SVID = "/SpiffeWorkloadAPI/FetchJWTSVID"
# RFC 9113 §3.4: the client connection preface, then an empty SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM: line in /proc/PID/status")


@contextmanager
def _raw_channel(sock: Path) -> Iterator[grpc.Channel]:
    """A grpcio channel that sends anything (no client-side size limit)."""
    ch = grpc.insecure_channel(f"unix:{sock}", options=[("grpc.max_send_message_length", -1)])
    try:
        yield ch
    finally:
        ch.close()


def _send_bytes(sock: Path, body: bytes, metadata: Any) -> tuple[grpc.StatusCode, str]:
    """``FetchJWTSVID`` with ``body`` as the request's bytes, as they are; the status and its message."""
    with _raw_channel(sock) as ch:
        call = ch.unary_unary(FETCH_JWT_SVID, request_serializer=bytes, response_deserializer=bytes)
        try:
            call(body, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _jwt_request(audience_bytes: int) -> bytes:
    return workload_pb2.JWTSVIDRequest(audience=["a" * audience_bytes]).SerializeToString()


def test_oversized_request_is_refused_from_its_length_prefix_without_buffering_it(tmp_path: Path) -> None:
    with running_workload_api(CONFIG, tmp_path, log_level="info") as api:
        assert api.process is not None
        pid = api.process.pid
        assert _send_bytes(api.socket(), _jwt_request(10), HEADER)[0] is grpc.StatusCode.OK  # warm
        peak = _peak_rss_mib(pid)
        code, message = _send_bytes(api.socket(), _jwt_request(64 * MiB), HEADER)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, message
        assert message.startswith("grpc: received message larger than max (67108869 vs. 4194304)"), message
        # Before: the whole 64 MiB was buffered and decoded (peak +570 MiB, +85 MiB kept). Now the body is
        # never read: the peak stays within a few MiB (HTTP/2 flow-control windows), far below 64 MiB.
        grown = _peak_rss_mib(pid) - peak
        assert grown < 16, f"peak RSS grew by {grown:.1f} MiB for a refused 64 MiB request"
        # The server still serves, on a fresh connection and for legitimately sized requests.
        assert _send_bytes(api.socket(), _jwt_request(MiB), HEADER)[0] is grpc.StatusCode.OK
        assert api.events("grpc.message.too_large")


def test_caller_without_the_header_is_refused_before_its_request_is_read(tmp_path: Path) -> None:
    """Garbage that does not parse as protobuf: with the header it reaches the decoder (Internal, with
    grpc-go's words, as SPIRE answers: tests/spire/test_differential.py); without it the answer is
    InvalidArgument — the body was never decoded, nor even read (a 64 MiB one is refused for the header,
    not for its size)."""
    garbage = b"\xff" * MiB
    with running_workload_api(CONFIG, tmp_path, log_level="info") as api:
        code, message = _send_bytes(api.socket(), garbage, None)
        assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        code, message = _send_bytes(api.socket(), _jwt_request(64 * MiB), None)
        assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        code, message = _send_bytes(api.socket(), garbage, HEADER)
        assert code is grpc.StatusCode.INTERNAL, message  # decoded only once admitted: the decoder refuses it
        assert message.startswith("grpc: error unmarshalling request: "), message


def test_open_calls_per_uid_are_capped(tmp_path: Path) -> None:
    with (
        running_workload_api(CONFIG, tmp_path, extra_args=["--max-streams-per-uid", "2"]) as api,
        raw_stub(api.socket()) as stub,
    ):
        streams = [
            stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=30) for _ in range(2)
        ]
        for s in streams:
            assert next(s).svids[0].spiffe_id == A
        third = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            next(third)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == f"uid {os.getuid()}: 2 Workload API calls open: at most 2"

        def jwt() -> object:
            return stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER, timeout=10)

        # A unary call counts too while the streams are open ...
        assert status_of(jwt) is grpc.StatusCode.RESOURCE_EXHAUSTED
        # ... and a slot frees when a stream ends.
        streams[0].cancel()
        deadline = time.monotonic() + 10
        while (code := status_of(jwt)) is not grpc.StatusCode.OK:
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() < deadline, "the slot of the cancelled stream was never freed"
            time.sleep(0.1)
        streams[1].cancel()
        third.cancel()
        assert [e for e in api.events("workload_api.denied") if e.get("reason") == "streams per UID"]


def test_connection_that_opens_no_stream_is_closed(tmp_path: Path) -> None:
    with running_workload_api(CONFIG, tmp_path, extra_args=["--idle-connection-seconds", "0.5"]) as api:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(api.socket()))
            c.sendall(H2_PREFACE)  # a connection, never a stream
            c.settimeout(10)
            t0 = time.monotonic()
            while c.recv(4096):  # the server's SETTINGS and ACK, then EOF
                assert time.monotonic() - t0 < 10
        assert api.events("grpc.connection.idle_closed")


def test_listen_backlog_applies(tmp_path: Path) -> None:
    """While the server accepts nothing (SIGSTOP), 600 connects all wait in the backlog (1,024); the socket
    used to listen with 128 (and grpclib's start() re-listens with 100)."""
    with running_workload_api(CONFIG, tmp_path, log_level="info") as api:
        assert api.process is not None
        clients: list[socket.socket] = []
        queued = 0
        os.kill(api.process.pid, signal.SIGSTOP)
        try:
            for _ in range(600):
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                clients.append(c)
                try:
                    c.connect(str(api.socket()))
                    queued += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
        finally:
            os.kill(api.process.pid, signal.SIGCONT)
            for c in clients:
                c.close()
        assert queued == 600
        with raw_stub(api.socket()) as stub:  # and it serves afterwards
            assert (
                next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=30))
                .svids[0]
                .spiffe_id
                == A
            )
