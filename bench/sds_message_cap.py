"""The 4 MiB inbound message cap, measured on real processes (issue 13 §3).

For each server — a real ``meshbridge sds serve`` (StreamSecrets) and a real ``meshbridge workload-api
serve`` (FetchX509SVID, with the security header) — and each request size — 64 MiB (over the cap) and
3.9 MiB (just under it, the baseline) — a fresh server process gets one request, sent as raw bytes after
gRPC's 5-byte length prefix; printed: its RSS before, its peak (VmHWM) and its RSS after, and how the call
ended. Bounded: one request per process, every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grpclib.client import Channel  # noqa: E402
from grpclib.const import Cardinality  # noqa: E402
from grpclib.encoding.base import CodecBase  # noqa: E402

from tests.sds_server.wl import mesh_config  # noqa: E402
from tests.support.workload_api import HEADER, running_sds_serve, running_workload_api  # noqa: E402

MIB = 1024 * 1024
SIZES = (("3.9 MiB (under the cap)", int(3.9 * MIB)), ("64 MiB (over the cap)", 64 * MIB))


class RawCodec(CodecBase):
    """Bytes in, bytes out: the request body is whatever we send."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) // 1024  # MB
    return out


def _body(size: int) -> bytes:
    # a DiscoveryRequest / X509SVIDRequest with one unknown length-delimited field (#15) of ``size`` bytes
    n = size
    varint = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        varint.append(b | (0x80 if n else 0))
        if not n:
            break
    return b"\x7a" + bytes(varint) + b"\0" * size


async def _call(sock: Path, path: str, body: bytes, metadata: dict[str, str]) -> str:
    ch = Channel(path=str(sock), codec=RawCodec())
    try:
        async with asyncio.timeout(60):
            async with ch.request(path, Cardinality.STREAM_STREAM, bytes, bytes, metadata=metadata) as stream:
                try:
                    await stream.send_message(body, end=True)
                    async with asyncio.timeout(10):
                        first = await stream.recv_message()
                    if first is None:
                        await stream.recv_trailing_metadata()
                        return "ended OK, no response"
                    await stream.cancel()
                    return "answered"  # noqa: TRY300
                except Exception as exc:
                    return f"{type(exc).__name__}: {str(exc)[:90]}"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:90]}"
    finally:
        ch.close()


def _measure(
    pid: int, sock: Path, path: str, size: int, metadata: dict[str, str]
) -> tuple[dict[str, int], dict[str, int], str]:
    """RSS before, peak and RSS after one request of ``size`` bytes; how the call ended."""
    time.sleep(0.5)
    before = _status(pid)
    outcome = asyncio.run(_call(sock, path, _body(size), metadata))
    time.sleep(1.0)
    return before, _status(pid), outcome


def _row(server: str, label: str, before: dict[str, int], after: dict[str, int], outcome: str) -> None:
    print(
        f"{server:<22} {label:<24} before {before['VmRSS']:>4} MB  peak {after['VmHWM']:>4} MB "
        f"(+{after['VmHWM'] - before['VmRSS']:>3})  after {after['VmRSS']:>4} MB "
        f"(+{after['VmRSS'] - before['VmRSS']:>3})  {outcome}"
    )


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mb-cap-", dir="/tmp"))
    print("4 MiB message cap: one request per fresh server process (MB = MiB of RSS)")
    for label, size in SIZES:
        with running_workload_api(
            mesh_config(), work / f"wl-{size}", sockets=("mesh", "ext"), log_level="info"
        ) as api:
            assert api.process is not None
            measured = _measure(
                api.process.pid, api.socket("mesh"), "/SpiffeWorkloadAPI/FetchX509SVID", size, dict(HEADER)
            )
            _row("workload-api serve", label, *measured)
    for label, size in SIZES:
        with (
            running_workload_api(
                mesh_config(), work / f"wl2-{size}", sockets=("mesh", "ext"), log_level="info"
            ) as api,
            running_sds_serve(
                api.address("mesh"), work / f"sds-{size}.sock", work / f"sds-{size}.log"
            ) as proc,
        ):
            path = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
            _row("sds serve", label, *_measure(proc.pid, work / f"sds-{size}.sock", path, size, {}))
    print(f"(pid {os.getpid()}; the cap is checked from the 5-byte length prefix, before the body is read)")


if __name__ == "__main__":
    main()
