"""Issue 12 §3: ``meshbridge sds serve`` fed by a real SPIRE agent feeds a real Envoy (Istio-shaped STRICT
sidecar); a real Ghostunnel client with an SVID from the same SPIRE, running as the uid its entry
selects, gets through. Rotation, agent outage and a deleted entry, all through real processes."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge.envoy import EnvoyProcess, sidecar_bootstrap
from bridge.spire_local import LocalSpire, ServerSettings, local_spire
from tests.spire.support import (
    CLIENT_ID,
    MESH_ID,
    NOBODY,
    STRANGER,
    WHOLE_MESH,
    SdsProcess,
    create_mesh_entries,
    ghostunnel_client,
    http_get_unix,
    sds_serve,
    wait_for,
)
from tests.support.envoy import echo_backend

pytestmark = WHOLE_MESH


@dataclass
class Mesh:
    spire: LocalSpire
    sds: SdsProcess
    envoy: EnvoyProcess
    port: int
    directory: Path

    def serials(self) -> set[str]:
        return self.envoy.cert_serials()

    def client(
        self, ghostunnel: Path, *, uid: int = NOBODY, **options: Any
    ) -> AbstractContextManager[tuple[subprocess.Popen[bytes], Path]]:
        """A Ghostunnel client as ``uid`` with its SVID from this mesh's agent, to the sidecar's listener."""
        return ghostunnel_client(
            ghostunnel,
            uid=uid,
            workload_api=self.spire.agent.address,
            target_port=self.port,
            verify_uri=MESH_ID,
            directory=self.directory,
            **options,
        )


@contextmanager
def mesh_with_spire(short_dir: Path, *, mesh_ttl: int | None = None) -> Iterator[Mesh]:
    """SPIRE (server + agent) → ``meshbridge sds serve`` → Envoy sidecar → echo backend."""
    short_dir.chmod(0o755)
    with local_spire("example.org", ServerSettings(ca_ttl="2h"), directory=short_dir / "spire") as spire:
        create_mesh_entries(spire.server, mesh_ttl=mesh_ttl)
        spire.agent.wait_for_ids([MESH_ID])  # the entry reached the agent (its sync runs every 5 s)
        with (
            sds_serve(spire.agent.address, short_dir / "sds.sock", short_dir / "sds.log") as sds,
            echo_backend() as backend,
        ):
            bootstrap = sidecar_bootstrap(
                sds_socket=short_dir / "sds.sock", trust_domain="example.org", backend_port=backend.port
            )
            with EnvoyProcess(bootstrap, short_dir / "envoy") as envoy:
                port = envoy.listener_port("inbound", timeout=60)
                yield Mesh(spire, sds, envoy, port, short_dir)


def _chain_certs(envoy: EnvoyProcess) -> list[dict[str, Any]]:
    """The certificates Envoy presents (admin ``/certs``)."""
    return [cert for entry in envoy.certs().get("certificates", []) for cert in entry.get("cert_chain", [])]


def _envoy_cert_expiries(envoy: EnvoyProcess) -> list[datetime]:
    return [datetime.fromisoformat(c["expiration_time"].replace("Z", "+00:00")) for c in _chain_certs(envoy)]


def _default_san(envoy: EnvoyProcess) -> list[str]:
    return [s.get("uri", "") for c in _chain_certs(envoy) for s in c.get("subject_alt_names", [])]


def _handshakes(envoy: EnvoyProcess) -> int:
    return sum(v for k, v in envoy.stats("ssl").items() if k.endswith("ssl.handshake"))


def test_spire_svids_reach_envoy_and_the_registered_client_gets_200(
    short_dir: Path, ghostunnel_bin: Path
) -> None:
    with mesh_with_spire(short_dir) as mesh:
        secrets = mesh.envoy.active_secrets()
        assert secrets.keys() >= {"default", "ROOTCA"}
        assert MESH_ID in _default_san(mesh.envoy)
        with mesh.client(ghostunnel_bin) as (_, listen):
            status, body = http_get_unix(listen)
        assert status == 200, body
        xfcc = body["headers"]["x-forwarded-client-cert"]
        assert f"URI={CLIENT_ID}" in xfcc
        assert f"By={MESH_ID}" in xfcc

        # A uid no entry selects gets no SVID from the agent: its Ghostunnel never listens, and Envoy
        # sees no connection from it.
        before = _handshakes(mesh.envoy)
        with mesh.client(ghostunnel_bin, uid=STRANGER, name="stranger", wait=False, api_timeout="3s") as (
            proc,
            listen,
        ):
            code = proc.wait(60)
        assert code != 0
        assert not listen.exists()
        log = (short_dir / "gt-stranger.log").read_text(errors="replace")
        assert "no identity issued" in log or "PermissionDenied" in log, log[-2000:]
        assert _handshakes(mesh.envoy) == before


def test_short_ttl_rotation_reaches_envoy_without_restart_while_requests_succeed(
    short_dir: Path, ghostunnel_bin: Path
) -> None:
    with mesh_with_spire(short_dir, mesh_ttl=20) as mesh:
        pid = mesh.envoy.pid
        first = mesh.serials()
        failures = 0
        requests = 0
        with mesh.client(ghostunnel_bin) as (_, listen):
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and requests < 2000:
                status, _ = http_get_unix(listen)
                requests += 1
                failures += status != 200
                if mesh.serials() - first:
                    break
                time.sleep(0.1)
            rotated = mesh.serials()
            assert rotated - first, "no new serial in Envoy's /certs within 45 s (entry x509SVIDTTL 20 s)"
            for _ in range(5):
                status, _ = http_get_unix(listen)
                requests += 1
                failures += status != 200
        assert failures == 0, f"{failures} of {requests} requests failed"
        assert mesh.envoy.pid == pid
        assert mesh.sds.events("svid.rotated")


def test_agent_killed_and_restarted_under_load_no_failed_request_no_expired_cert(
    short_dir: Path, ghostunnel_bin: Path
) -> None:
    with mesh_with_spire(short_dir, mesh_ttl=30) as mesh:
        with mesh.client(ghostunnel_bin) as (_, listen):
            stop = threading.Event()
            results: list[int] = []
            expired_seen: list[str] = []

            def load() -> None:
                deadline = time.monotonic() + 60
                while not stop.is_set() and time.monotonic() < deadline and len(results) < 3000:
                    try:
                        status, _ = http_get_unix(listen, timeout=5)
                    except OSError:
                        status = 0
                    results.append(status)
                    now = datetime.now(UTC)
                    expired_seen.extend(str(e) for e in _envoy_cert_expiries(mesh.envoy) if e <= now)
                    time.sleep(0.02)

            worker = threading.Thread(target=load, name="load")
            worker.start()
            try:
                wait_for("some requests", lambda: len(results) >= 20, 20)
                connected = len(mesh.sds.events("sds.source.connected"))
                mesh.spire.agent.kill()
                wait_for("SDS saw the agent go", lambda: mesh.sds.events("sds.source.stream.lost"), 20)
                time.sleep(1.0)
                mesh.spire.agent.start()
                wait_for(
                    "SDS reconnected",
                    lambda: len(mesh.sds.events("sds.source.connected")) > connected,
                    60,
                )
                n = len(results)
                wait_for("requests after the restart", lambda: len(results) >= n + 20, 20)
            finally:
                stop.set()
                worker.join(70)
        failed = [s for s in results if s != 200]
        assert not failed, f"{len(failed)} of {len(results)} requests failed"
        assert not expired_seen, f"Envoy held an expired certificate: {expired_seen[:3]}"
        assert len(results) >= 40


def test_entry_deleted_sds_says_permission_denied_keeps_svid_until_expiry_then_withholds(
    short_dir: Path, ghostunnel_bin: Path
) -> None:
    with mesh_with_spire(short_dir, mesh_ttl=20) as mesh:
        (entry,) = mesh.spire.server.entry_show(spiffe_id=MESH_ID)
        mesh.spire.server.entry_delete(entry.id)
        denied = wait_for(
            "sds logs PermissionDenied", lambda: mesh.sds.events("sds.source.permission_denied"), 30
        )
        first = denied[0]
        assert "registration entry" in first["hint"]
        # SPIRE's own words, who we are, what to run, that we had an identity, what is served until when
        assert first["detail"] == "no identity issued"
        assert (first["uid"], first["gid"]) == (os.getuid(), os.getgid())
        assert f"spire-server entry show -selector unix:uid:{os.getuid()}" in first["hint"]
        assert first["had_identity"] is True
        assert "deleted" in first["hint"]
        served = re.fullmatch(
            rf"{re.escape(MESH_ID)} serial ([0-9a-f]+) until (\S+Z), then withholding it", first["serving"]
        )
        assert served, first["serving"]
        # still serving the last SVID: the registered client still gets in
        with mesh.client(ghostunnel_bin) as (_, listen):
            withheld = mesh.sds.events("svid.expired.withheld")
            if not withheld:  # the SVID may have expired already on a slow machine
                status, _ = http_get_unix(listen)
                assert status == 200
        withheld = wait_for("SVID withheld at expiry", lambda: mesh.sds.events("svid.expired.withheld"), 40)
        assert withheld[0]["spiffe_id"] == MESH_ID
        not_after = datetime.fromisoformat(withheld[0]["not_after"])
        assert not_after <= datetime.now(UTC)
        assert mesh.sds.metrics()["sds_svid_expired_withheld_total"] >= 1
        assert withheld[0]["serial"] == served.group(1)
        assert datetime.fromisoformat(served.group(2)) == not_after

        # Logged again once, when what is served changed (the SVID withheld); not once per retry.
        def denied_withheld() -> list[dict[str, Any]]:
            events = mesh.sds.events("sds.source.permission_denied")
            return [e for e in events if "withheld" in e["serving"]]

        later = wait_for("PermissionDenied logged again once the SVID is withheld", denied_withheld, 40)
        assert later[0]["serving"] == (
            f"no SVID: {MESH_ID} serial {served.group(1)} expired at {served.group(2)} and is withheld"
        )
        assert later[0]["denials"] >= 1
        events = mesh.sds.events("sds.source.permission_denied")
        assert [e["serving"] for e in events].count(first["serving"]) == 1  # once while serving
        assert mesh.sds.metrics()["workload_api_permission_denied_total"] > len(events)  # retried meanwhile
        # The withheld SVID was never renewed: rotation stays overdue, nothing says it cleared.
        assert [e["serial"] for e in mesh.sds.events("svid.rotation_overdue")] == [served.group(1)]
        assert mesh.sds.events("svid.rotation_overdue.cleared") == []
        assert mesh.sds.metrics()["svid_rotation_overdue"] == 1
        # A sidecar starting now gets no 'default' (it stays warming) while ROOTCA still arrives.
        second = EnvoyProcess(mesh.envoy.bootstrap, short_dir / "envoy2", name="late")
        with second:
            second.wait_secret("ROOTCA", timeout=20)
            time.sleep(2)
            assert "default" not in second.active_secrets()
            assert not second.live()
