"""A real Kubernetes API server on 127.0.0.1 for tests: etcd + kube-apiserver, no kubelet, no controllers.

Both are built by ``make peers`` (``etcd`` from ``go.etcd.io/etcd/server/v3``, ``kube-apiserver`` from
``k8s.io/kubernetes``). Certificates are generated here (``cryptography``): one CA signs the serving
certificate (127.0.0.1, ``kubernetes.default.svc``) and an admin client certificate in ``system:masters``;
the kubeconfig written next to them is what ``meshbridge apply --kubeconfig`` and :class:`bridge.kube.Cluster`
read.

One etcd can back several API servers, each under its own ``--etcd-prefix``: separate clusters for the
price of one etcd (e.g. one with the CRDs installed and one bare).

Ports: etcd's client and peer listeners and the API server's secure port are TCP on 127.0.0.1 (neither
takes port 0 in a usable way: etcd would advertise ``:0`` and kube-apiserver treats ``--secure-port=0`` as
"do not serve"). A free port is probed just before each start and the start is retried, with new ports,
if the process exits because another took it first. Every wait is bounded; processes log to files in the
work directory, quoted in failures.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge import spire_local
from bridge.kube import Cluster
from tests.support.pki import key_pem, pem, self_signed_ca, sign_leaf

START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
ATTEMPTS = 3
SERVICE_CIDR = "10.96.0.0/24"


class KubeStartError(RuntimeError):
    """etcd or kube-apiserver did not come up (message quotes its log)."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now (held together while probing)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---- PKI ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KubePki:
    """Files: ``ca.crt``, ``apiserver.crt/.key``, ``admin.crt/.key``, ``sa.key/.pub`` (token signer)."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @classmethod
    def create(cls, directory: Path) -> KubePki:
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = self_signed_ca("meshbridge-test-kube-ca", backdate=dt.timedelta(minutes=5))
        (directory / "ca.crt").write_bytes(pem(ca))
        end = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)

        def leaf(name: str, sans: list[x509.GeneralName], cn: str, org: str | None = None) -> None:
            attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
            cert, key = sign_leaf(ca, ca_key, sans, subject=x509.Name(attrs), end=end)
            (directory / f"{name}.crt").write_bytes(pem(cert))
            (directory / f"{name}.key").write_bytes(key_pem(key))

        service_ip = next(ipaddress.IPv4Network(SERVICE_CIDR).hosts())
        ips = [ipaddress.ip_address("127.0.0.1"), service_ip]
        dns = [
            "localhost",
            "kubernetes",
            *(f"kubernetes.default{s}" for s in ("", ".svc", ".svc.cluster.local")),
        ]
        leaf("apiserver", [*map(x509.IPAddress, ips), *map(x509.DNSName, dns)], "kube-apiserver")
        leaf("admin", [], "meshbridge-test-admin", "system:masters")
        sa_key = ec.generate_private_key(ec.SECP256R1())
        (directory / "sa.key").write_bytes(key_pem(sa_key))
        (directory / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return cls(directory)


# ---- processes ----------------------------------------------------------------------------------------
def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    spire_local.stop_process(proc, STOP_TIMEOUT)


def _port_taken(log: Path) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "address already in use" in text


@contextlib.contextmanager
def _started(
    launch: Callable[[], tuple[list[str], str]],
    health: str,
    log_stem: Path,
    ssl_context: ssl.SSLContext | None,
) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
    """Run ``launch()``'s command (fresh ports each attempt; it returns the command and the base URL),
    logging to ``<log_stem>.<attempt>.log``, until ``<url><health>`` answers 200; start again with new
    ports while the last start lost a port to another process; stopped on exit."""
    for attempt in range(ATTEMPTS):
        cmd, url = launch()
        log = log_stem.with_name(f"{log_stem.name}.{attempt}.log")
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_http(f"{url}{health}", proc, log, ssl_context=ssl_context)
        except KubeStartError:
            stop_process(proc)
            if _port_taken(log) and attempt + 1 < ATTEMPTS:
                continue
            raise
        try:
            yield proc, log, url
        finally:
            stop_process(proc)
        return


@dataclass
class Etcd:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def run_etcd(etcd: Path, workdir: Path) -> Iterator[Etcd]:
    """etcd on 127.0.0.1 (data in ``workdir/etcd``), stopped on exit."""

    def launch() -> tuple[list[str], str]:
        client_port, peer_port = free_ports(2)
        client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
        return (
            [
                str(etcd),
                "--name",
                "meshbridge-test",
                "--data-dir",
                str(workdir / "etcd"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"meshbridge-test={peer}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            client,
        )

    with _started(launch, "/health", workdir / "etcd", ssl_context=None) as (proc, log, url):
        yield Etcd(url, proc, log)


def _wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, ssl_context: ssl.SSLContext | None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise KubeStartError(f"{log.stem} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=ssl_context) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise KubeStartError(f"{url} not ready within {START_TIMEOUT:.0f}s ({last}):\n{_tail(log)}")


@dataclass
class ApiServer:
    """A running kube-apiserver: its URL and a kubeconfig for the admin (``system:masters``)."""

    url: str
    kubeconfig: Path
    pki: KubePki
    proc: subprocess.Popen[bytes]
    log: Path

    def connect(self) -> Cluster:
        return Cluster.connect(kubeconfig=str(self.kubeconfig))


def _write_kubeconfig(path: Path, url: str, pki: KubePki, context: str = "meshbridge-test") -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: {context}\n  cluster:\n    server: {url}\n"
        f"    certificate-authority: {pki.ca}\n"
        f"users:\n- name: admin\n  user:\n    client-certificate: {pki.dir / 'admin.crt'}\n"
        f"    client-key: {pki.dir / 'admin.key'}\n"
        f"contexts:\n- name: {context}\n  context:\n    cluster: {context}\n    user: admin\n"
        f"current-context: {context}\n"
    )


@contextlib.contextmanager
def run_apiserver(kube_apiserver: Path, etcd: Etcd, workdir: Path, prefix: str) -> Iterator[ApiServer]:
    """kube-apiserver on 127.0.0.1 storing under ``/<prefix>`` in ``etcd``; stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    pki = KubePki.create(workdir / "pki")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.dir / "admin.crt"), str(pki.dir / "admin.key"))

    def launch() -> tuple[list[str], str]:
        (port,) = free_ports(1)
        return (
            [
                str(kube_apiserver),
                "--etcd-servers",
                etcd.url,
                "--etcd-prefix",
                f"/{prefix}",
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(port),
                "--cert-dir",
                str(workdir / "generated"),
                "--tls-cert-file",
                str(pki.dir / "apiserver.crt"),
                "--tls-private-key-file",
                str(pki.dir / "apiserver.key"),
                "--client-ca-file",
                str(pki.ca),
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                str(pki.dir / "sa.pub"),
                "--service-account-signing-key-file",
                str(pki.dir / "sa.key"),
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--authorization-mode",
                "RBAC",
                "--profiling=false",
                "--v",
                "1",
            ],
            f"https://127.0.0.1:{port}",
        )

    with _started(launch, "/readyz", workdir / "kube-apiserver", ssl_context=ctx) as (proc, log, url):
        kubeconfig = workdir / "kubeconfig"
        _write_kubeconfig(kubeconfig, url, pki)
        yield ApiServer(url, kubeconfig, pki, proc, log)
