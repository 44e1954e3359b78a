"""``meshbridge demo --workload-api spire``: the same demo with a real SPIRE instead of the embedded
Workload API.

One spire-server + spire-agent per trust domain of the demo (``example.org``, ``apps.example.org``),
federated with ``spire-server bundle show -format spiffe`` | ``bundle set`` both ways, as two SPIRE
deployments exchanging bundles would be. Every side of the demo gets one registration entry, created
with ``spire-server entry create`` from the same :class:`~bridge.demo.identities.Identity` list the
embedded mode derives from the rendered ClusterSPIFFEIDs / ``register-entries.sh`` (SPIFFE ID, DNS
names, ``-federatesWith``).

How workloads are told apart: SPIRE's ``unix`` attestor sees only uid, gid, path (and supplementary
gids) of the calling process — no per-socket selector as the embedded Workload API has. The demo's
Python processes (``meshbridge sds serve``) run an interpreter that other uids may not be able to read
(a pyenv under /root is 0700), so each side runs as uid 0 in a group of its own: selectors
``unix:uid:0`` + ``unix:gid:<side's gid>``. The demo itself (gid 0) matches no entry; fetching a side's
SVID for the CAS stand-in and the probes runs ``spire-agent api fetch x509`` in that side's group.
Switching groups needs root: without it the mode refuses to start.

Entries exist before the agents start, so each agent's first sync (``join_token`` attestation) brings
every SVID; the demo still waits for each before Envoy starts (Envoy's first SDS fetch gives up after
15 s). Rotation: SVIDs live 1 h as in the embedded mode; the forced rotation is ``spire-server entry
update`` of every entry (its ``-x509SVIDTTL`` toggled by a second), which makes each agent re-sign the
SVIDs on its next sync (every 5 s) and push them on open streams — what SPIRE does at half the TTL,
without waiting for it.

All SPIRE processes are children of the demo's :class:`~bridge.demo.supervisor.Supervisor` (death
signal, stopped on exit or Ctrl-C); their data, sockets and logs live in its temp dir.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.binaries import find_peer, not_found
from bridge.demo.errors import DemoError
from bridge.demo.identities import Identity, SvidMaterial, by_trust_domain, svid_material
from bridge.demo.setup import WorkloadApi
from bridge.demo.supervisor import Child, Supervisor, in_group
from bridge.spire_local import AgentSettings, Entry, ServerSettings, SpireAgent, SpireError, SpireServer
from sds_server.errors import SvidError
from sds_server.x509svid import der_certificates

GID_BASE = 61000
"""Side ``i`` (in registration order) runs in group ``GID_BASE + i``: groups no account on a usual
machine uses (no /etc/group entry needed)."""
SVID_TTL_S = 3600
"""As the embedded mode (1 h); rotation is forced with ``entry update`` (see the module doc)."""
START_TIMEOUT_S = 30.0
SVID_TIMEOUT_S = 30.0
"""First SVIDs: the agent's first sync after attestation (a few seconds)."""
ROTATION_TIMEOUT_S = 25.0
"""Re-signed SVIDs after ``entry update``: the next agent sync (every 5 s), with room for a slow CPU."""
NEEDS_ROOT = (
    "--workload-api spire needs root: SPIRE's unix attestor tells the demo's workloads apart by the "
    "group they run in (unix:gid selectors), and only root can start processes in other groups; "
    "run as root, or use the default --workload-api embedded"
)


def _binary(name: str) -> Path:
    found = find_peer(name)
    if found is None:
        raise DemoError(not_found(name))
    return found


def preflight() -> None:
    """Refuse early (before anything starts) when the SPIRE mode cannot run here."""
    if os.geteuid() != 0:
        raise DemoError(NEEDS_ROOT)
    _binary("spire-server")
    _binary("spire-agent")


# ---- reading ``spire-agent api fetch x509 -output json`` ------------------------------------------------
def _der_certs(b64: str) -> list[x509.Certificate]:
    try:
        return der_certificates(base64.b64decode(b64), "spire-agent api fetch x509")
    except SvidError as exc:
        raise DemoError(str(exc)) from exc


