"""Starting the demo's peers, step by step, under one supervisor.

Each function starts one part of the picture and returns what later steps need; all processes belong to
the :class:`~bridge.demo.supervisor.Supervisor`, so any failure (or Ctrl-C) stops everything started so far.

    Workload API (embedded, one socket per side) ──► SDS server ──► Envoy sidecar (STRICT) ──► httpbin
         │  per app: SVID → SVIDStore/CAS stand-in → session │
         └──► Ghostunnel (files / Workload API)  or  Envoy as the network shield ──► sidecar
"""

from __future__ import annotations

import hashlib
import json
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from bridge.demo.cas import (
    Secret,
    inject,
    post_bundle_session,
    post_federated_bundles_session,
    post_svid_session,
    resolve_imports,
)
from bridge.demo.errors import DemoError
from bridge.demo.identities import (
    Identity,
    SvidMaterial,
    by_trust_domain,
    fetch_svid,
    upstream_ca,
    workload_api_config,
)
from bridge.demo.plan import AppPlan, DemoPlan, MeshSide
from bridge.demo.shield import parse_shield_env, shield_bootstrap
from bridge.demo.supervisor import Child, Supervisor
from bridge.demo.tunnel import (
    GhostunnelCommand,
    LocalTunnel,
    localize,
    to_workload_api_variant,
    with_verify_uri,
    write_injected_files,
)
from bridge.envoy import EnvoyError, EnvoyProcess
from bridge.envoy.bootstrap import sidecar_bootstrap
from bridge.processes import free_port

MESH_SOCKET = "mesh"
INTRUDER_SOCKET = "intruder"
MESH_CALLER_SOCKET = "mesh-caller"
MESH_CALLER_SA = "sleep"
"""An in-mesh workload calling the target with no ``meshCallers`` entry (Istio's ``sleep`` sample)."""


