"""The SDS name index shrinks when streams go (issue 13 §3; was +24 % RSS): a real ``meshbridge sds
serve``, RSS after 77,000 distinct unknown names churned through 50 streams (each stream re-subscribes in
batches of 770 names, then closes), against RSS after 50 streams with one name each (the baseline, same
process, measured first). Bounded: fixed counts, every phase under a deadline."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sds_server.client import channel, sotw  # noqa: E402
from tests.sds_server.wl import mesh_config  # noqa: E402
from tests.support.workload_api import running_sds_serve, running_workload_api  # noqa: E402

STREAMS = 50
NAMES = 77_000
BATCH = 770  # names per request (under the 1,024 names-per-stream cap)


def _rss_kb(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss) // 1024


async def _streams(sock: Path, batches: list[list[list[str]]]) -> None:
    async with asyncio.timeout(300), channel(sock) as ch:

        async def one(reqs: list[list[str]]) -> None:
            async with sotw(ch) as s:
                for names in reqs:
                    await s.request(names)
                await asyncio.sleep(0.2)

        await asyncio.gather(*(one(b) for b in batches))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mb-churn-", dir="/tmp"))
    sock = work / "sds.sock"
    with (
        running_workload_api(mesh_config(), work / "wl", sockets=("mesh", "ext"), log_level="info") as api,
        running_sds_serve(api.address("mesh"), sock, work / "sds.log", log_level="error") as proc,
    ):
        time.sleep(1.0)
        idle = _rss_kb(proc.pid)
        asyncio.run(_streams(sock, [[[f"spiffe://base.test/{i}"]] for i in range(STREAMS)]))
        time.sleep(1.0)
        base = _rss_kb(proc.pid)
        per = NAMES // STREAMS
        batches = []
        for i in range(STREAMS):
            names = [f"spiffe://churn.test/{i}/{j}" for j in range(per)]
            batches.append([names[k : k + BATCH] for k in range(0, per, BATCH)])
        started = time.monotonic()
        asyncio.run(_streams(sock, batches))
        took = time.monotonic() - started
        time.sleep(1.0)
        churned = _rss_kb(proc.pid)
    print(f"sds serve RSS: idle {idle / 1024:.1f} MB")
    print(f"  after {STREAMS} streams x 1 name (baseline):            {base / 1024:.1f} MB")
    print(
        f"  after {STREAMS * per:,} distinct names via {STREAMS} streams ({took:.1f} s): {churned / 1024:.1f} MB"  # noqa: E501
    )
    print(
        f"  ratio {churned / base:.3f} ({(churned / base - 1) * 100:+.1f} %; issue 13 before the fix: +24 %)"
    )


if __name__ == "__main__":
    main()