def material_from_json(doc: Mapping[str, Any]) -> SvidMaterial:
    """A :class:`SvidMaterial` (the default, first SVID) from the agent's JSON X509-SVID response."""
    svids = doc.get("svids") or []
    if not svids:
        raise DemoError("spire-agent api fetch x509: no X509-SVID in the response")
    first = svids[0]
    return svid_material(
        str(first["spiffe_id"]),
        _der_certs(first["x509_svid"]),
        serialization.load_der_private_key(base64.b64decode(first["x509_svid_key"]), password=None),
        _der_certs(first["bundle"]),
        all_ids=tuple(str(s["spiffe_id"]) for s in svids),
        federated={
            str(td).removeprefix("spiffe://"): _der_certs(str(b64))
            for td, b64 in (doc.get("federated_bundles") or {}).items()
        },
    )


@dataclass(frozen=True, slots=True)
class _Side:
    gid: int
    agent: SpireAgent
    server: SpireServer
    entry: Entry


class SpireWorkloadApi(WorkloadApi):
    """The demo's sides on real SPIRE agents: one agent socket per trust domain, one group per side."""

    rotation = (
        "forced rotation of every SVID (spire-server entry update of every entry; the agents re-sign on "
        "their next sync)"
    )

    def __init__(self, sides: Mapping[str, _Side]) -> None:
        self._sides = dict(sides)
        self._generation = 0

    def address(self, name: str) -> str:
        return self._sides[name].agent.address

    def run_as(self, name: str) -> int:
        return self._sides[name].gid

    def side(self, name: str) -> str:
        return f"gid {self._sides[name].gid} ({name})"

    def _fetch_once(self, name: str) -> tuple[SvidMaterial | None, str]:
        side = self._sides[name]
        cmd = [str(side.agent.binary), "api", "fetch", "x509", "-socketPath", str(side.agent.socket_path)]
        cmd += ["-output", "json", "-timeout", "3s"]
        try:
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                preexec_fn=in_group(side.gid),  # setgid runs in the child, before exec
            )
        except subprocess.TimeoutExpired:
            return None, "spire-agent api fetch x509 timed out"
        if out.returncode != 0:
            return None, (out.stderr or out.stdout).strip()[-300:]
        try:
            return material_from_json(json.loads(out.stdout)), ""
        except (ValueError, KeyError) as exc:
            return None, f"unreadable response: {exc}"

    def fetch(
        self, name: str, *, not_serial: int | None = None, timeout: float | None = None
    ) -> SvidMaterial:
        if timeout is None:
            timeout = ROTATION_TIMEOUT_S if not_serial is not None else SVID_TIMEOUT_S
        deadline = time.monotonic() + timeout
        last = "not asked yet"
        while True:
            material, why = self._fetch_once(name)
            if material is not None:
                if not_serial is None or material.serial != not_serial:
                    return material
                why = f"still serial {not_serial:x}"
            last = why
            if time.monotonic() >= deadline:
                raise DemoError(
                    f"spire-agent {self._sides[name].agent.address} as {self.side(name)}: no "
                    f"{'new ' if not_serial is not None else ''}X509-SVID after {timeout:.0f}s: {last}"
                )
            time.sleep(0.25)

    def rotate(self) -> None:
        """``spire-server entry update`` of every entry, ``-x509SVIDTTL`` toggled by one second: a changed
        entry makes the agent re-sign its SVID on the next sync and push it to every open stream."""
        self._generation += 1
        ttl = SVID_TTL_S - (self._generation % 2)
        for side in self._sides.values():
            e = side.entry
            args = ["entry", "update", "-output", "json", "-entryID", e.id, "-spiffeID", e.spiffe_id]
            args += ["-parentID", e.parent_id, "-x509SVIDTTL", str(ttl)]
            for sel in e.selectors:
                args += ["-selector", sel]
            for td in e.federates_with:
                args += ["-federatesWith", td if td.startswith("spiffe://") else f"spiffe://{td}"]
            for dns in e.dns_names:
                args += ["-dns", dns]
            try:
                side.server.cli(*args)
            except SpireError as exc:
                raise DemoError(f"rotation: {exc}") from exc


