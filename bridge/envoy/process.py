"""Run a real Envoy from a bootstrap dict, find its ports, read its admin API, stop it cleanly.

Envoy is started with the bootstrap written as JSON, ``--admin-address-path`` (admin on port 0),
``--disable-hot-restart`` (several Envoys on one machine must not share hot-restart memory) and
``--concurrency 1``. Listeners bound to port 0 are discovered from ``/listeners?format=json``.
Static listeners are
listed (and bound) before their SDS secrets arrive, but Envoy accepts connections only once its init
manager is done — ``/ready`` answers ``LIVE`` — which waits for every secret a static listener needs
(the SDS ``initial_fetch_timeout`` aside). So :meth:`wait_listeners` waits for ``LIVE`` too.

This is the one place Envoy is started: tests and benches use :class:`EnvoyProcess` as is; the demo
passes a ``launch`` function so that Envoy runs as a child of its supervisor (process group, death
signal, output in the supervisor's logs), with the same command line.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bridge.binaries import find_envoy, not_found
from bridge.envoy.bootstrap import loopback_admin
from bridge.envoy.errors import EnvoyError
from bridge.processes import stop_process

Launcher = Callable[[Sequence[str]], "tuple[subprocess.Popen[bytes], Path]"]
"""Starts Envoy's command line; returns the process and the file its output goes to."""


