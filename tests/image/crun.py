"""Build the SDS image with ``image/build.sh`` and run it with crun the way a kubelet runs a container.

No Docker daemon and no kubelet here: the OCI archive is unpacked into a runtime bundle with
``umoci unpack``, and its ``config.json`` (from the image's config: env, USER, entrypoint) is adjusted
from a rendered Kubernetes container spec (``istio.mesh.sds_container``): ``command``, the
``securityContext`` (user, read-only root, capabilities dropped, no privilege escalation) and the
``volumeMounts`` as bind mounts of host directories. Containers get their own PID, mount, IPC, UTS and
network namespaces (the SDS server needs Unix sockets only); cgroups are left alone
(``--cgroup-manager=disabled``: nothing here limits resources).

crun refuses a *hybrid* cgroup layout with controllers on the v2 hierarchy (seen here:
``/sys/fs/cgroup/unified`` with ``hugetlb``). Every crun call then runs in a private mount namespace
with ``/sys/fs/cgroup/unified`` unmounted, so crun sees plain v1; the host is not changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "image" / "build.sh"
ARCHIVE = REPO / "build" / "sds-server.oci.tar"
TOOLS_MISSING = 3  # image/build.sh's exit code when buildah & co. are missing and cannot be installed


class ToolsUnavailable(Exception):
    """buildah/crun/umoci/mmdebstrap are not installed and ``image/build.sh tools`` could not install them."""


def build_image(timeout: float = 1200) -> Path:
    """Install the tools if missing (Debian, root), build (cached) with the script ``make image`` runs."""
    tools = subprocess.run(
        [str(BUILD_SCRIPT), "tools"], capture_output=True, text=True, timeout=timeout, check=False
    )
    if tools.returncode == TOOLS_MISSING:
        raise ToolsUnavailable(tools.stderr.strip())
    if tools.returncode != 0:
        raise RuntimeError(f"image/build.sh tools failed ({tools.returncode}):\n{tools.stderr}")
    build = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False)
    if build.returncode != 0:
        raise RuntimeError(f"image/build.sh failed ({build.returncode}):\n{build.stdout}\n{build.stderr}")
    return ARCHIVE


@dataclass(frozen=True)
class Bundle:
    """An unpacked image: ``rootfs/``, the image's reference and its OCI config."""

    path: Path
    ref: str
    image_config: dict[str, Any]
    base_config: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"


def _blob(layout: Path, digest: str) -> dict[str, Any]:
    algo, hexdigest = digest.split(":", 1)
    data: dict[str, Any] = json.loads((layout / "blobs" / algo / hexdigest).read_bytes())
    return data


def unpack(archive: Path, workdir: Path) -> Bundle:
    """``umoci unpack`` the archive's one image into ``workdir/bundle``."""
    layout = workdir / "oci"
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="tar")
    index = json.loads((layout / "index.json").read_text())
    [manifest_desc] = index["manifests"]
    ref = manifest_desc["annotations"]["org.opencontainers.image.ref.name"]
    manifest = _blob(layout, manifest_desc["digest"])
    image_config = _blob(layout, manifest["config"]["digest"])
    bundle = workdir / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:{ref}", str(bundle)], check=True, capture_output=True
    )
    base = json.loads((bundle / "config.json").read_text())
    return Bundle(bundle, ref, image_config, base)


def _crun_argv(state_dir: Path, *args: str) -> list[str]:
    crun = ["crun", "--root", str(state_dir), "--cgroup-manager=disabled", *args]
    if os.path.ismount("/sys/fs/cgroup/unified"):
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            'umount -l /sys/fs/cgroup/unified && exec "$@"',
            "sh",
            *crun,
        ]
    return crun


class Container:
    """One crun container from a bundle and a Kubernetes container spec. ``start`` / ``stop``."""

    def __init__(
        self,
        bundle: Bundle,
        spec: Mapping[str, Any],
        volumes: Mapping[str, Path],
        workdir: Path,
    ) -> None:
        """``volumes``: the host directory bind-mounted for each ``volumeMounts[].name``."""
        self.bundle = bundle
        self.spec = spec
        self.id = f"mb-sds-{uuid.uuid4().hex[:12]}"
        self.workdir = workdir
        self.state_dir = workdir / "crun-state"
        self.log_path = workdir / f"{self.id}.log"
        self._volumes = dict(volumes)
        self.process: subprocess.Popen[bytes] | None = None

    # ---- config.json ------------------------------------------------------------------------------
    def runtime_config(self) -> dict[str, Any]:
        """The bundle's config with the pod spec applied, as a kubelet + OCI runtime would."""
        config: dict[str, Any] = json.loads(json.dumps(self.bundle.base_config))
        process = config["process"]
        sc = self.spec.get("securityContext", {})
        process["terminal"] = False
        if "command" in self.spec:
            process["args"] = list(self.spec["command"]) + list(self.spec.get("args", []))
        if "runAsUser" in sc:
            process["user"] = {"uid": sc["runAsUser"], "gid": sc.get("runAsGroup", sc["runAsUser"])}
        if "ALL" in sc.get("capabilities", {}).get("drop", []):
            process["capabilities"] = {
                k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
            }
        process["noNewPrivileges"] = not sc.get("allowPrivilegeEscalation", True)
        config["root"] = {"path": str(self.bundle.rootfs), "readonly": bool(sc.get("readOnlyRootFilesystem"))}
        config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/sys/fs/cgroup"]
        for mount in self.spec.get("volumeMounts", []):
            source = self._volumes[mount["name"]]
            config["mounts"].append(
                {
                    "destination": mount["mountPath"],
                    "type": "bind",
                    "source": str(source),
                    "options": ["rbind", "ro" if mount.get("readOnly") else "rw"],
                }
            )
        config["linux"].pop("resources", None)
        return config

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Container:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        bundle_dir = self.workdir / self.id
        bundle_dir.mkdir()
        (bundle_dir / "config.json").write_text(json.dumps(self.runtime_config(), indent=1))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                _crun_argv(self.state_dir, "run", "--bundle", str(bundle_dir), self.id),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def crun(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _crun_argv(self.state_dir, *args), capture_output=True, text=True, timeout=timeout, check=False
        )

    @property
    def pid(self) -> int:
        """The container's first process, as the host sees it."""
        state = self.crun("state", self.id)
        if state.returncode != 0:
            raise RuntimeError(f"crun state {self.id}: {state.stderr.strip()}\n{self.logs()}")
        pid: int = json.loads(state.stdout)["pid"]
        return pid

    def exec(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container as its user (what a kubelet exec probe does)."""
        user = self.runtime_config()["process"]["user"]
        return self.crun("exec", "--user", f"{user['uid']}:{user['gid']}", self.id, *argv, timeout=timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def logs(self) -> str:
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"container exited while waiting for {what}:\n{self.logs()}")
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise RuntimeError(f"no {what} after {timeout}s:\n{self.logs()}")

    def signal(self, sig: signal.Signals) -> None:
        self.crun("kill", self.id, sig.name.removeprefix("SIG"))

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout``), delete; return the container's exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                proc.wait(10)
        self.crun("delete", "--force", self.id)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.workdir / self.id)
        return proc.returncode
