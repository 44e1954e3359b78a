"""Run the REAL embedded Workload API (``meshbridge workload-api serve``) as a subprocess, for any suite,
and ``meshbridge sds serve`` fed by it (:func:`running_sds_serve`).

Usage::

    from tests.support.workload_api import running_workload_api

    config = {
        "trust_domain": "example.org",
        "svid_ttl": "1h",
        "entries": [{"spiffe_id": "spiffe://example.org/ns/default/sa/httpbin",
                     "selectors": [f"unix:uid:{os.getuid()}", "socket:mesh"]}],
    }
    with running_workload_api(config, tmp_path, sockets=("mesh", "ext")) as api:
        api.address("mesh")      # "unix:///tmp/mb-xxxx/mesh.sock"  (SPIFFE_ENDPOINT_SOCKET form)
        api.socket("mesh")       # Path to the socket file
        api.rotate()             # SIGUSR1: every SVID re-minted (new serials) and pushed; waits for it
        api.reload(new_config)   # rewrite the YAML + SIGHUP; waits until the server applied it
        api.restart()            # stop + start with the same arguments (data_dir keeps the CA)
        api.bundle_pem()         # the trust bundle (PEM) from the server's data_dir (needs data_dir)
        api.events("workload_api.svids.issued")  # the server's JSON log events since the last start
        api.stop(); api.start()  # e.g. to show clients riding out a Workload API outage
        api.process              # the subprocess.Popen

* ``config`` is the YAML contract of ``sds_server.workload_api.config`` as a dict. If it has no
  ``sockets:`` key, the helper creates one short socket directory under /tmp (Unix socket paths are
  limited to 107 bytes; pytest's ``tmp_path`` is too long) with ``<name>.sock`` for every name in
  ``sockets`` (default: one socket named ``default``) and passes them as ``--socket NAME=PATH``.
* ``workdir`` gets the config file (``workload-api.yaml``) and the server's log (``workload-api.log``,
  JSON lines). Relative paths in the config (``data_dir``, federation bundles, upstream CA) are taken
  from ``workdir``.
* On exit the server gets SIGTERM and is waited for; the socket directory is removed. A server that
  dies during start raises ``RuntimeError`` with its log.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import yaml
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from spiffe._proto import workload_pb2, workload_pb2_grpc

from bridge.spire_local import connectable, log_since, stop_process
from tests.support.tmp import short_dir

__all__ = [
    "HEADER",
    "UID",
    "WorkloadApiHandle",
    "entry",
    "log_events",
    "meshbridge_argv",
    "raw_stub",
    "rpc_calls",
    "running_sds_serve",
    "running_workload_api",
    "sds_serving",
    "status_of",
    "wait_for",
]

UID = f"unix:uid:{os.getuid()}"
HEADER = (("workload.spiffe.io", "true"),)  # the metadata every Workload API call must carry
T = TypeVar("T")

CONFIG_NAME = "workload-api.yaml"
LOG_NAME = "workload-api.log"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def log_events(text: str, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON records in a structlog JSON log (``--log-format json``), optionally only event ``name``;
    lines that are not JSON objects (a traceback, a Go peer's text) are skipped."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (name is None or record.get("event") == name):
            out.append(record)
    return out


def meshbridge_argv(*args: str, log_level: str | None = None) -> list[str]:
    """The real CLI with JSON logs: ``python -m bridge.cli --log-format json [--log-level L] ARGS``."""
    level = ["--log-level", log_level] if log_level else []
    return [sys.executable, "-m", "bridge.cli", "--log-format", "json", *level, *args]


class WorkloadApiHandle:
    """A running ``meshbridge workload-api serve`` process and its sockets."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        sockets: dict[str, Path],
        extra_args: Sequence[str],
        socket_mode: str | None,
        log_level: str,
    ) -> None:
        self.workdir = workdir
        self.config_path = workdir / CONFIG_NAME
        self.log_path = workdir / LOG_NAME
        self._sockets = sockets
        self._cli_sockets = "sockets" not in config
        self._extra_args = list(extra_args)
        self._socket_mode = socket_mode
        self._log_level = log_level
        self.config = config
        self._log_offset = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config(config)

    # ---- addresses --------------------------------------------------------------------------------
    def socket(self, name: str = "default") -> Path:
        """The socket file named ``name``."""
        return self._sockets[name]

    def address(self, name: str = "default") -> str:
        """``unix:///path`` — the form of ``SPIFFE_ENDPOINT_SOCKET`` and ``--use-workload-api-addr``."""
        return "unix://" + str(self._sockets[name])

    def bundle_pem(self) -> bytes:
        """The current X.509 trust bundle as PEM (requires ``data_dir`` in the config)."""
        data_dir = self.config.get("data_dir")
        if not data_dir:
            raise RuntimeError("bundle_pem() needs 'data_dir' in the config; fetch the bundle via py-spiffe")
        base = Path(data_dir)
        return ((base if base.is_absolute() else self.workdir / base) / "bundle.pem").read_bytes()

    # ---- process control --------------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = meshbridge_argv(
            "workload-api", "serve", "--config", str(self.config_path), log_level=self._log_level
        )
        if self._cli_sockets:
            for name, path in self._sockets.items():
                cmd += ["--socket", f"{name}={path}"]
        if self._socket_mode is not None:
            cmd += ["--socket-mode", self._socket_mode]
        return cmd + self._extra_args

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until every socket answers."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the Workload API server is already running")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"workload-api serve exited with {self.process.returncode} during start:\n{self.logs()}"
                )
            if self._count("workload_api.started") >= 1 and all(
                connectable(p) for p in self._sockets.values()
            ):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"workload-api serve not ready after {timeout}s:\n{self.logs()}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); return the exit code."""
        return None if self.process is None else stop_process(self.process, timeout)

    def restart(self) -> None:
        """Stop, then start with the same arguments."""
        self.stop()
        self.start()

    def _signal_and_wait(self, sig: signal.Signals, events: Sequence[str], timeout: float) -> str:
        proc = self.process
        if proc is None or proc.poll() is not None:
            raise RuntimeError("the Workload API server is not running")
        before = {e: self._count(e) for e in events}
        proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in events:
                if self._count(event) > before[event]:
                    return event
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{self.logs()}")
            time.sleep(0.02)
        raise RuntimeError(f"no {' / '.join(events)} within {timeout}s after {sig.name}:\n{self.logs()}")

    def rotate(self, timeout: float = 10.0) -> None:
        """SIGUSR1: re-mint every SVID (new serials) and push; returns once the server did it."""
        self._signal_and_wait(signal.SIGUSR1, ["workload_api.rotated"], timeout)

    def reload(self, new_config: dict[str, Any], timeout: float = 10.0) -> None:
        """Rewrite the config file and SIGHUP; raise if the server rejected the new config."""
        self._write_config(new_config)
        self.config = new_config
        event = self._signal_and_wait(
            signal.SIGHUP, ["workload_api.config.reloaded", "workload_api.config.reload_failed"], timeout
        )
        if event == "workload_api.config.reload_failed":
            raise RuntimeError(f"the server rejected the new config:\n{self.logs()}")

    # ---- logs -------------------------------------------------------------------------------------
    def logs(self) -> str:
        """The server's log since the last start."""
        return log_since(self.log_path, self._log_offset)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Parsed JSON log lines since the last start (optionally only event ``name``)."""
        return log_events(self.logs(), name)

    def _count(self, event: str) -> int:
        return len(self.events(event))

    def _write_config(self, config: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        os.replace(tmp, self.config_path)


@contextmanager
def running_workload_api(
    config: dict[str, Any],
    workdir: Path,
    *,
    sockets: Sequence[str] = ("default",),
    socket_mode: str | None = None,
    extra_args: Sequence[str] = (),
    log_level: str = "debug",
) -> Iterator[WorkloadApiHandle]:
    """Start ``meshbridge workload-api serve`` for ``config``; yield its handle; always stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    with short_dir() as sockets_dir:
        if "sockets" in config:
            # relative socket paths are taken from the config file's directory, as the server does
            paths = {s["name"]: workdir / Path(s["path"]) for s in config["sockets"]}
        else:
            paths = {name: sockets_dir / f"{name}.sock" for name in sockets}
        handle = WorkloadApiHandle(config, workdir, paths, extra_args, socket_mode, log_level)
        try:
            handle.start()
            yield handle
        finally:
            handle.stop()