def meshbridge_argv(*args: str) -> list[str]:
    """``meshbridge …`` run with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "bridge.cli", "--log-format", "json", *args]


class WorkloadApi:
    """Where each side of the demo gets its identity: one name per side (``mesh``, ``mesh-inventory``,
    ``mesh-caller``, each app's, ``intruder``). The embedded mode serves one socket per side; the SPIRE
    mode (:mod:`bridge.demo.spire_mode`) one agent socket per trust domain, each side told apart by the
    group its processes run in."""

    rotation: str = "forced rotation of every SVID"

    def address(self, name: str) -> str:
        """``unix://…``: the Workload API address side ``name``'s processes use."""
        raise NotImplementedError

    def run_as(self, name: str) -> int | None:
        """The group side ``name``'s processes must run in (``None``: as the demo itself)."""
        return None

    def side(self, name: str) -> str:
        """How side ``name`` is told apart, for the output (``mesh.sock``, ``gid 61001``)."""
        raise NotImplementedError

    def fetch(
        self, name: str, *, not_serial: int | None = None, timeout: float | None = None
    ) -> SvidMaterial:
        """Side ``name``'s SVID now (or, with ``not_serial``, once it differs from that serial)."""
        raise NotImplementedError

    def rotate(self) -> None:
        """Make every side's SVID be re-issued (pushed to open streams)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class EmbeddedWorkloadApi(WorkloadApi):
    """The embedded Workload API: one process per trust domain, one socket per side."""

    children: tuple[Child, ...]
    directory: Path
    trust_domains: Mapping[str, str]
    """Socket name → the trust domain of the process serving it."""

    rotation = "forced rotation of every SVID (SIGUSR1 to the Workload API)"

    def socket(self, name: str) -> Path:
        return self.directory / f"{name}.sock"

    def address(self, name: str) -> str:
        return f"unix://{self.socket(name)}"

    def side(self, name: str) -> str:
        return f"{name}.sock"

    def fetch(
        self, name: str, *, not_serial: int | None = None, timeout: float | None = None
    ) -> SvidMaterial:
        return fetch_svid(
            self.socket(name), self.trust_domains[name], timeout=timeout or 10.0, not_serial=not_serial
        )

    def rotate(self) -> None:
        """SIGUSR1: each embedded Workload API re-mints every SVID and pushes them on open streams."""
        for child in self.children:
            child.popen.send_signal(signal.SIGUSR1)


def start_workload_api(sup: Supervisor, identities: Sequence[Identity]) -> EmbeddedWorkloadApi:
    """One ``meshbridge workload-api serve`` per trust domain of ``identities``.

    With more than one trust domain each gets a pre-generated upstream CA (its bundle), and each entry's
    ``federates_with`` names the other trust domain, whose bundle file is that CA: the two Workload APIs
    are federated with each other as two SPIRE servers exchanging bundles would be.
    """
    directory = sup.subdir("wa")
    by_td = by_trust_domain(identities)
    upstreams = {td: upstream_ca(td, directory) for td in by_td} if len(by_td) > 1 else {}
    children = []
    for td, idents in by_td.items():
        config = directory / f"config-{td}.yaml"
        doc = workload_api_config(
            td,
            idents,
            directory,
            upstream=upstreams.get(td),
            federation={f: upstreams[f][0] for i in idents for f in i.federates_with if f != td},
        )
        config.write_text(yaml.safe_dump(doc))
        children.append(
            sup.start(f"workload-api-{td}", meshbridge_argv("workload-api", "serve", "--config", str(config)))
        )
    wa = EmbeddedWorkloadApi(tuple(children), directory, {i.socket_name: i.trust_domain for i in identities})
    for ident in identities:
        _wait_for_path(sup, wa.socket(ident.socket_name), "workload API")
    return wa


def _wait_for_path(sup: Supervisor, path: Path, who: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        sup.check_alive()
        if time.monotonic() > deadline:
            raise DemoError(f"{who}: socket {path} not created within {timeout:.0f}s")
        time.sleep(0.05)


def start_httpbin(sup: Supervisor, timeout: float = 20.0) -> int:
    """httpbin in a child process; returns the port from the JSON line it prints once listening."""
    child = sup.start("httpbin", [sys.executable, "-m", "bridge.demo.httpbin_server"], stdout_pipe=True)
    assert child.popen.stdout is not None
    if not select.select([child.popen.stdout], [], [], timeout)[0]:
        raise DemoError(f"{child.name}: said nothing within {timeout:.0f}s:\n{child.output_tail()}")
    line = child.popen.stdout.readline()
    try:
        return int(json.loads(line)["port"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DemoError(f"{child.name}: unexpected output {line[:200]!r}:\n{child.output_tail()}") from exc


@dataclass(frozen=True, slots=True)
class RunningEnvoy:
    """An Envoy run by :class:`bridge.envoy.EnvoyProcess` as a child of the demo's supervisor."""

    process: EnvoyProcess
    child: Child
    listeners: dict[str, int]
    """Static listener name → bound loopback port."""

    def get(self, path: str, timeout: float = 2.0) -> str:
        """Admin API ``path`` (e.g. ``/stats?filter=…``) as text."""
        return self.process.admin(path, timeout=timeout).decode()


def start_envoy(
    sup: Supervisor, envoy_bin: Path, name: str, bootstrap: dict[str, object], *, timeout: float = 15.0
) -> RunningEnvoy:
    """Start Envoy under ``sup`` and wait until it is LIVE (every SDS secret arrived) with ports bound."""
    children: list[Child] = []

    def launch(argv: Sequence[str]) -> tuple[subprocess.Popen[bytes], Path]:
        children.append(sup.start(f"envoy-{name}", argv))
        return children[-1].popen, children[-1].log_path

    proc = EnvoyProcess(bootstrap, sup.subdir(f"envoy-{name}"), name=name, binary=envoy_bin, launch=launch)
    deadline = time.monotonic() + timeout
    try:
        proc.start(timeout)
        ports = proc.listener_ports(max(deadline - time.monotonic(), 0.1))
    except EnvoyError as exc:
        raise DemoError(str(exc)) from exc
    return RunningEnvoy(proc, children[0], ports)


@dataclass(frozen=True, slots=True)
class Sidecar:
    envoy: RunningEnvoy
    port: int
    service: MeshSide


def mesh_socket(service: MeshSide, plan: DemoPlan) -> str:
    """The Workload API socket of a mesh service's pods (``mesh`` for the apps' target)."""
    return MESH_SOCKET if service is plan.mesh else f"{MESH_SOCKET}-{service.name}"


def start_sidecar(
    sup: Supervisor, plan: DemoPlan, service: MeshSide, wa: WorkloadApi, *, envoy_bin: Path, backend_port: int
) -> Sidecar:
    """``meshbridge-sds`` as the injected container runs it (``--rootca-all-bundles`` when the overlay
    says so) + Envoy with Istio's inbound checks: SAN trust domains from the overlay, the service's
    AuthorizationPolicies as RBAC (DENY before ALLOW; no ALLOW policy = no ALLOW filter)."""
    name = service.name
    sds_dir = sup.subdir(f"sds-{name}")
    sds_sock = sds_dir / "sds.sock"
    side = mesh_socket(service, plan)
    argv = ["sds", "serve", "--workload-api", wa.address(side), "--listen", str(sds_sock)]
    if plan.rootca_all_bundles:
        argv.append("--rootca-all-bundles")
    sup.start(f"sds-server-{name}", meshbridge_argv(*argv), gid=wa.run_as(side))
    # Envoy backs off after a failed SDS connect: start it once the socket exists.
    _wait_for_path(sup, sds_sock, f"sds-server-{name}")
    pod = service.pod or plan.pod
    bootstrap = sidecar_bootstrap(
        sds_socket=sds_sock,
        trust_domain=plan.trust_domain,
        trust_domains=list(plan.san_trust_domains or (plan.trust_domain,)),
        backend_port=backend_port,
        allowed_principals=None if service.principals is None else list(service.principals),
        denied_principals=list(service.denied) if service.denied else None,
        denied_sources=list(service.deny_rules) or None,
        node_id=f"sidecar~127.0.0.1~{pod.name}.{pod.namespace}~{pod.namespace}.svc.cluster.local",
        node_cluster=f"{pod.service_name}.{pod.namespace}",
    )
    envoy = start_envoy(sup, envoy_bin, f"sidecar-{name}", bootstrap, timeout=20.0)
    return Sidecar(envoy, envoy.listeners["inbound"], service)


def session_hash(session: AppPlan) -> str:
    """Stands for the hash CAS returns on ``scone session create`` (a digest of what was posted)."""
    return hashlib.sha256(yaml.safe_dump(dict(session.session), sort_keys=True).encode()).hexdigest()


def cas_secrets(plan: DemoPlan, app: AppPlan, svid: SvidMaterial) -> dict[str, Secret]:
    """SVIDStore plugin + CAS stand-in: post the filled templates, resolve the app session's imports."""
    digest = session_hash(app)
    posted = [
        post_svid_session(
            plan.svid_template,
            svid_chain_pem=svid.chain_pem,
            key_pem=svid.key_pem,
            session_name=app.session_name,
            session_hash=digest,
        ),
        post_bundle_session(plan.bundle_template, bundle_pem=svid.bundle_pem),
    ]
    if plan.federated_template is not None:
        posted.append(post_federated_bundles_session(plan.federated_template, bundles_pem=svid.federated_pem))
    return resolve_imports(app.session, {p.name: p for p in posted}, session_hash=digest)


TunnelKind = Literal["network-shield", "ghostunnel-files", "ghostunnel-workload-api", "envoy-fallback"]


@dataclass(frozen=True, slots=True)
class Tunnel:
    """One external app's local entry point: plain HTTP in on ``port``, mTLS out to the sidecar."""

    app: AppPlan
    label: str
    kind: TunnelKind
    port: int
    process: Child
    detail: str
    files_dir: Path | None = None
    """Where the CAS stand-in materialised the app's injected files (re-written on rotation)."""
    command: GhostunnelCommand | None = None
    """The localized Ghostunnel command (also for the Envoy fallback, which is built from it)."""
    envoy: RunningEnvoy | None = None
    """The Envoy playing this tunnel (network shield, fallback): its admin API explains failures."""

    @property
    def rotates_without_restart(self) -> bool:
        """Ghostunnel re-reads its files (``--timed-reload``) or streams from the Workload API; the network
        shield reads its session once, at start; the Envoy fallback reads its files once."""
        return self.kind in ("ghostunnel-files", "ghostunnel-workload-api")


def start_shield(
    sup: Supervisor, plan: DemoPlan, app: AppPlan, svid: SvidMaterial, *, envoy_bin: Path, sidecar_port: int
) -> Tunnel:
    secrets = cas_secrets(plan, app, svid)
    env = {k: inject(v, secrets, where=f"{app.session_path}: {k}") for k, v in app.environment.items()}
    clients = parse_shield_env(env)
    # cluster DNS + Service port → the sidecar's loopback port (what one machine changes)
    routes = {
        (c.host, c.port): ("127.0.0.1", sidecar_port)
        for c in clients
        if plan.pod.resolves(c.host) and c.port == plan.pod.service_port
    }
    envoy = start_envoy(
        sup, envoy_bin, f"shield-{app.name}", shield_bootstrap(clients, routes, node_id=app.name)
    )
    c = clients[0]
    detail = (
        f"Envoy as the network shield from {app.session_path}: TCP:{c.host}:{c.port}, identity "
        f"{svid.spiffe_id}, server auth {'CA bundle + DNS name ' + c.host if c.server_auth else 'DISABLED'}"
    )
    port = envoy.listeners[f"shield-{c.name}"]
    return Tunnel(
        app, f"{app.name} (network shield)", "network-shield", port, envoy.child, detail, envoy=envoy
    )


def _wait_port(sup: Supervisor, child: Child, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise DemoError(
                f"{child.name}: exited with code {child.popen.returncode}:\n{child.output_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise DemoError(
        f"{child.name}: not listening on 127.0.0.1:{port} after {timeout:.0f}s:\n{child.output_tail()}"
    )


def materialise_files(plan: DemoPlan, app: AppPlan, svid: SvidMaterial, directory: Path) -> dict[str, Path]:
    """CAS stand-in for ``images[].injection_files``: resolve injections, write 0600 files atomically."""
    secrets = cas_secrets(plan, app, svid)
    contents = {
        path: inject(content, secrets, where=f"{app.session_path}: injection_files {path}")
        for path, content in app.injection_files.items()
    }
    return write_injected_files(contents, directory)


def start_ghostunnel(
    sup: Supervisor,
    ghostunnel_bin: Path,
    app: AppPlan,
    cmd: GhostunnelCommand,
    *,
    label: str,
    sidecar_port: int,
    files: dict[str, Path],
    files_dir: Path | None,
    workload_api_addr: str | None,
    gid: int | None = None,
) -> Tunnel:
    name = "ghostunnel-" + label.replace(" ", "-").replace("(", "").replace(")", "")
    for attempt in range(3):
        # Ghostunnel cannot report a port-0 bind back: pick free ports, retry if one got taken meanwhile.
        local = LocalTunnel(
            sidecar_port=sidecar_port,
            listen_port=free_port(),
            status_port=free_port(),
            files=files,
            workload_api_addr=workload_api_addr,
        )
        localized = localize(cmd, local, what=app.session_path)
        child = sup.start(name, localized.argv(str(ghostunnel_bin)), gid=gid)
        try:
            _wait_port(sup, child, local.listen_port)
            break
        except DemoError:
            if attempt == 2 or "address already in use" not in child.output_tail():
                raise
            sup.stop(child)
    shown = " ".join(a for a in localized.argv("ghostunnel")[1:] if not a.startswith("--status"))
    kind: TunnelKind = "ghostunnel-files" if localized.has("cert") else "ghostunnel-workload-api"
    return Tunnel(app, label, kind, local.listen_port, child, f"ghostunnel {shown}", files_dir, localized)


def ghostunnel_variants(cmd: GhostunnelCommand, wrong_server_id: str) -> dict[str, GhostunnelCommand]:
    """The rendered command (files), its Workload-API variant, and one expecting another server ID."""
    if cmd.has("use-workload-api-addr") or cmd.has("use-workload-api"):
        variants = {"workload-api": cmd}
    else:
        variants = {"files": cmd, "workload-api": to_workload_api_variant(cmd)}
    return variants | {"wrong-server-id": with_verify_uri(cmd, wrong_server_id)}
