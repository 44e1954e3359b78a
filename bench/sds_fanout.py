"""SDS fan-out and footprint benchmark (issue 9 §5, issue 13 §4): our server vs bare grpc.aio and bare
grpclib, same bytes, same clients, same run.

For each N (default: 100 and 1,000; add 10,000 with ``--n 100 1000 10000``):

* N StreamSecrets streams from grpcio clients in separate processes (≤ 1,000 streams per process,
  100 per connection), each subscribed to ``default`` + ``ROOTCA`` and ACKing like Envoy;
* a rotation: for our server through the embedded Workload API (SIGUSR1 → re-mint → py-spiffe →
  snapshot → push); for the bare servers a SIGUSR1 that swaps the payload and writes it to every stream;
* measured: time until every stream holds the new version (p50 / p99 / max, from the trigger), time to
  connect all streams, server RSS idle (before the clients) and with all streams open (→ RSS per
  stream), the server's thread count, and how many streams each server accepted;
* our process is a real ``meshbridge sds serve`` (``python -m bridge.cli``): its idle RSS, threads and
  whether grpcio's runtime is mapped into it (``/proc/PID/maps``) are checked against issue 13 §4
  (idle ≤ 30 MB, ≤ 18 KB per stream, 1 thread, p99 @1,000 ≤ 1.3 times bare grpclib).

Baselines: the bare servers of :data:`BASELINES`, and ``spire`` (``--baselines``; on by default, every
N up to ``--spire-max-n``): SPIRE agent's own SDS against our server fed by that same agent, both pushed by
a federated-bundle change (``spire-server bundle set``), push spread (first → last stream) reported apart
from trigger latency, plus real Envoy fed by each — see ``bench/spire_sds.py``. The load average is
printed at the start, per N and at the end (the machine is shared).

Also: real Envoy start → first secret (listener LIVE), and rotation → new certificate in ``/certs``.

Bounded: every phase has a deadline (``--deadline``, default 120 s); all processes are stopped at the end.
Numbers are printed with ratios against the bare servers measured in the same run, and the issue's goals
are checked out loud — a goal that is not met is reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse  # noqa: E402
from grpclib.client import Channel  # noqa: E402
from grpclib.const import Cardinality  # noqa: E402

from bridge.envoy import EnvoyProcess, sidecar_bootstrap  # noqa: E402
from bridge.spire_local import stop_process  # noqa: E402
from sds_server.secrets import SECRET_TYPE_URL  # noqa: E402
from tests.sds_server.wl import mesh_config  # noqa: E402
from tests.support.envoy import echo_backend  # noqa: E402
from tests.support.workload_api import meshbridge_argv, running_workload_api  # noqa: E402

STREAMS_PER_PROCESS = 1000
STREAMS_PER_CONNECTION = 100

CLIENT = r"""
import asyncio, json, sys, time, grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
sock, count, per_conn, deadline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
NAMES = sys.argv[5].split(",")
KEEP = sys.argv[6] == "marker"  # keep each update's bytes: a round ends at the update carrying a marker
TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

