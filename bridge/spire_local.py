"""A real SPIRE on one machine: spire-server + spire-agent on Unix sockets in a temp dir.

For tests, the demo and benches. The server keeps its data in SQLite, attests agents with
``join_token``, and may run with short CA / SVID TTLs; the agent attests workloads with the ``unix``
attestor and serves its SDS on the Workload API socket with SPIRE's default names (``default``,
``ROOTCA``, ``ALL``). Registrations and bundles go through the real ``spire-server`` CLI (``entry
create|show|delete``, ``bundle show|set|delete``, ``token generate``) on the server's admin socket, as an
operator would type them.

Usage::

    with local_spire("example.org", ServerSettings(ca_ttl="1h")) as spire:
        spire.server.entry_create("spiffe://example.org/ns/default/sa/httpbin", ["unix:uid:0"],
                                  x509_svid_ttl=60)
        spire.agent.address             # "unix:///tmp/spire-xxxx/agent/api.sock"

Two :func:`local_spire` blocks give two independent trust domains (federation): exchange bundles with
``b.server.bundle_set(a.trust_domain_id, a.server.bundle_show("spiffe"), "spiffe")``.

Addresses: every socket is a Unix socket under a short directory in /tmp (Unix socket paths are limited to
107 bytes). The only TCP port is the server's agent API on 127.0.0.1: SPIRE refuses ``bind_port = 0``
("bind_address and bind_port must be configured", ``cmd/spire-server/cli/run/run.go``), so a free port
is picked just before start and the start is retried if another process takes it first.

Agent restarts keep the agent's identity: its key is on disk (``KeyManager "disk"``) and SPIRE reuses a
stored, valid agent SVID instead of attesting again (``pkg/agent/attestor/node/node.go``, ``Attest``:
"SVID loaded") — a join token is single-use, so a restarted agent could not attest a second time.
Workload entries are parented on a stable alias (``spiffe://<td>/agent/local``) that ``token generate
-spiffeID`` maps the agent's node ID to.

The agent serves SPIRE's own SDS v3 on the same Workload API socket (``spire.agent.address``), so a bench
can put SPIRE's SDS and ``meshbridge sds serve`` side by side against one agent; SDS callers are attested
like Workload API callers (an entry must select the bench's uid).

Configs are rendered to files as HCL text (:func:`render_server_hcl`, :func:`render_agent_hcl`, pure);
processes log to ``server.log`` / ``agent.log`` in their directories.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bridge.binaries import find_peer, not_found
from bridge.errors import BridgeError
from bridge.processes import free_port, stop_process

__all__ = [
    "AgentSettings",
    "Entry",
    "LocalSpire",
    "ServerSettings",
    "SpireAgent",
    "SpireError",
    "SpireServer",
    "agent_alias",
    "connectable",
    "local_spire",
    "log_since",
    "render_agent_hcl",
    "render_server_hcl",
    "stop_process",
]

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 30.0


class SpireError(BridgeError):
    """A SPIRE process would not start, or a ``spire-server`` CLI call failed."""


# ---- configuration (frozen values, pure renderers) --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What may differ between local spire-servers. Durations in Go syntax (``90s``, ``1h``)."""

    ca_ttl: str = "24h"
    default_x509_svid_ttl: str = "1h"
    default_jwt_svid_ttl: str = "5m"
    ca_key_type: str = "ec-p256"
    log_level: str = "DEBUG"


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """What may differ between local spire-agents. The SDS names are SPIRE's defaults."""

    default_svid_name: str = "default"
    default_bundle_name: str = "ROOTCA"
    default_all_bundles_name: str = "ALL"
    log_level: str = "DEBUG"
    discover_workload_path: bool = True


def _q(value: str) -> str:
    """An HCL string literal (JSON escaping is valid HCL)."""
    return json.dumps(value)


def render_server_hcl(
    *, trust_domain: str, port: int, data_dir: Path, socket_path: Path, settings: ServerSettings
) -> str:
    """``server.conf`` for a local spire-server: SQLite, join_token attestation, in-memory CA keys."""
    return f"""server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = {_q(str(socket_path))}
  trust_domain = {_q(trust_domain)}
  data_dir = {_q(str(data_dir))}
  log_level = {_q(settings.log_level)}
  ca_key_type = {_q(settings.ca_key_type)}
  ca_ttl = {_q(settings.ca_ttl)}
  default_x509_svid_ttl = {_q(settings.default_x509_svid_ttl)}
  default_jwt_svid_ttl = {_q(settings.default_jwt_svid_ttl)}
}}

plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = {_q(str(data_dir / "datastore.sqlite3"))}
    }}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
}}
"""