def sds_serving(sock: Path) -> bool:
    """Whether the SDS server on ``sock`` answers health ``SERVING`` (it holds a default SVID)."""

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


@contextmanager
def running_sds_serve(
    workload_api: str, listen: Path, log: Path, *extra: str, log_level: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``meshbridge sds serve --workload-api ADDRESS --listen LISTEN EXTRA…`` logging JSON to ``log``, once
    it serves a default SVID (:func:`sds_serving`); stopped (SIGTERM, then SIGKILL) on exit."""
    args = ["sds", "serve", "--workload-api", workload_api, "--listen", str(listen), *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            meshbridge_argv(*args, log_level=log_level),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not sds_serving(listen):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sds serve not serving (exit code {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc, STOP_TIMEOUT)


# ---- clients' side: raw calls and waiting ------------------------------------------------------------


def entry(spiffe_id: str, *selectors: str, **extra: Any) -> dict[str, Any]:
    return {"spiffe_id": spiffe_id, "selectors": list(selectors), **extra}


@contextmanager
def raw_stub(socket_path: Path) -> Iterator[Any]:
    """A plain grpcio stub of SpiffeWorkloadAPI (py-spiffe's generated code), for status-code checks."""
    channel = grpc.insecure_channel(f"unix:{socket_path}")
    try:
        yield workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]
    finally:
        channel.close()


def rpc_calls(stub: Any, metadata: Sequence[tuple[str, str]] | None) -> dict[str, Callable[[], object]]:
    """One call of each of the five RPCs (streams: their first message)."""
    md = tuple(metadata) if metadata is not None else None
    return {
        "FetchX509SVID": lambda: next(
            stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=md, timeout=10)
        ),
        "FetchX509Bundles": lambda: next(
            stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=md, timeout=10)
        ),
        "FetchJWTSVID": lambda: stub.FetchJWTSVID(
            workload_pb2.JWTSVIDRequest(audience=["svc"]), metadata=md, timeout=10
        ),
        "FetchJWTBundles": lambda: next(
            stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=md, timeout=10)
        ),
        "ValidateJWTSVID": lambda: stub.ValidateJWTSVID(
            workload_pb2.ValidateJWTSVIDRequest(audience="svc", svid="a.b.c"), metadata=md, timeout=10
        ),
    }


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