async def main():
    chans = [grpc.aio.insecure_channel("unix:" + sock, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range((count + per_conn - 1) // per_conn)]
    t0 = time.time()
    connected, received, calls = [], [], []
    async def one(i):
        call = chans[i // per_conn].stream_stream(
            "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
            request_serializer=DiscoveryRequest.SerializeToString,
            response_deserializer=lambda b: b)()
        calls.append(call)
        req = DiscoveryRequest(type_url=TYPE, resource_names=NAMES)
        req.node.id = f"sidecar~127.0.0.1~bench-{i}.default~default.svc.cluster.local"
        await call.write(req)
        mine = []
        first = True
        while True:
            raw = await call.read()
            if raw is grpc.aio.EOF:
                return
            msg = DiscoveryResponse.FromString(raw)
            if first:
                connected.append(time.time() - t0)
                received.append(mine)
                first = False
            else:
                mine.append((time.time(), raw if KEEP else None))
            await call.write(DiscoveryRequest(type_url=TYPE, resource_names=NAMES,
                                              version_info=msg.version_info, response_nonce=msg.nonce))
    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    end = time.time() + deadline
    while len(connected) < count and time.time() < end:
        await asyncio.sleep(0.05)
    print(json.dumps({"connected": connected}), flush=True)
    loop = asyncio.get_running_loop()
    cursor = {}  # id(stream list) -> index of its first update not yet attributed to a round
    while True:
        words = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not words or words[0] != "go":
            break
        markers = [bytes.fromhex(h) for h in words[1].split(",")] if len(words) > 1 else None
        streams = list(received)
        found = {}
        def scan():
            for m in streams:
                if id(m) in found:
                    continue
                start = cursor.get(id(m), 0)
                for j in range(start, len(m)):
                    if markers is None or any(k in m[j][1] for k in markers):
                        found[id(m)] = (j, m[j][0])
                        break
        end = time.time() + deadline
        scan()
        while len(found) < len(streams) and time.time() < end:
            await asyncio.sleep(0.02)
            scan()
        for m in streams:
            if id(m) in found:
                j = found[id(m)][0]
                cursor[id(m)] = j + 1
                for k in range(j + 1):  # attributed: drop the bytes
                    m[k] = (m[k][0], None)
        print(json.dumps({"rotated": [t for _, t in found.values()]}), flush=True)
    for c in calls:
        c.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in chans:
        await ch.close(None)

asyncio.run(main())
"""

# What both bare baselines share: argv (socket, the two payloads), the subscribers' queues, and the
# signals: SIGUSR1 flips the payload and queues it for every stream; SIGTERM ends ``until_sigterm``.
_BARE_COMMON = r"""
import asyncio, signal, sys
sock, a, b = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
payloads, state, subs = [a, b], {"i": 0}, set()

async def until_sigterm():
    def rotate():
        state["i"] ^= 1
        for q in list(subs):
            q.put_nowait(payloads[state["i"]])
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, rotate)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    print("READY", flush=True)
    await done.wait()
"""

BARE_GRPC_AIO = (
    _BARE_COMMON
    + r"""
import grpc

async def stream(request_iterator, context):
    q = asyncio.Queue()
    await context.read()
    await context.write(payloads[state["i"]])
    subs.add(q)
    try:
        while True:
            await context.write(await q.get())
    finally:
        subs.discard(q)

async def main():
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100000)])
    handler = grpc.method_handlers_generic_handler("envoy.service.secret.v3.SecretDiscoveryService", {
        "StreamSecrets": grpc.stream_stream_rpc_method_handler(stream)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("unix:" + sock)
    await server.start()
    await until_sigterm()
    await server.stop(0)

asyncio.run(main())
"""
)

BARE_GRPCLIB = (
    _BARE_COMMON
    + r"""
import grpclib.const
from grpclib.server import Server
from grpclib.encoding.base import CodecBase

class Raw(CodecBase):
    __content_subtype__ = "proto"
    def encode(self, message, message_type):
        return message
    def decode(self, data, message_type):
        return data

class Svc:
    async def stream(self, st):
        await st.recv_message()
        await st.send_message(payloads[state["i"]])
        q = asyncio.Queue()
        subs.add(q)
        reader = asyncio.ensure_future(self.drain(st))
        try:
            while True:
                await st.send_message(await q.get())
        finally:
            subs.discard(q)
            reader.cancel()
    async def drain(self, st):
        while await st.recv_message() is not None:
            pass
    def __mapping__(self):
        return {"/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets": grpclib.const.Handler(
            self.stream, grpclib.const.Cardinality.STREAM_STREAM, bytes, bytes)}

async def main():
    server = Server([Svc()], codec=Raw())
    await server.start(path=sock)
    await until_sigterm()
    server.close()

asyncio.run(main())
"""
)


def load() -> str:
    return "load avg " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


@dataclass
class Result:
    server: str
    n: int
    held: int = 0
    connect_all_s: float = float("nan")
    rss_mb: float = float("nan")
    idle_mb: float = float("nan")
    threads_idle: int = 0
    threads_loaded: int = 0
    lat_ms: list[float] = field(default_factory=list)
    rounds: list[list[float]] = field(default_factory=list)
    note: str = ""

    @property
    def per_stream_kb(self) -> float:
        return (self.rss_mb - self.idle_mb) * 1024 / max(self.held, 1)

    @property
    def spread_ms(self) -> float:
        """Push spread: first → last stream updated (the trigger's own latency removed)."""
        return max(self.lat_ms, default=float("nan")) - min(self.lat_ms, default=float("nan"))

    @property
    def trigger_ms(self) -> list[float]:
        """Per round: trigger → first stream updated."""
        return [min(r) for r in self.rounds if r]

    @property
    def spread_round(self) -> list[float]:
        """The median round by spread p99, each stream's update measured from the first stream's."""
        rel = sorted(([x - min(r) for x in r] for r in self.rounds if r), key=lambda v: pct(v, 99))
        return rel[len(rel) // 2] if rel else []

    def line(self) -> str:
        lat = self.lat_ms
        return (
            f"{self.server:<14} N={self.n:>6}  held {self.held:>6}  connect-all {self.connect_all_s:6.2f} s  "
            f"RSS {self.rss_mb:7.1f} MB (idle {self.idle_mb:5.1f}, {self.per_stream_kb:5.1f} KB/stream)  "
            f"threads {self.threads_idle}/{self.threads_loaded}  "
            f"fan-out p50 {pct(lat, 50):8.1f}  p99 {pct(lat, 99):8.1f}  "
            f"max {max(lat, default=float('nan')):8.1f} ms  (min {min(lat, default=float('nan')):6.1f})"
            + (f"  [{self.note}]" if self.note else "")
        )


def run_clients(
    sock: Path,
    n: int,
    deadline: float,
    trigger: Callable[[], object],
    server_pid: int,
    name: str,
    repeat: int,
    *,
    names: Sequence[str] = ("default", "ROOTCA"),
    marker: bool = False,
    settle: float = 0.5,
) -> Result:
    """N streams against ``sock``; ``repeat`` rounds of ``trigger()``. A round ends, per stream, at its
    next update — or with ``marker``, at the first update carrying one of the hex byte strings
    ``trigger()`` returned (comma-separated), so unrelated pushes (an agent's own refreshes) don't count."""
    server = psutil.Process(server_pid)
    idle_mb = server.memory_info().rss / 2**20
    threads_idle = server.num_threads()
    procs = []
    remaining = n
    while remaining > 0:
        k = min(STREAMS_PER_PROCESS, remaining)
        remaining -= k
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CLIENT,
                    str(sock),
                    str(k),
                    str(STREAMS_PER_CONNECTION),
                    str(deadline),
                    ",".join(names),
                    "marker" if marker else "count",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    res = Result(name, n)
    try:
        connected: list[float] = []
        for p in procs:
            assert p.stdout is not None
            connected += json.loads(p.stdout.readline())["connected"]
        res.held = len(connected)
        res.connect_all_s = max(connected, default=float("nan"))
        res.rss_mb = server.memory_info().rss / 2**20
        res.idle_mb = idle_mb
        res.threads_idle, res.threads_loaded = threads_idle, server.num_threads()
        p99s = []
        for _ in range(repeat):
            time.sleep(settle)
            t0 = time.time()
            mark = trigger()
            go = f"go {mark}\n" if marker else "go\n"
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(go)
                p.stdin.flush()
            lat: list[float] = []
            for p in procs:
                assert p.stdout is not None
                lat += [(t - t0) * 1000 for t in json.loads(p.stdout.readline())["rotated"]]
            p99s.append((pct(lat, 99), lat))
            res.rounds.append(lat)
            if len(lat) < res.held:
                res.note = f"{res.held - len(lat)} streams missed a rotation"
        res.lat_ms = sorted(p99s, key=lambda x: x[0])[len(p99s) // 2][1]  # the median round by p99
        if res.held < n:
            res.note = (res.note + "; " if res.note else "") + f"accepted only {res.held} of {n} streams"
    finally:
        for p in procs:
            try:
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
    return res


def start_ours(workdir: Path, api_address: str) -> subprocess.Popen[bytes]:
    sock = workdir / "sds.sock"
    argv = meshbridge_argv(
        "sds", "serve", "--workload-api", api_address, "--listen", str(sock),
        # every bench client runs as this one uid; the per-uid cap (default 2,048) would refuse the rest
        "--max-streams-per-uid", "20000",
        log_level="warning",
    )  # fmt: skip
    if profile := os.environ.get("SDS_BENCH_PROFILE"):  # e.g. /tmp/sds.prof: run our server under cProfile
        argv[1:1] = ["-m", "cProfile", "-o", f"{profile}.{time.monotonic_ns()}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


async def fetch_response(sock: Path, names: Sequence[str], within: float) -> DiscoveryResponse | None:
    """One StreamSecrets request for ``names`` on ``sock``: its first response, waited for ``within`` s."""
    ch = Channel(path=str(sock))
    try:
        async with ch.request(
            "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
            Cardinality.STREAM_STREAM,
            DiscoveryRequest,
            DiscoveryResponse,
        ) as st:
            await st.send_message(DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=list(names)))
            resp = await asyncio.wait_for(st.recv_message(), within)
            await st.cancel()
            return resp
    finally:
        ch.close()


async def fetch_payload(sock: Path) -> bytes:
    resp = await fetch_response(sock, ["default", "ROOTCA"], 20)
    assert resp is not None
    data: bytes = resp.SerializeToString()
    return data


def start_bare(script: str, sock: Path, a: Path, b: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(sock), str(a), str(b)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    stop_process(proc, 10)
    if proc.stdout is not None:
        proc.stdout.close()


def bench_envoy(workdir: Path, rotations: int) -> None:
    print("\n== real Envoy (SotW SDS over the Unix socket, secrets from the embedded Workload API) ==")
    with (
        running_workload_api(mesh_config(), workdir / "wl-envoy", sockets=("mesh", "ext")) as api,
        echo_backend() as be,
    ):
        (workdir / "e").mkdir()
        sds = start_ours(workdir / "e", api.address("mesh"))
        try:
            boot = sidecar_bootstrap(
                sds_socket=workdir / "e" / "sds.sock", trust_domain="example.org", backend_port=be.port
            )
            t0 = time.monotonic()
            with EnvoyProcess(boot, workdir / "e") as envoy:
                envoy.wait_listeners(["inbound"])
                first = time.monotonic() - t0
                print(f"Envoy start → listener LIVE with default+ROOTCA: {first * 1000:.0f} ms")
                times = []
                for _ in range(rotations):
                    old = envoy.cert_serials()
                    t1 = time.monotonic()
                    api.rotate()

                    def rotated(o: object = old) -> bool:
                        return bool(envoy.cert_serials() != o)

                    envoy.wait_for("new cert", rotated, timeout=30, interval=0.005)
                    times.append((time.monotonic() - t1) * 1000)
                print(
                    f"rotation (SIGUSR1 to Workload API) → new cert in Envoy /certs: median "
                    f"{statistics.median(times):.0f} ms, max {max(times):.0f} ms over {rotations} rotations "
                    "(includes re-mint, py-spiffe delivery, SDS push, Envoy apply, admin poll ≤5 ms)"
                )
        finally:
            stop(sds)


BASELINES: dict[str, str] = {"bare grpc.aio": BARE_GRPC_AIO, "bare grpclib": BARE_GRPCLIB}
"""Bare servers started per N with the same payload. ``spire`` (``--baselines``) is SPIRE agent's own SDS,
measured in ``bench/spire_sds.py`` against our server fed by that agent (module doc)."""
SPIRE = "spire"


@dataclass
class Footprint:
    """Our process right after it first served a secret, before any client: the issue 13 §4 figures."""

    idle_mb: float
    threads: int
    grpcio_loaded: bool


def footprint(pid: int) -> Footprint:
    proc = psutil.Process(pid)
    maps = Path(f"/proc/{pid}/maps").read_text()
    return Footprint(
        idle_mb=proc.memory_info().rss / 2**20,
        threads=proc.num_threads(),
        grpcio_loaded="/grpc/_cython/" in maps,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="stream counts (max 10000)")
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds per phase (connect, rotation)")
    ap.add_argument("--skip-envoy", action="store_true")
    ap.add_argument("--rotations", type=int, default=5, help="Envoy rotations to time")
    ap.add_argument(
        "--repeat", type=int, default=3, help="rotations per N and server (median round reported)"
    )
    ap.add_argument(
        "--baselines",
        nargs="+",
        default=[*BASELINES, SPIRE],
        choices=[*BASELINES, SPIRE],
        help="baselines to run beside ours (default: all; 'bare grpclib' is the one the goals use; "
        "'spire': SPIRE agent's own SDS vs our server fed by that agent, bench/spire_sds.py)",
    )
    ap.add_argument(
        "--spire-max-n", type=int, default=10000, help="largest N for the SPIRE baseline (skipped above it)"
    )
    ap.add_argument("--envoy-starts", type=int, default=3, help="Envoy starts per SDS server (SPIRE part)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every process is stopped in finally
    print(f"{load()} at start ({os.cpu_count()} CPUs)", flush=True)
    ns = [n for n in args.n if 0 < n <= 10000]
    work = Path(tempfile.mkdtemp(prefix="mb-bench-", dir="/tmp"))
    results: dict[int, dict[str, Result]] = {}
    prints: list[Footprint] = []
    try:
        with running_workload_api(mesh_config(), work / "wl", sockets=("mesh", "ext")) as api:
            (work / "ours").mkdir()
            ours = start_ours(work / "ours", api.address("mesh"))
            try:
                payload = asyncio.run(fetch_payload(work / "ours" / "sds.sock"))
                prints.append(footprint(ours.pid))
                a, b = work / "a.bin", work / "b.bin"
                a.write_bytes(payload)
                b.write_bytes(payload + DiscoveryResponse(nonce="rotated").SerializeToString())
                print(f"payload: {len(payload)} bytes (default + ROOTCA, as our server sends it)")
                for n in ns:
                    results[n] = {}
                    print(f"\n== N = {n} streams ({load()}) ==")
                    r = run_clients(
                        work / "ours" / "sds.sock",
                        n,
                        args.deadline,
                        api.rotate,
                        ours.pid,
                        "meshbridge",
                        args.repeat,
                    )
                    print(r.line(), flush=True)
                    results[n]["ours"] = r
                    for name in (b for b in args.baselines if b in BASELINES):
                        sock = work / f"{name.split()[1]}-{n}.sock"
                        srv = start_bare(BASELINES[name], sock, a, b)
                        try:
                            r = run_clients(
                                sock,
                                n,
                                args.deadline,
                                functools.partial(os.kill, srv.pid, signal.SIGUSR1),
                                srv.pid,
                                name,
                                args.repeat,
                            )
                        finally:
                            stop(srv)
                        print(r.line(), flush=True)
                        results[n][name] = r
                    # restart ours between sizes so RSS is per N, not cumulative
                    stop(ours)
                    ours = start_ours(work / "ours", api.address("mesh"))
                    asyncio.run(fetch_payload(work / "ours" / "sds.sock"))
                    prints.append(footprint(ours.pid))
            finally:
                stop(ours)
        report(results, prints)
        if not args.skip_envoy:
            bench_envoy(work, args.rotations)
        if SPIRE in args.baselines:
            sys.modules.setdefault("sds_fanout", sys.modules[__name__])  # spire_sds uses *this* module
            import spire_sds  # noqa: PLC0415 - bench/ is sys.path[0] when run as a script

            spire_sds.run(
                ns,
                work,
                deadline=args.deadline,
                repeat=args.repeat,
                max_n=args.spire_max_n,
                envoy=not args.skip_envoy,
                rotations=args.rotations,
                starts=args.envoy_starts,
            )
        print(f"\n{load()} at the end", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "n/a"


def report(results: dict[int, dict[str, Result]], prints: list[Footprint]) -> None:
    print("\n== footprint of `meshbridge sds serve` (first secret served, no clients) ==")
    idle = statistics.median(f.idle_mb for f in prints)
    threads = max(f.threads for f in prints)
    grpcio = any(f.grpcio_loaded for f in prints)
    bare_idle = [r.idle_mb for rs in results.values() for k, r in rs.items() if k == "bare grpclib"]
    print(
        f"idle RSS {idle:.1f} MB (median of {len(prints)} starts: "
        f"{', '.join(f'{f.idle_mb:.1f}' for f in prints)}); threads {threads}; grpcio runtime mapped: "
        f"{'yes' if grpcio else 'no'}"
        + (f"; bare grpclib idle {statistics.median(bare_idle):.1f} MB" if bare_idle else "")
    )
    print("\n== ratios (ours / baseline; < 1 is better) and the issues' goals ==")
    for n, rs in results.items():
        ours = rs["ours"]
        p99 = pct(ours.lat_ms, 99)
        parts = []
        for name, r in rs.items():
            if name == "ours":
                continue
            parts.append(
                f"vs {name}: p99 {ratio(p99, pct(r.lat_ms, 99))}, RSS {ratio(ours.rss_mb, r.rss_mb)}, "
                f"KB/stream {ours.per_stream_kb:.1f} vs {r.per_stream_kb:.1f}, "
                f"connect {ratio(ours.connect_all_s, r.connect_all_s)}, held {r.held}/{n}"
            )
        print(f"N={n}: " + "; ".join(parts))
        print(
            f"        our p50/p99 {pct(ours.lat_ms, 50):.1f}/{p99:.1f} ms; push spread (first → last stream, "
            f"trigger latency removed) {ours.spread_ms:.1f} ms"
        )
        lib = rs.get("bare grpclib")
        if n == 1000 and lib is not None:
            ok = p99 <= 1.3 * pct(lib.lat_ms, 99)
            print(
                f"  issue 13 goal @1,000: fan-out p99 ≤ 1.3× bare grpclib "
                f"({1.3 * pct(lib.lat_ms, 99):.1f} ms): {'MET' if ok else 'NOT MET'} ({p99:.1f} ms)"
            )
        if n == 10000 and lib is not None:
            held = ours.held == n
            rss_ok = ours.rss_mb <= 1.1 * lib.rss_mb
            p99_ok = p99 <= 1.2 * pct(lib.lat_ms, 99)
            print(
                f"  issue 9 goal @10,000: all held: {'MET' if held else 'NOT MET'} ({ours.held}); "
                f"RSS ≤ 1.1× grpclib: {'MET' if rss_ok else 'NOT MET'}; "
                f"fan-out p99 ≤ 1.2× grpclib: {'MET' if p99_ok else 'NOT MET'}"
            )
    per_stream = [rs["ours"].per_stream_kb for n, rs in results.items() if n >= 1000]
    print(
        f"  issue 13 goal: idle RSS ≤ 30 MB: {'MET' if idle <= 30 else 'NOT MET'} ({idle:.1f} MB); "
        f"threads = 1: {'MET' if threads == 1 else 'NOT MET'} ({threads}); "
        f"grpcio not loaded: {'MET' if not grpcio else 'NOT MET'}"
        + (
            f"; ≤ 18 KB per stream (N ≥ 1,000): {'MET' if max(per_stream) <= 18 else 'NOT MET'} "
            f"({', '.join(f'{x:.1f}' for x in per_stream)} KB)"
            if per_stream
            else ""
        )
    )


if __name__ == "__main__":
    sys.exit(main())