# ---- starting SPIRE under the supervisor ---------------------------------------------------------------
def _wait(child: Child, what: str, ready: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            return False
        if ready():
            return True
        time.sleep(0.1)
    raise DemoError(f"{what}: not ready after {timeout:.0f}s:\n{child.output_tail()}")


def _start(sup: Supervisor, daemon: SpireServer | SpireAgent) -> None:
    """Run ``daemon`` under ``sup`` until it is healthy."""
    what = f"{daemon.name} {daemon.trust_domain}"
    for _attempt in range(3):
        daemon.configure()  # a free port each time: retried if another process takes it meanwhile
        child = sup.start(f"{daemon.name}-{daemon.trust_domain}", daemon.argv)
        if _wait(child, what, daemon.healthy, START_TIMEOUT_S):
            return
        if "address already in use" not in child.output_tail():
            break
        sup.stop(child)
    raise DemoError(f"{what}: exited at start:\n{child.output_tail()}")


def start_spire_workload_api(
    sup: Supervisor, identities: Sequence[Identity], *, say: Callable[[str], None] = lambda _: None
) -> SpireWorkloadApi:
    """Start SPIRE per trust domain of ``identities``, federate, register every side, wait for every SVID
    (:func:`preflight` has passed)."""
    by_td = by_trust_domain(identities)
    base = sup.subdir("spire")
    servers = {td: SpireServer(td, base / td / "server", ServerSettings(log_level="INFO")) for td in by_td}
    for td, server in servers.items():
        _start(sup, server)
        say(f"spire-server {td}: 127.0.0.1:{server.port}, admin socket {server.socket_path}")
    for td, server in servers.items():
        for other_td, other in servers.items():
            if other_td != td:
                server.bundle_set(other.trust_domain_id, other.bundle_show("spiffe"), "spiffe")
    if len(servers) > 1:
        say(
            "federated: spire-server bundle show -format spiffe | bundle set, both ways ("
            + ", ".join(sorted(servers))
            + ")"
        )
    gids = {ident.socket_name: GID_BASE + i for i, ident in enumerate(identities)}
    entries: dict[str, Entry] = {}
    for ident in identities:
        selectors = ["unix:uid:0", f"unix:gid:{gids[ident.socket_name]}"]
        try:
            entries[ident.socket_name] = servers[ident.trust_domain].entry_create(
                ident.spiffe_id,
                selectors,
                x509_svid_ttl=SVID_TTL_S,
                federates_with=[f"spiffe://{t}" for t in ident.federates_with],
                dns_names=ident.dns_names,
            )
        except SpireError as exc:
            raise DemoError(f"registering {ident.spiffe_id}: {exc}") from exc
        say(
            f"entry create -spiffeID {ident.spiffe_id} -selector {' -selector '.join(selectors)}"
            + "".join(f" -dns {d}" for d in ident.dns_names)
            + "".join(f" -federatesWith spiffe://{t}" for t in ident.federates_with)
            + f" -x509SVIDTTL {SVID_TTL_S}"
        )
    agents = {
        td: SpireAgent(s, base / td / "agent", AgentSettings(log_level="INFO")) for td, s in servers.items()
    }
    for agent in agents.values():
        _start(sup, agent)
    sides = {
        ident.socket_name: _Side(
            gids[ident.socket_name],
            agents[ident.trust_domain],
            servers[ident.trust_domain],
            entries[ident.socket_name],
        )
        for ident in identities
    }
    wa = SpireWorkloadApi(sides)
    started = time.monotonic()
    for ident in identities:  # before any Envoy: its first SDS fetch gives up after 15 s
        wa.fetch(ident.socket_name, timeout=SVID_TIMEOUT_S)
    say(
        f"spire-agents attested (join_token) and synced: every side's SVID issued "
        f"({time.monotonic() - started:.1f}s after the agents were up)"
    )
    return wa
