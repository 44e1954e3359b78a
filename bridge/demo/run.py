"""``meshbridge demo``: the whole mission on one machine, from the same spec an operator applies.

Steps (issue 8 §1, issue 14 §1): render ``examples/httpbin/bridge-federated.yaml`` → embedded Workload
API, one server per trust domain (mesh ``example.org``, apps ``apps.example.org``, federated with each
other through pre-generated upstream CAs), one socket per side → real httpbin → per registered mesh
service (httpbin, inventory) our SDS server + real Envoy as its STRICT sidecar with Istio's SAN
trust-domain check and its AuthorizationPolicies → external apps (real Ghostunnel with the rendered
command; Envoy as the network shield from the rendered session; the CAS stand-in posts the SVID, bundle
and federated-bundles sessions) → checks (apps 200 at httpbin, refused at inventory's handshake, an
in-mesh caller with no ``meshCallers`` entry 200 at httpbin) → rotation → the artifacts written to
``./demo-out/``. ``--spec examples/httpbin/bridge.yaml`` runs the one-trust-domain variant.
Exit 0 only when every check passed. Everything runs under one
:class:`Supervisor`: on exit, error, Ctrl-C or SIGTERM every process is stopped and the temp dir (with
every socket) removed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Literal

from bridge.binaries import find_envoy, find_ghostunnel, not_found
from bridge.demo.checks import (
    check_intruders,
    check_mesh_caller,
    check_not_targeted,
    check_rotation,
    check_tunnels,
)
from bridge.demo.errors import DemoError
from bridge.demo.identities import Identity
from bridge.demo.plan import DemoPlan, build_plan, describe, load_pod
from bridge.demo.report import Reporter
from bridge.demo.setup import (
    INTRUDER_SOCKET,
    MESH_CALLER_SA,
    MESH_CALLER_SOCKET,
    MESH_SOCKET,
    Tunnel,
    WorkloadApi,
    ghostunnel_variants,
    materialise_files,
    mesh_socket,
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
DEFAULT_SPEC = "bridge-federated.yaml"
"""The least-privilege spec: apps in their own trust domain, federated only with httpbin; inventory
refuses them. ``--spec examples/httpbin/bridge.yaml`` runs the one-trust-domain variant."""
MANIFESTS = (EXAMPLE_DIR / "httpbin.yaml", EXAMPLE_DIR / "inventory.yaml")
DEMO_RELOAD = "2s"
"""``--timed-reload`` used when the rendered interval would not fit the demo's time budget."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    spec: Path
    manifests: Path | tuple[Path, ...]
    """The apps' target's manifests first (httpbin), then other mesh services' (a sidecar each when the
    rendering registers them)."""
    out_dir: Path
    keep_running: bool = False
    ghostunnel: bool = True
    """``False`` forces the Envoy client-tunnel fallback (as when no Ghostunnel binary exists)."""
    edit_rendering: Callable[[Rendering], Rendering] | None = None
    """Fault injection for tests: change an artifact after rendering to prove a wrong one fails the demo."""
    workload_api: Literal["embedded", "spire"] = "embedded"
    """``spire``: real spire-server + spire-agent per trust domain (:mod:`bridge.demo.spire_mode`)."""


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
    manifests = opts.manifests if isinstance(opts.manifests, tuple) else (opts.manifests,)
    plan = build_plan(rendering, load_pod(manifests[0]), [load_pod(m) for m in manifests[1:]])
    write_tree(opts.out_dir, rendering)
    rep.detail(f"{len(rendering)} artifacts → {opts.out_dir}/ (listed at the end)")
    for svc in (plan.mesh, *plan.others):
        admitted = "every caller (no ALLOW policy)" if svc.principals is None else ", ".join(svc.principals)
        rep.detail(
            f"mesh: {svc.spiffe_id} DNS {', '.join(svc.dns_names) or '-'} "
            f"(from {svc.cluster_spiffe_id_path}), STRICT, admitted: {admitted}"
            + (f"; denied: {'; '.join(deny)}" if (deny := [*svc.denied, *map(str, svc.deny_rules)]) else "")
            + (f"; federates with {', '.join(svc.federates_with)}" if svc.federates_with else "")
        )
    if plan.apps_trust_domain != plan.trust_domain:
        rep.detail(
            f"trust domains: mesh {plan.trust_domain}, apps {plan.apps_trust_domain}; Istio's SAN check "
            f"admits {', '.join(plan.san_trust_domains)} (overlay meshConfig), meshbridge-sds "
            + ("--rootca-all-bundles" if plan.rootca_all_bundles else "ROOTCA = own bundle only")
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
    head, _, tail = plan.mesh.spiffe_id.rpartition("/")
    wrong_id = f"{head}/not-{tail}"
    for app in plan.apps:
        svid = wa.fetch(app.socket_name)
        if app.mode == "network-shield":
            rep.step(f"{app.name}: network shield stand-in (real Envoy) from {app.session_path}")
            t = start_shield(sup, plan, app, svid, envoy_bin=envoy_bin, sidecar_port=sidecar_port)
            rep.detail(t.detail)
            good.append(t)
            continue
        rep.step(f"{app.name}: confidential Ghostunnel with the rendered command from {app.session_path}")
        cmd = GhostunnelCommand.parse(app.command, what=f"{app.session_path}: services[0].command")
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
        if ghostunnel_bin is None:
            why = "--no-ghostunnel" if not opts.ghostunnel else not_found("ghostunnel")
            rep.detail(
                f"{why}: FALLBACK to an Envoy client tunnel built from the same command "
                "(the Workload-API variant needs Ghostunnel and is skipped)"
            )
        else:
            rep.detail(f"Ghostunnel binary: {ghostunnel_bin}")
        for kind, variant in ghostunnel_variants(cmd, wrong_id).items():
            kind_files = files_dir if kind == "files" else None
            if ghostunnel_bin is not None:
                t = start_ghostunnel(
                    sup,
                    ghostunnel_bin,
                    app,
                    variant,
                    label=f"{app.name} (ghostunnel, {kind})",
                    sidecar_port=sidecar_port,
                    files=files,
                    files_dir=kind_files,
                    workload_api_addr=wa.address(app.socket_name),
                    gid=wa.run_as(app.socket_name),
                )
            elif kind == "workload-api":
                continue
            else:
                t = start_envoy_tunnel(
                    sup,
                    envoy_bin,
                    app,
                    variant,
                    sidecar_port=sidecar_port,
                    files=files,
                    files_dir=kind_files,
                    label=f"{app.name} (Envoy tunnel fallback, {kind})",
                )
            rep.detail(f"{kind}: {t.detail}")
            (bad if kind == "wrong-server-id" else good).append(t)
    return good, bad, reload_s


def _identities(plan: DemoPlan, intruder_id: str) -> list[Identity]:
    """Every side's registration: the mesh services' (ClusterSPIFFEIDs, their federatesWith), an in-mesh
    caller, the apps' (their SPIRE entries' federatesWith) and an intruder of the apps' trust domain."""
    td, apps_td = plan.trust_domain, plan.apps_trust_domain
    apps_fed = tuple(t for t in plan.app_federates_with if t != apps_td)
    mesh = [
        Identity(
            mesh_socket(s, plan), s.spiffe_id, s.dns_names, tuple(t for t in s.federates_with if t != td)
        )
        for s in (plan.mesh, *plan.others)
    ]
    caller = f"spiffe://{td}/ns/{plan.pod.namespace}/sa/{MESH_CALLER_SA}"
    return [
        *mesh,
        Identity(MESH_CALLER_SOCKET, caller),
        *(Identity(app.socket_name, app.spiffe_id, federates_with=apps_fed) for app in plan.apps),
        Identity(INTRUDER_SOCKET, intruder_id, federates_with=apps_fed),
    ]


def _check_scoping(rep: Reporter, wa: WorkloadApi, identities: list[Identity]) -> None:
    """Each socket hands out exactly its side's identity, with the DNS names its registration declares
    and the bundles of exactly the trust domains it federates with."""
    seen = []
    ok = True
    for ident in identities:
        got = wa.fetch(ident.socket_name)
        ok = (
            ok
            and got.all_ids == (ident.spiffe_id,)
            and set(got.dns_names) == set(ident.dns_names)
            and set(got.federated) == set(ident.federates_with)
        )
        seen.append(
            f"{wa.side(ident.socket_name)}→{','.join(got.all_ids)}"
            + (f" +DNS {','.join(got.dns_names)}" if ident.dns_names else "")
            + (f" +bundle {','.join(sorted(got.federated))}" if got.federated else "")
        )
    rep.check("Workload API: each side gets only its own identity", ok, "; ".join(seen))


def _start_identities(
    rep: Reporter, sup: Supervisor, opts: DemoOptions, plan: DemoPlan, identities: list[Identity]
) -> WorkloadApi:
    tds = plan.trust_domains
    several = len(tds) > 1
    if opts.workload_api == "spire":
        from bridge.demo.spire_mode import start_spire_workload_api  # noqa: PLC0415 - SPIRE mode only

        rep.step(
            "real SPIRE: a spire-server + spire-agent"
            + (f" per trust domain ({', '.join(tds)}), federated" if several else "")
            + "; each side runs in its own group (unix:uid:0 + unix:gid selectors) and gets only its "
            "own identity"
        )
        return start_spire_workload_api(sup, identities, say=rep.detail)
    rep.step(
        "embedded Workload API: one socket per side, each side gets only its own identity"
        + (f"; one server per trust domain ({', '.join(tds)}), federated" if several else "")
    )
    return start_workload_api(sup, identities)


def _keep_running(rep: Reporter, plan: DemoPlan, sidecar_port: int, tunnels: list[Tunnel], out: Path) -> None:
    rep.say("")
    rep.say("Still running (Ctrl-C to stop everything). Try:")
    for t in tunnels:
        rep.say(f"  curl -s http://127.0.0.1:{t.port}/headers      # {t.label}")
    host = plan.mesh.sni
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
        raise DemoError(not_found("envoy"))
    if opts.workload_api == "spire":
        from bridge.demo.spire_mode import preflight  # noqa: PLC0415 - SPIRE mode only

        preflight()
    with _sigterm_unwinds(), Supervisor() as sup:
        plan, artifacts = _render(rep, opts)
        intruder_id = f"spiffe://{plan.apps_trust_domain}/external/not-admitted"
        if plan.mesh.principals is not None and intruder_id in plan.mesh.principals:
            raise DemoError(f"{intruder_id}: the demo's intruder ID is admitted by the rendered policy")
        identities = _identities(plan, intruder_id)
        wa = _start_identities(rep, sup, opts, plan, identities)
        rep.detail(f"sockets and every other file of this run: {sup.dir} (removed on exit)")
        mesh_svid = wa.fetch(MESH_SOCKET)
        rep.detail(
            f"{wa.side(MESH_SOCKET)} → {mesh_svid.spiffe_id} DNS {', '.join(mesh_svid.dns_names) or '-'} "
            f"serial {mesh_svid.serial:x}"
        )
        _check_scoping(rep, wa, identities)
        rep.step("httpbin (PyPI package) served by waitress on loopback")
        httpbin_port = start_httpbin(sup)
        rep.detail(f"http://127.0.0.1:{httpbin_port} (reachable only through the sidecars in the picture)")
        sidecars = []
        for svc in (plan.mesh, *plan.others):
            rep.step(f"mesh side: meshbridge SDS server + real Envoy as {svc.name}'s STRICT sidecar")
            sc = start_sidecar(sup, plan, svc, wa, envoy_bin=envoy_bin, backend_port=httpbin_port)
            sidecars.append(sc)
            rbac = ", ".join(svc.policy_paths) or "no AuthorizationPolicy selects it"
            rep.detail(
                f"inbound https://127.0.0.1:{sc.port}: client cert required, default/ROOTCA over SDS"
                + (" (--rootca-all-bundles)" if plan.rootca_all_bundles else "")
                + f", SAN trust domains {', '.join(plan.san_trust_domains)}, RBAC: {rbac}, XFCC set, "
                "no ALPN required"
                + (
                    ""
                    if svc is plan.mesh
                    else "; backend: the same httpbin process (the sidecar is the point)"
                )
            )
            if svc.namespace_sources:
                rep.detail(
                    f"in-mesh rule (namespaces {', '.join(svc.namespace_sources)}): no such caller "
                    "here, so only the external principals are enforced"
                )
        sidecar = sidecars[0]
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
        caller = wa.fetch(MESH_CALLER_SOCKET)
        if plan.mesh.principals is None:
            check_mesh_caller(rep, sup, sidecar=sidecar, caller=caller)
        external = [*(wa.fetch(app.socket_name) for app in plan.apps), intruder]
        for other in sidecars[1:]:
            check_not_targeted(rep, sup, plan=plan, sidecar=other, callers=external, control=caller)
        rep.step(wa.rotation)
        check_rotation(
            rep, sup, plan=plan, wa=wa, sidecar=sidecar, tunnels=good, reload_s=reload_s, before=before
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


def main_from_args(args: argparse.Namespace) -> int:
    """``meshbridge demo``: the options from its command line; Ctrl-C and SIGTERM exit 130 and 143."""
    opts = DemoOptions(
        spec=Path(args.spec) if args.spec else EXAMPLE_DIR / DEFAULT_SPEC,
        manifests=MANIFESTS,
        out_dir=Path(args.out),
        keep_running=args.keep_running,
        ghostunnel=not args.no_ghostunnel,
        workload_api=args.workload_api,
    )
    try:
        return run(opts)
    except _Terminated:
        print("demo: terminated; every process stopped", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("demo: interrupted; every process stopped", file=sys.stderr)
        return 130
