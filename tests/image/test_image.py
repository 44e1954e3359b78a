"""Issue 15 §4: the SDS server image, built by ``image/build.sh`` (what ``make image`` runs), run with crun
as the rendered ``meshbridge-sds`` container (``istio.mesh.sds_container``: its command, securityContext
and volumeMounts), serving SDS on a bind-mounted socket to a real Envoy; its identity comes from the real
embedded Workload API over a bind-mounted socket, attested by the container process's uid (1337)."""

from __future__ import annotations

import errno
import importlib.metadata
import os
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from bridge.envoy import EnvoyProcess, sidecar_bootstrap
from istio.mesh import WORKLOAD_API_VOLUME, WORKLOAD_SOCKET_VOLUME, sds_container
from istio.model import OverlayParams
from tests.image.crun import ARCHIVE, Bundle, Container, ToolsUnavailable, build_image, unpack
from tests.sds_server.wl import CLIENT_ID, MESH_ID, Identity, fetch_identity
from tests.support.envoy import echo_backend, https_get, mtls_context
from tests.support.tmp import short_dir
from tests.support.workload_api import WorkloadApiHandle, running_workload_api

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("envoy_bin"), pytest.mark.timeout(1500)]

PROXY_UID = 1337
TRUST_DOMAIN = "example.org"
PARAMS = OverlayParams(trust_domain=TRUST_DOMAIN, sds_image="")
WL_SOCKET = PARAMS.workload_api_socket_name.removesuffix(".sock")  # the helper names sockets NAME.sock
IDLE_RSS_LIMIT = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    try:
        archive = build_image()
    except ToolsUnavailable as exc:
        pytest.skip(f"buildah/crun/umoci/mmdebstrap cannot be had here: {exc}")
    workdir = tmp_path_factory.mktemp("image")
    yield unpack(archive, workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # ~140 MB; pytest keeps its last three base temps


@dataclass
class Pod:
    spec: dict[str, Any]
    container: Container
    api: WorkloadApiHandle
    sds_socket: Path  # the host side of the bind-mounted SDS socket
    started_in: float  # container start → SDS socket bound, seconds


@contextmanager
def running_pod(bundle: Bundle, workdir: Path) -> Iterator[Pod]:
    """The Workload API on the host; the image as the rendered ``meshbridge-sds`` container."""
    spec: dict[str, Any] = sds_container(OverlayParams(trust_domain=TRUST_DOMAIN, sds_image=bundle.ref))
    config = {
        "trust_domain": TRUST_DOMAIN,
        "svid_ttl": "1h",
        "entries": [  # the container process (uid 1337) is the mesh workload, this process the external app
            {"spiffe_id": MESH_ID, "selectors": [f"unix:uid:{PROXY_UID}"]},
            {"spiffe_id": CLIENT_ID, "selectors": [f"unix:uid:{os.getuid()}"]},
        ],
    }
    with (
        running_workload_api(config, workdir / "wl", sockets=(WL_SOCKET,), socket_mode="0777") as api,
        short_dir() as sds_dir,
    ):
        api.socket(WL_SOCKET).parent.chmod(0o755)  # the CSI volume: readable by uid 1337
        sds_dir.chmod(0o777)  # an emptyDir
        volumes = {WORKLOAD_SOCKET_VOLUME: sds_dir, WORKLOAD_API_VOLUME: api.socket(WL_SOCKET).parent}
        container = Container(bundle, spec, volumes, workdir / "crun")
        t0 = time.monotonic()
        container.start()
        try:
            sock = sds_dir / "socket"
            container.wait_for("the SDS socket", sock.is_socket, timeout=60)
            yield Pod(spec, container, api, sock, time.monotonic() - t0)
        finally:
            container.stop()


@dataclass
class Mesh:
    pod: Pod
    envoy: EnvoyProcess
    port: int
    client: Identity


@pytest.fixture(scope="module")
def mesh(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("pod")
    with running_pod(bundle, workdir) as pod, echo_backend() as backend, short_dir() as envoy_dir:
        bootstrap = sidecar_bootstrap(
            sds_socket=pod.sds_socket, trust_domain=TRUST_DOMAIN, backend_port=backend.port
        )
        envoy = EnvoyProcess(bootstrap, envoy_dir).start()
        try:
            port = envoy.listener_port("inbound")
            yield Mesh(pod, envoy, port, fetch_identity(pod.api.address(WL_SOCKET)))
        finally:
            envoy.stop()


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _tree_bytes(root: Path) -> int:
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(root) for f in files)


def test_image_is_tagged_for_the_spec_runs_as_1337_and_has_no_shell(bundle: Bundle) -> None:
    assert bundle.ref == f"localhost/meshbridge/sds-server:{importlib.metadata.version('meshbridge')}"
    config: dict[str, Any] = bundle.image_config["config"]
    assert config["User"] == f"{PROXY_UID}:{PROXY_UID}"
    assert config["Entrypoint"] == ["/opt/meshbridge/bin/meshbridge"]
    assert config["Cmd"][:2] == ["sds", "serve"]
    for path in (
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/bash",
        "bin/dash",
        "usr/bin/dash",
        "bin/busybox",
        "usr/bin/busybox",
        "usr/bin/test",
        "usr/bin/dpkg",
        "usr/bin/apt-get",
        "opt/meshbridge/bin/pip",
    ):
        assert not os.path.lexists(bundle.rootfs / path), path
    print(
        f"\nimage {bundle.ref}: archive {ARCHIVE.stat().st_size:,} bytes, "
        f"unpacked root filesystem {_tree_bytes(bundle.rootfs):,} bytes"
    )


def test_envoy_gets_default_and_rootca_from_the_container(mesh: Mesh) -> None:
    mesh.envoy.wait_secret("default", timeout=30)
    mesh.envoy.wait_secret("ROOTCA", timeout=30)
    assert mesh.envoy.active_secrets().keys() >= {"default", "ROOTCA"}
    resp = https_get(
        mesh.port, mtls_context(mesh.client.bundle_pem, mesh.client.chain_pem, mesh.client.key_pem)
    )
    assert resp.status == 200
    assert resp.server_spiffe_id == MESH_ID  # the SVID the Workload API gave uid 1337 in the container
    headers = resp.json()["headers"]
    assert isinstance(headers, dict)
    assert f"URI={CLIENT_ID}" in headers["x-forwarded-client-cert"]
    print(f"\ncontainer start → SDS socket bound: {mesh.pod.started_in * 1000:.0f} ms")


def test_container_runs_as_1337_read_only_without_capabilities(mesh: Mesh) -> None:
    container = mesh.pod.container
    pid = container.pid
    assert "sds serve" in " ".join(psutil.Process(pid).cmdline())
    status = _proc_status(pid)
    assert status["Uid"].split() == [str(PROXY_UID)] * 4
    assert status["Gid"].split() == [str(PROXY_UID)] * 4
    assert int(status["CapEff"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    root = next(
        line.split()
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    assert "ro" in root[5].split(",")
    # /tmp is 1777 in the image: only a read-only root filesystem refuses the write
    write = "\n".join(
        [
            "import os",
            "try:",
            "    os.open('/tmp/x', os.O_CREAT | os.O_WRONLY)",
            "except OSError as e:",
            "    print(e.errno)",
        ]
    )
    attempt = container.exec(["/opt/meshbridge/bin/python", "-c", write])
    assert attempt.returncode == 0, attempt.stderr
    assert attempt.stdout.strip() == str(errno.EROFS)
    st = mesh.pod.sds_socket.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (PROXY_UID, 0o600)


def test_sds_probe_passes_in_the_container_and_fails_without_a_server(mesh: Mesh) -> None:
    mounts = mesh.pod.spec["volumeMounts"]
    socket = next(m["mountPath"] for m in mounts if m["name"] == WORKLOAD_SOCKET_VOLUME)
    ok = mesh.pod.container.exec(["meshbridge", "sds", "probe", "--listen", f"{socket}/socket"])
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    missing = mesh.pod.container.exec(["meshbridge", "sds", "probe", "--listen", f"{socket}/nothing-here"])
    assert missing.returncode != 0


def test_rendered_startup_probe_passes_in_the_container(mesh: Mesh) -> None:
    """The probe ``istio.mesh.sds_container`` renders must run in this image (no shell, no coreutils)."""
    probe = mesh.pod.spec["startupProbe"]["exec"]["command"]
    result = mesh.pod.container.exec(probe)
    assert result.returncode == 0, (probe, result.stdout, result.stderr)


def test_idle_rss_in_the_container(mesh: Mesh) -> None:
    mesh.envoy.wait_secret("ROOTCA", timeout=30)
    time.sleep(2)
    rss = psutil.Process(mesh.pod.container.pid).memory_info().rss
    print(f"\nidle RSS of `meshbridge sds serve` in the container, one Envoy on it: {rss / 2**20:.1f} MiB")
    assert rss < IDLE_RSS_LIMIT


def test_sigterm_to_pid_1_stops_cleanly_and_removes_the_socket(bundle: Bundle, tmp_path: Path) -> None:
    with running_pod(bundle, tmp_path) as pod:
        assert pod.container.pid != os.getpid()
        assert pod.container.stop() == 0, pod.container.logs()
        assert not pod.sds_socket.exists()