def render_agent_hcl(
    *,
    trust_domain: str,
    server_port: int,
    data_dir: Path,
    socket_path: Path,
    trust_bundle_path: Path,
    join_token: str,
    settings: AgentSettings,
) -> str:
    """``agent.conf`` for a local spire-agent: join token, disk keys, unix workload attestor, SDS names."""
    return f"""agent {{
  data_dir = {_q(str(data_dir))}
  log_level = {_q(settings.log_level)}
  server_address = "127.0.0.1"
  server_port = "{server_port}"
  socket_path = {_q(str(socket_path))}
  trust_bundle_path = {_q(str(trust_bundle_path))}
  trust_domain = {_q(trust_domain)}
  join_token = {_q(join_token)}
  sds {{
    default_svid_name = {_q(settings.default_svid_name)}
    default_bundle_name = {_q(settings.default_bundle_name)}
    default_all_bundles_name = {_q(settings.default_all_bundles_name)}
  }}
}}

plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "disk" {{
    plugin_data {{
      directory = {_q(str(data_dir))}
    }}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{
      discover_workload_path = {"true" if settings.discover_workload_path else "false"}
    }}
  }}
}}
"""


# ---- processes ---------------------------------------------------------------------------------------------
def connectable(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path`` (a readiness probe)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def log_since(path: Path, offset: int) -> str:
    """The text a process appended to its log ``path`` from byte ``offset`` on (its size when the process
    started), so a restart reads only its own lines; ``""`` while there is no log."""
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode("utf-8", "replace")


class _Daemon:
    """What spire-server and spire-agent share: a directory holding ``data/``, ``api.sock``,
    ``<role>.conf`` and ``<role>.log``; a process run on that config (SIGTERM then SIGKILL to stop);
    a CLI on the socket."""

    _attempts = 1
    """How often :meth:`start` tries when the log says "address already in use"."""

    def __init__(self, role: str, trust_domain: str, directory: Path) -> None:
        self.name = f"spire-{role}"
        self.trust_domain = trust_domain
        self.directory = directory
        binary = find_peer(self.name)
        if binary is None:
            raise SpireError(not_found(self.name))
        self.binary = binary
        self.data_dir = directory / "data"
        self.socket_path = directory / "api.sock"
        self.config_path = directory / f"{role}.conf"
        self.log_path = directory / f"{role}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def argv(self) -> list[str]:
        """The command line that runs the daemon on its config (also the demo's, under its supervisor)."""
        return [str(self.binary), "run", "-config", str(self.config_path)]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def logs(self) -> str:
        """The process's log since its last start."""
        return log_since(self.log_path, self._log_offset)

    def healthy(self) -> bool:
        """The socket accepts connections and ``healthcheck`` passes (a readiness probe)."""
        if not connectable(self.socket_path):
            return False
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self._run(["healthcheck"], check=False, timeout=10).returncode == 0
        return False

    def _launch(self, timeout: float) -> str | None:
        """Run the daemon and wait until it is healthy (``None``); a start that fails is stopped, and
        its log returned."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            try:
                proc = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.directory,
                )
            except OSError as exc:
                raise SpireError(
                    f"{self.name}: {self.argv[0]!r}: cannot run it ({exc.strerror or exc})"
                ) from exc
        self._proc = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if self.healthy():
                return None
            time.sleep(0.1)
        failed = self.logs()
        self.stop()
        return failed

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; the exit code (``None``: not running)."""
        proc, self._proc = self._proc, None
        return None if proc is None else stop_process(proc, STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: an outage, not a shutdown (the socket file stays behind, as after a crash)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def _prepare(self) -> None:
        """Make the directory and config ready for a launch (each attempt)."""
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start and wait until :meth:`healthy`."""
        log = ""
        for _attempt in range(self._attempts):
            self._prepare()
            failed = self._launch(timeout)
            if failed is None:
                return self
            log = failed
            if "address already in use" not in log:
                break
        raise SpireError(f"{self.name}: {self.trust_domain!r}: did not become ready; log:\n{log[-4000:]}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(
        self,
        args: Sequence[str],
        *,
        stdin: str | None = None,
        check: bool = True,
        timeout: float = CLI_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """``<binary> <args> -socketPath <socket>``; raises on a non-zero exit if ``check``."""
        cmd = [str(self.binary), *args, "-socketPath", str(self.socket_path)]
        out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise SpireError(
                f"{self.name} {' '.join(args[:2])}: exit {out.returncode}: "
                f"{(out.stderr or out.stdout).strip()}"
            )
        return out


@dataclass(frozen=True, slots=True)
class Entry:
    """A registration entry as ``entry show -output json`` reports it (the fields tests look at)."""

    id: str
    spiffe_id: str
    parent_id: str
    selectors: tuple[str, ...]
    x509_svid_ttl: int
    jwt_svid_ttl: int
    federates_with: tuple[str, ...]
    store_svid: bool
    hint: str
    dns_names: tuple[str, ...] = field(default=())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        def sid(v: Mapping[str, Any]) -> str:
            return f"spiffe://{v['trust_domain']}{v.get('path', '')}"

        return cls(
            id=str(data["id"]),
            spiffe_id=sid(data["spiffe_id"]),
            parent_id=sid(data["parent_id"]),
            selectors=tuple(sorted(f"{s['type']}:{s['value']}" for s in data.get("selectors", []))),
            x509_svid_ttl=int(data.get("x509_svid_ttl", 0)),
            jwt_svid_ttl=int(data.get("jwt_svid_ttl", 0)),
            federates_with=tuple(sorted(data.get("federates_with", []))),
            store_svid=bool(data.get("store_svid", False)),
            hint=str(data.get("hint", "")),
            dns_names=tuple(data.get("dns_names", [])),
        )


class SpireServer(_Daemon):
    """A running spire-server and its CLI. Use :func:`local_spire`, or ``with SpireServer(...)``."""

    _attempts = 3  # a start that finds the agent API port taken meanwhile is retried with another

    def __init__(self, trust_domain: str, directory: Path, settings: ServerSettings | None = None) -> None:
        super().__init__("server", trust_domain, directory)
        self.settings = settings or ServerSettings()
        self.port = 0

    @property
    def trust_domain_id(self) -> str:
        return f"spiffe://{self.trust_domain}"

    def configure(self) -> None:
        """Write ``server.conf`` with a free port for the agent API (SPIRE refuses ``bind_port = 0``; a
        start that finds the port taken meanwhile is retried with another)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path.write_text(
            render_server_hcl(
                trust_domain=self.trust_domain,
                port=self.port,
                data_dir=self.data_dir,
                socket_path=self.socket_path,
                settings=self.settings,
            )
        )

    def _prepare(self) -> None:
        self.configure()

    # ---- CLI ----------------------------------------------------------------------------------------------
    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Any ``spire-server`` subcommand on this server's socket (raises on a non-zero exit)."""
        return self._run(args, stdin=stdin)

    def token_generate(self, spiffe_id: str | None = None, ttl: int = 600) -> str:
        """``token generate [-spiffeID ID]`` → the join token."""
        args = ["token", "generate", "-ttl", str(ttl)]
        if spiffe_id:
            args += ["-spiffeID", spiffe_id]
        out = self._run(args).stdout
        for line in out.splitlines():
            if line.startswith("Token:"):
                return line.split(":", 1)[1].strip()
        raise SpireError(f"spire-server token generate: {out!r}: no 'Token:' line")

    def entry_create(
        self,
        spiffe_id: str,
        selectors: Sequence[str],
        *,
        parent_id: str | None = None,
        x509_svid_ttl: int | None = None,
        federates_with: Sequence[str] = (),
        hint: str | None = None,
        dns_names: Sequence[str] = (),
        store_svid: bool = False,
        entry_id: str | None = None,
    ) -> Entry:
        """``entry create``; the parent defaults to the local agent's alias. Returns the created entry."""
        args = ["entry", "create", "-output", "json", "-spiffeID", spiffe_id]
        args += ["-parentID", parent_id or agent_alias(self.trust_domain)]
        for sel in selectors:
            args += ["-selector", sel]
        if x509_svid_ttl is not None:
            args += ["-x509SVIDTTL", str(x509_svid_ttl)]
        for td in federates_with:
            args += ["-federatesWith", td]
        if hint:
            args += ["-hint", hint]
        for dns in dns_names:
            args += ["-dns", dns]
        if store_svid:
            args.append("-storeSVID")
        if entry_id:
            args += ["-entryID", entry_id]
        data = json.loads(self._run(args).stdout)
        results = data.get("results", [])
        if len(results) != 1 or "entry" not in results[0]:
            raise SpireError(f"spire-server entry create: {data!r}: expected one created entry")
        status = results[0].get("status", {})
        if status.get("code", 0) != 0:
            raise SpireError(f"spire-server entry create: {spiffe_id!r}: {status.get('message')}")
        return Entry.from_json(results[0]["entry"])

    def entry_show(self, *, spiffe_id: str | None = None) -> list[Entry]:
        """``entry show`` (optionally ``-spiffeID``): the entries, as :class:`Entry` values."""
        args = ["entry", "show", "-output", "json"]
        if spiffe_id:
            args += ["-spiffeID", spiffe_id]
        data = json.loads(self._run(args).stdout)
        return [Entry.from_json(e) for e in data.get("entries", [])]

    def entry_delete(self, entry_id: str) -> None:
        self._run(["entry", "delete", "-entryID", entry_id])

    def bundle_show(self, fmt: str = "pem") -> str:
        """``bundle show -format pem|spiffe``: this server's own bundle."""
        return self._run(["bundle", "show", "-format", fmt]).stdout

    def bundle_set(self, trust_domain_id: str, data: str, fmt: str = "spiffe") -> None:
        """``bundle set -id spiffe://td -format …`` with the bundle on stdin (a federated bundle)."""
        self._run(["bundle", "set", "-id", trust_domain_id, "-format", fmt], stdin=data)

    def bundle_delete(self, trust_domain_id: str, mode: str = "dissociate") -> None:
        """``bundle delete -id … -mode restrict|dissociate|delete`` (``dissociate`` drops the federation
        from entries that name it; SPIRE's default ``restrict`` refuses while any entry does)."""
        self._run(["bundle", "delete", "-id", trust_domain_id, "-mode", mode])


def agent_alias(trust_domain: str) -> str:
    """The stable SPIFFE ID the local agent is known by (parent of workload entries)."""
    return f"spiffe://{trust_domain}/agent/local"


class SpireAgent(_Daemon):
    """A running spire-agent attested to ``server`` with a join token."""

    def __init__(self, server: SpireServer, directory: Path, settings: AgentSettings | None = None) -> None:
        super().__init__("agent", server.trust_domain, directory)
        self.server = server
        self.settings = settings or AgentSettings()
        self.bundle_path = directory / "bootstrap.pem"

    @property
    def address(self) -> str:
        """``unix:///…/api.sock`` — ``SPIFFE_ENDPOINT_SOCKET`` / ``--workload-api`` form."""
        return "unix://" + str(self.socket_path)

    def configure(self) -> None:
        """Write ``agent.conf``: a fresh join token for :func:`agent_alias`, the server's bundle as the
        bootstrap bundle."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.bundle_path.write_text(self.server.bundle_show("pem"))
        token = self.server.token_generate(agent_alias(self.trust_domain))
        self.config_path.write_text(
            render_agent_hcl(
                trust_domain=self.trust_domain,
                server_port=self.server.port,
                data_dir=self.data_dir,
                socket_path=self.socket_path,
                trust_bundle_path=self.bundle_path,
                join_token=token,
                settings=self.settings,
            )
        )

    def _prepare(self) -> None:
        """Configure the first time only (a restart keeps the agent's identity, see the module doc)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # workloads running as other users must reach the socket (mode 0777)
        if not self.config_path.exists():
            self.configure()
        self.socket_path.unlink(missing_ok=True)

    def fetch_x509_ids(self) -> list[str]:
        """SPIFFE IDs the agent issues to *this* process's uid now (``spire-agent api fetch x509``);
        ``[]`` while it issues none (PermissionDenied)."""
        out = self._run(
            ["api", "fetch", "x509", "-output", "json", "-timeout", "5s"], check=False, timeout=15
        )
        if out.returncode != 0:
            return []
        return [str(s["spiffe_id"]) for s in json.loads(out.stdout).get("svids", [])]

    def wait_for_ids(self, spiffe_ids: Sequence[str], timeout: float = 30.0) -> None:
        """Wait until the agent issues every one of ``spiffe_ids`` to this uid: a new entry reaches the
        agent on its next sync (every 5 s, ``pkg/agent/manager/manager.go`` ``defaultSyncInterval``)."""
        deadline = time.monotonic() + timeout
        have: list[str] = []
        while time.monotonic() < deadline:
            have = self.fetch_x509_ids()
            if set(spiffe_ids) <= set(have):
                return
            time.sleep(0.5)
        raise SpireError(f"spire-agent: {list(spiffe_ids)!r}: not issued within {timeout}s (have {have!r})")

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass(frozen=True, slots=True)
class LocalSpire:
    """A started server + agent pair (one trust domain)."""

    server: SpireServer
    agent: SpireAgent
    directory: Path

    @property
    def trust_domain_id(self) -> str:
        return self.server.trust_domain_id


@contextlib.contextmanager
def local_spire(
    trust_domain: str,
    server_settings: ServerSettings | None = None,
    agent_settings: AgentSettings | None = None,
    *,
    directory: Path | None = None,
) -> Iterator[LocalSpire]:
    """Start spire-server then spire-agent for ``trust_domain``; stop both (agent first) on exit.

    ``directory`` (default: a fresh one under /tmp, removed on exit) holds ``server/`` and ``agent/``.
    """
    own = directory is None
    base = Path(tempfile.mkdtemp(prefix="spire-", dir="/tmp")) if directory is None else directory
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    try:
        with (
            SpireServer(trust_domain, base / "server", server_settings) as server,
            SpireAgent(server, base / "agent", agent_settings) as agent,
        ):
            yield LocalSpire(server, agent, base)
    finally:
        if own:
            shutil.rmtree(base, ignore_errors=True)
