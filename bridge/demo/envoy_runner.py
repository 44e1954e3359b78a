"""Real Envoy under the demo's supervisor: start from a bootstrap dict, find its ports, read its admin API.

Each Envoy gets admin on 127.0.0.1:0 (address read back from ``--admin-address-path``), a dynamic base id
(several Envoys on one host) and the supervisor's death signal. Listener ports bound as 0 are read from
admin ``/listeners?format=json``; readiness is admin ``/ready`` = LIVE (every SDS secret arrived, no
listener warming).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bridge.demo.errors import DemoError
from bridge.demo.supervisor import Child, Supervisor


@dataclass(frozen=True, slots=True)
class RunningEnvoy:
    name: str
    child: Child
    admin: str
    """``http://127.0.0.1:PORT`` of the admin API."""
    listeners: dict[str, int]
    """Listener name → bound loopback port."""

    def get(self, path: str, timeout: float = 2.0) -> str:
        with urllib.request.urlopen(self.admin + path, timeout=timeout) as resp:  # noqa: S310 - loopback admin
            return str(resp.read().decode())

    def certs(self) -> list[dict[str, object]]:
        """Admin ``/certs``: the certificates Envoy holds (serials, SANs, expiry)."""
        data = json.loads(self.get("/certs"))
        certs = data.get("certificates", [])
        return certs if isinstance(certs, list) else []


def _admin_get(admin: str, path: str) -> str:
    with urllib.request.urlopen(admin + path, timeout=1.0) as resp:  # noqa: S310 - loopback admin
        return str(resp.read().decode())


def start_envoy(
    sup: Supervisor, envoy_bin: Path, name: str, bootstrap: dict[str, object], *, timeout: float = 15.0
) -> RunningEnvoy:
    """Start Envoy with ``bootstrap`` (admin added here) and wait until it is LIVE with ports bound."""
    workdir = sup.subdir(f"envoy-{name}")
    admin_path = workdir / "admin-address"
    config = dict(bootstrap)
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    config_path = workdir / "bootstrap.json"
    config_path.write_text(json.dumps(config))
    child = sup.start(
        f"envoy-{name}",
        [
            str(envoy_bin),
            "-c",
            str(config_path),
            "--admin-address-path",
            str(admin_path),
            "--use-dynamic-base-id",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
        ],
    )
    deadline = time.monotonic() + timeout
    admin = ""
    last = ""
    while time.monotonic() < deadline:
        if not child.alive():
            raise DemoError(
                f"envoy {name}: exited with code {child.popen.returncode}:\n{child.output_tail()}"
            )
        if not admin and admin_path.exists() and admin_path.read_text().strip():
            admin = "http://" + admin_path.read_text().strip()
        if admin:
            try:
                last = _admin_get(admin, "/ready").strip()
                if last == "LIVE":
                    data = json.loads(_admin_get(admin, "/listeners?format=json"))
                    ports = {
                        ls["name"]: int(ls["local_address"]["socket_address"]["port_value"])
                        for ls in data.get("listener_statuses", [])
                    }
                    return RunningEnvoy(name=name, child=child, admin=admin, listeners=ports)
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                pass
        time.sleep(0.05)
    raise DemoError(
        f"envoy {name}: not ready after {timeout:.0f}s (state {last or 'unknown'}); "
        "a listener waiting for an "
        f"SDS secret stays warming:\n{child.output_tail()}"
    )
