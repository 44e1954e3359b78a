"""The confidential-Ghostunnel side on one machine: the rendered command, changed only where it must be.

The rendered CAS session runs ``ghostunnel client …`` inside the enclave with certificate files that CAS
injects after attestation (``images[].injection_files``). Here the same command line runs with the real
binary; the only changes one machine forces are:

- ``--target <svc>.<ns>.svc.cluster.local:<port>`` → ``127.0.0.1:<sidecar port>`` plus
  ``--override-server-name=<that host>``, so Go's host-name verification still checks the rendered name;
- ``--listen`` / ``--status`` → free loopback ports (two tunnels of one app run side by side);
- injected file paths → files materialised from the Workload API SVID in a 0700 temp dir (CAS stand-in);
- ``--use-workload-api-addr`` → the app's own Workload API socket.

Everything else (``--verify-uri``, ``--timed-reload``, …) is kept as rendered. Pure functions, except
``write_injected_files`` (atomic 0600 writes).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge import names
from bridge.demo.errors import DemoError
from sds_server.files import atomic_write

# Ghostunnel v1.11.1 flags that take no value (``--help-long``); every other flag takes one.
_BOOL_FLAGS = frozenset(
    {
        "use-workload-api",
        "unsafe-listen",
        "unsafe-target",
        "disable-authentication",
        "skip-resolve",
        "enable-pprof",
        "enable-shutdown",
        "syslog",
        "disable-landlock",
        "allow-all",
        "proxy-protocol",
        "auto-acme-agree-to-tos",
        "auto-acme-testca",
    }
)
_FILE_FLAGS = ("cert", "key", "cacert", "keystore")


@dataclass(frozen=True, slots=True)
class GhostunnelCommand:
    """A parsed ``ghostunnel client`` command line: ``flags`` in order, ``None`` for value-less flags."""

    program: str
    flags: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, argv: Sequence[str] | str, *, what: str) -> GhostunnelCommand:
        args = shlex.split(argv) if isinstance(argv, str) else list(argv)
        if len(args) < 2 or args[1] != "client":
            raise DemoError(f"{what}: {' '.join(args[:2])!r}: must be '<ghostunnel> client …'")
        flags: list[tuple[str, str | None]] = []
        rest = iter(args[2:])
        for arg in rest:
            if not arg.startswith("--"):
                raise DemoError(f"{what}: {arg!r}: expected a --flag")
            name, eq, value = arg[2:].partition("=")
            if eq:
                flags.append((name, value))
            elif name in _BOOL_FLAGS:
                flags.append((name, None))
            elif (following := next(rest, None)) is not None:
                flags.append((name, following))
            else:
                raise DemoError(f"{what}: --{name}: missing its value")
        return cls(program=args[0], flags=tuple(flags))

    def get(self, name: str) -> str | None:
        return next(iter(self.all(name)), None)

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.flags if n == name and v is not None]

    def has(self, name: str) -> bool:
        return any(n == name for n, _ in self.flags)

    def argv(self, program: str | None = None) -> list[str]:
        out = [program or self.program, "client"]
        out += [f"--{n}" if v is None else f"--{n}={v}" for n, v in self.flags]
        return out


def split_host_port(addr: str, *, what: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise DemoError(f"{what}: {addr!r}: must be host:port")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class LocalTunnel:
    """What the rewritten command needs from this machine."""

    sidecar_port: int
    listen_port: int
    status_port: int
    files: Mapping[str, Path]
    """Rendered in-enclave path → materialised file (files variant)."""
    workload_api_addr: str | None = None
    """``unix:///…`` of the app's Workload API socket (Workload-API variant)."""


def localize(cmd: GhostunnelCommand, local: LocalTunnel, *, what: str) -> GhostunnelCommand:
    """The rendered command with only the one-machine changes applied (see module docstring)."""
    target = cmd.get("target")
    if target is None:
        raise DemoError(f"{what}: no --target")
    host, _ = split_host_port(target, what=f"{what}: --target")
    out: list[tuple[str, str | None]] = []
    for name, value in cmd.flags:
        if name == "target":
            out.append((name, f"127.0.0.1:{local.sidecar_port}"))
            if not cmd.has("override-server-name"):
                out.append(("override-server-name", host))
        elif name == "listen":
            out.append((name, f"127.0.0.1:{local.listen_port}"))
        elif name == "status":
            out.append((name, f"127.0.0.1:{local.status_port}"))
        elif name in _FILE_FLAGS:
            if value is None or value not in local.files:
                raise DemoError(
                    f"{what}: --{name}={value}: no injection file with that path in the session's "
                    "images[].injection_files: CAS would not provide it"
                )
            out.append((name, str(local.files[value])))
        elif name in ("use-workload-api-addr", "use-workload-api"):
            if local.workload_api_addr is None:
                raise DemoError(f"{what}: --{name}: no Workload API socket for this app")
            out.append(("use-workload-api-addr", local.workload_api_addr))
        else:
            out.append((name, value))
    return GhostunnelCommand(program=cmd.program, flags=tuple(out))


def to_workload_api_variant(cmd: GhostunnelCommand) -> GhostunnelCommand:
    """The same tunnel taking its SVID from the Workload API (the thesis's variant): file flags and
    ``--timed-reload`` dropped, ``--use-workload-api-addr`` added (value filled by ``localize``)."""
    flags = [(n, v) for n, v in cmd.flags if n not in (*_FILE_FLAGS, "timed-reload", "storepass")]
    if not any(n in ("use-workload-api-addr", "use-workload-api") for n, _ in flags):
        flags.append(("use-workload-api-addr", "unix:///run/spire/agent.sock"))
    return GhostunnelCommand(program=cmd.program, flags=tuple(flags))


def with_verify_uri(cmd: GhostunnelCommand, spiffe_id: str) -> GhostunnelCommand:
    """The same tunnel expecting another server SPIFFE ID (a negative check)."""
    flags = [(n, v) for n, v in cmd.flags if n != "verify-uri"] + [("verify-uri", spiffe_id)]
    return GhostunnelCommand(program=cmd.program, flags=tuple(flags))


def write_injected_files(contents: Mapping[str, str], directory: Path) -> dict[str, Path]:
    """Materialise injected files (rendered path → content) in ``directory``; returns path → file."""
    out: dict[str, Path] = {}
    for i, (rendered, content) in enumerate(sorted(contents.items())):
        local = directory / f"{i}-{Path(rendered).name}"
        atomic_write(local, content.encode())
        out[rendered] = local
    return out


def parse_duration(value: str, *, what: str) -> float:
    """A Go duration as Ghostunnel takes it (``500ms``, ``10s``, ``1m``, ``1h30m``) in seconds."""
    problem = names.duration(value)
    if problem:
        raise DemoError(f"{what}: {value!r}: {problem}")
    return names.duration_seconds(value)


def with_timed_reload(cmd: GhostunnelCommand, value: str) -> GhostunnelCommand:
    flags = [(n, value if n == "timed-reload" else v) for n, v in cmd.flags]
    return GhostunnelCommand(program=cmd.program, flags=tuple(flags))