class EnvoyProcess:
    """One Envoy process. Use as a context manager, or call :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        bootstrap: Mapping[str, object],
        workdir: Path,
        *,
        name: str = "envoy",
        binary: Path | None = None,
        log_level: str = "warning",
        extra_args: Sequence[str] = (),
        launch: Launcher | None = None,
    ) -> None:
        self.bootstrap = dict(bootstrap)
        self.bootstrap.setdefault("admin", loopback_admin())
        self.workdir = Path(workdir)
        self.name = name
        found = binary or find_envoy()
        if found is None:
            raise EnvoyError(not_found("envoy"))
        self.binary = found
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.launch = launch
        self.config_path = self.workdir / f"{name}.json"
        self.admin_path = self.workdir / f"{name}.admin"
        self.log_path = self.workdir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.admin_address = ""

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> EnvoyProcess:
        """Start Envoy and wait until its admin endpoint answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.bootstrap, indent=1))
        self.admin_path.unlink(missing_ok=True)
        cmd = [str(self.binary), "-c", str(self.config_path), "--admin-address-path", str(self.admin_path)]
        cmd += ["--disable-hot-restart", "--concurrency", "1", "-l", self.log_level, *self.extra_args]
        try:
            if self.launch is not None:
                self._proc, self.log_path = self.launch(cmd)
            else:
                self._log_file = self.log_path.open("ab")
                self._proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT)
        except OSError as exc:
            self.stop()  # closes the log file
            raise EnvoyError(f"envoy: {str(self.binary)!r}: cannot run it ({exc.strerror or exc})") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._check_alive()
            except EnvoyError:
                self.stop()
                raise
            text = self.admin_path.read_text().strip() if self.admin_path.exists() else ""
            if text:
                self.admin_address = text
                return self
            time.sleep(0.02)
        self.stop()
        raise EnvoyError(
            f"envoy: {self.name!r}: admin endpoint did not appear within {timeout}s; log: {self.log_path}"
        )

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise EnvoyError(
                f"envoy: {self.name!r}: exited with code {self._proc.returncode}; "
                f"log tail:\n{self.log_tail()}"
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Terminate (then kill after ``timeout``); return the exit code."""
        proc, self._proc = self._proc, None
        code = None if proc is None else stop_process(proc, timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    def __enter__(self) -> EnvoyProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # ---- admin API -------------------------------------------------------------------------------
    def admin(self, path: str, *, timeout: float = 5.0) -> bytes:
        """Raw admin response body for ``path`` (e.g. ``/certs``)."""
        if not self.admin_address:
            raise EnvoyError(f"envoy: {self.name!r}: not started")
        url = f"http://{self.admin_address}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body

    def admin_json(self, path: str) -> Any:
        return json.loads(self.admin(path))

    def certs(self) -> dict[str, Any]:
        """``/certs``: the certificates Envoy holds (serials, SANs, expiry)."""
        data: dict[str, Any] = self.admin_json("/certs")
        return data

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        """Counters and gauges as ``{name: value}`` (histograms left out)."""
        query = "/stats?format=json" + (f"&filter={urllib.parse.quote(filter_regex)}" if filter_regex else "")
        out: dict[str, int] = {}
        for item in self.admin_json(query).get("stats", []):
            value = item.get("value")
            if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
                out[item["name"]] = int(value)
        return out

    def live(self) -> bool:
        """``/ready`` says ``LIVE``: initialisation done, static listeners' SDS secrets warm."""
        try:
            return self.admin("/ready").strip() == b"LIVE"
        except urllib.error.HTTPError:
            return False

    def listeners(self) -> dict[str, tuple[str, int]]:
        """Listeners: ``{name: (host, port)}``."""
        out: dict[str, tuple[str, int]] = {}
        for status in self.admin_json("/listeners?format=json").get("listener_statuses", []):
            sa = status.get("local_address", {}).get("socket_address", {})
            if sa.get("port_value"):
                out[status["name"]] = (sa.get("address", ""), int(sa["port_value"]))
        return out

    def active_secrets(self) -> dict[str, dict[str, Any]]:
        """``{secret name: its dynamic_active_secrets entry}`` (``version_info``, ``secret``)."""
        dump = self.admin_json("/config_dump?resource=dynamic_active_secrets")
        return {config.get("name", ""): config for config in dump.get("configs", [])}

    # ---- waiting ---------------------------------------------------------------------------------
    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05
    ) -> Any:
        """Poll ``check`` until it returns something truthy (admin errors count as not yet)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            with contextlib.suppress(urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                result = check()
                if result:
                    return result
            if time.monotonic() >= deadline:
                raise EnvoyError(
                    f"envoy: {self.name!r}: timed out after {timeout}s waiting for {what}; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def wait_listeners(
        self, names: Sequence[str] | None = None, timeout: float = 30.0
    ) -> dict[str, tuple[str, int]]:
        """Wait until ``names`` (default: every static listener) are active; return their addresses."""
        wanted = list(names) if names is not None else [l["name"] for l in self._static_listeners()]  # noqa: E741

        def ready() -> dict[str, tuple[str, int]] | None:
            if not self.live():
                return None
            have = self.listeners()
            return have if all(n in have for n in wanted) else None

        result: dict[str, tuple[str, int]] = self.wait_for(f"listeners {wanted} active", ready, timeout)
        return result

    def listener_ports(self, timeout: float = 30.0) -> dict[str, int]:
        """Wait until every static listener is active; return ``{name: port}``."""
        return {name: port for name, (_, port) in self.wait_listeners(timeout=timeout).items()}

    def listener_port(self, name: str, timeout: float = 30.0) -> int:
        return self.wait_listeners([name], timeout)[name][1]

    def _static_listeners(self) -> list[dict[str, Any]]:
        static = self.bootstrap.get("static_resources", {})
        listeners = static.get("listeners", []) if isinstance(static, dict) else []
        return [l for l in listeners if isinstance(l, dict)]  # noqa: E741

    def wait_secret(
        self, name: str, predicate: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Wait until secret ``name`` is active (and ``predicate(entry)`` holds); return its entry."""

        def check() -> dict[str, Any] | None:
            entry = self.active_secrets().get(name)
            if entry is None or (predicate is not None and not predicate(entry)):
                return None
            return entry

        result: dict[str, Any] = self.wait_for(f"secret {name!r}", check, timeout)
        return result

    def cert_serials(self) -> set[str]:
        """Serial numbers (hex, lowercase, no leading zeros) of every certificate Envoy presents."""
        serials = {
            str(cert.get("serial_number", "")).lower().lstrip("0")
            for entry in self.certs().get("certificates", [])
            for cert in entry.get("cert_chain", [])
        }
        return serials - {""}


def running_envoy(bootstrap: Mapping[str, object], workdir: Path, **kwargs: Any) -> EnvoyProcess:
    """``with running_envoy(bootstrap, dir) as envoy:`` — started on entry, stopped on exit."""
    return EnvoyProcess(bootstrap, workdir, **kwargs)
