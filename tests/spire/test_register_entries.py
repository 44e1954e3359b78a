"""The rendered ``spire/register-entries.sh`` against a real spire-server (v1.13.3 from ``make peers``).

What an operator runs after posting the CAS sessions: the script must create one entry per external app
with the spec's parent ID, selectors (CAS session name + hash), TTL and ``storeSVID``; running it again
with the same hashes must succeed and change nothing; a new hash for one session must replace that
app's entry (two entries would post alternately to the same CAS session).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bridge.spire_local import Entry, SpireServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("spire_server_bin")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "httpbin" / "bridge.yaml"
PARENT = "spiffe://example.org/spire/agent/x509pop/sgx-node-1"
PLUGIN = "sconecas_sessionmanager"


def _hash(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture
def server(short_dir: Path) -> Iterator[SpireServer]:
    with SpireServer("example.org", short_dir / "server") as srv:
        yield srv


def _render(spec: dict[str, object], tmp_path: Path) -> Path:
    spec_file = tmp_path / "bridge.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "bridge.cli", "render", "-f", str(spec_file), "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    script = out / "spire" / "register-entries.sh"
    assert script.is_file()
    return script


def _runner(server: SpireServer, tmp_path: Path) -> dict[str, str]:
    """``SPIRE_SERVER`` for the script: the real binary, on this server's socket."""
    wrapper = tmp_path / "spire-server"
    wrapper.write_text(
        "#!/bin/sh\n"
        'sub="$1"; verb="$2"; shift 2\n'
        f'exec "{server.binary}" "$sub" "$verb" -socketPath "{server.socket_path}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return {**os.environ, "SPIRE_SERVER": str(wrapper)}


def _run(script: Path, env: dict[str, str], *sessions: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *sessions], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _by_id(server: SpireServer) -> dict[str, Entry]:
    return {e.spiffe_id: e for e in server.entry_show()}


def _expect(entry: Entry, session: str, session_hash: str) -> None:
    assert entry.parent_id == PARENT
    assert entry.selectors == tuple(
        sorted((f"{PLUGIN}:session_hash:{session_hash}", f"{PLUGIN}:session_name:{session}"))
    )
    assert entry.x509_svid_ttl == 3600
    assert entry.store_svid is True


def test_httpbin_example_entries_created_rerun_unchanged_new_hash_replaces(
    server: SpireServer, tmp_path: Path
) -> None:
    script = _render(yaml.safe_load(EXAMPLE.read_text()), tmp_path)
    env = _runner(server, tmp_path)
    shield, tunnel = "meshbridge/shielded-client", "meshbridge/tunnel-client"
    shield_id, tunnel_id = (
        "spiffe://example.org/external/shielded-client",
        "spiffe://example.org/external/tunnel-client",
    )

    first = _run(script, env, f"{shield}={_hash(1)}", f"{tunnel}={_hash(2)}")
    assert first.returncode == 0, first.stderr
    entries = _by_id(server)
    assert sorted(entries) == [shield_id, tunnel_id]
    _expect(entries[shield_id], shield, _hash(1))
    _expect(entries[tunnel_id], tunnel, _hash(2))

    again = _run(script, env, f"{shield}={_hash(1)}", f"{tunnel}={_hash(2)}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("unchanged:") == 2, again.stdout
    assert _by_id(server) == entries  # same IDs, same fields

    rotated = _run(script, env, f"{shield}={_hash(3)}", f"{tunnel}={_hash(2)}")
    assert rotated.returncode == 0, rotated.stderr
    after = server.entry_show()
    assert len(after) == 2, after  # replaced, not added: one entry posts to each CAS session
    now = _by_id(server)
    _expect(now[shield_id], shield, _hash(3))
    assert now[shield_id].id == entries[shield_id].id  # updated in place
    assert now[tunnel_id] == entries[tunnel_id]


def test_missing_hash_creates_nothing_and_exits_2(server: SpireServer, tmp_path: Path) -> None:
    script = _render(yaml.safe_load(EXAMPLE.read_text()), tmp_path)
    out = _run(script, _runner(server, tmp_path), f"meshbridge/shielded-client={_hash(1)}")
    assert out.returncode == 2
    assert "no session hash for CAS session 'meshbridge/tunnel-client'" in out.stderr
    assert server.entry_show() == []


def test_several_apps_one_entry_each_and_a_duplicate_is_cleaned_up(
    server: SpireServer, tmp_path: Path
) -> None:
    spec = yaml.safe_load(EXAMPLE.read_text())
    template = next(a for a in spec["externalApps"] if a["name"] == "shielded-client")
    for n in range(3):
        extra = copy.deepcopy(template)
        extra["name"] = f"batch-{n}"
        extra["scone"]["sessionName"] = f"batch-{n}"
        spec["externalApps"].append(extra)
    script = _render(spec, tmp_path)
    env = _runner(server, tmp_path)
    sessions = {
        f"meshbridge/{a['scone']['sessionName']}": _hash(10 + i) for i, a in enumerate(spec["externalApps"])
    }
    args = [f"{s}={h}" for s, h in sessions.items()]

    assert (r := _run(script, env, *args)).returncode == 0, r.stderr
    entries = server.entry_show()
    assert len(entries) == len(sessions) == 5
    for e in entries:
        session = next(s.split(":", 2)[2] for s in e.selectors if ":session_name:" in s)
        _expect(e, session, sessions[session])

    # Someone registered batch-0 a second time by hand (an older hash): the script keeps one entry.
    batch0 = next(e for e in entries if e.spiffe_id.endswith("/batch-0"))
    server.entry_create(
        batch0.spiffe_id,
        [f"{PLUGIN}:session_name:meshbridge/batch-0", f"{PLUGIN}:session_hash:{_hash(99)}"],
        parent_id=PARENT,
        x509_svid_ttl=3600,
        store_svid=True,
    )
    assert len(server.entry_show()) == 6
    assert (r := _run(script, env, *args)).returncode == 0, r.stderr
    assert "deleted duplicate" in r.stdout
    after = server.entry_show()
    assert len(after) == 5
    assert {e.id for e in after} == {e.id for e in entries}
