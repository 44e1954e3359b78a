"""Reading an external app's ``scone`` and ``ghostunnel`` settings (part of :mod:`bridge.spec`).

SCONE rules: CAS session names are ``[A-Za-z0-9_-]`` segments (``<casNamespace>/<sessionName>``, at most
128 characters), MRENCLAVEs 64 hex digits, tolerations from ``security.attestation.tolerate``. Ghostunnel
rules: one CAS service and one process per target, so listen and status ports (``statusPort + index``) of
one app must all differ; ``workloadApiAddr``/``workloadApiSelectors`` only with ``certSource:
workload-api``, ``timedReload`` only with ``files``.
"""

from __future__ import annotations

import re

from bridge import names
from bridge.model import (
    CERT_SOURCES,
    TOLERATIONS,
    CertSource,
    GhostunnelSettings,
    SconeSettings,
    SpireSettings,
    Target,
)
from bridge.spec_reader import Reader, suggest
from scone.model import Attestation, Toleration
from scone.session import attestation_problems

__all__ = ["ghostunnel_ports", "ghostunnel_settings", "scone_settings"]

DEFAULT_GHOSTUNNEL_BINARY = "/usr/bin/ghostunnel"
DEFAULT_GHOSTUNNEL_WORKLOAD_API = "unix:///run/spire/sockets/agent.sock"
DEFAULT_GHOSTUNNEL_CERT_DIR = "/run/meshbridge/tls"

_SCONE_KEYS = (
    "casAddress",
    "casNamespace",
    "sessionName",
    "serviceName",
    "mrenclaves",
    "command",
    "pwd",
    "tolerations",
    "ignoreAdvisories",
)
_ADVISORY = re.compile(r"^(INTEL-SA-[0-9]{5}|\*)$")
_GHOSTUNNEL_KEYS = (
    "binary",
    "certSource",
    "workloadApiAddr",
    "workloadApiSelectors",
    "certDir",
    "timedReload",
    "statusPort",
)


def scone_settings(
    r: Reader, raw: object, path: str, app_name: str, *, mode: str, spire: SpireSettings
) -> SconeSettings:
    m = r.mapping(raw, path, _SCONE_KEYS)
    if raw is None:
        r.note(path, "required (CAS namespace, MRENCLAVEs, ...)")
    mrenclaves = r.strings(m, "mrenclaves", path, names.mrenclave, required=raw is not None)
    tolerations: list[Toleration] = []
    for k, item in enumerate(r.seq(m, "tolerations", path)):
        tp = f"{path}.tolerations[{k}]"
        if not isinstance(item, str) or item not in TOLERATIONS:
            hint = suggest(item, TOLERATIONS) if isinstance(item, str) else ""
            r.bad(tp, item, f"must be one of {', '.join(TOLERATIONS)}{hint}")
        elif item in tolerations:
            r.bad(tp, item, "duplicate toleration")
        else:
            tolerations.append(item)
    advisories = r.strings(m, "ignoreAdvisories", path, _advisory)
    # the renderer's rules (scone.session.attestation_problems), reported at the spec's field
    for problem in attestation_problems(Attestation(tuple(tolerations), tuple(advisories))):
        r.note(f"{path}.ignoreAdvisories", problem.split(": ", 2)[-1])
    if mode == "ghostunnel":
        command = ""
        if "serviceName" in m:
            r.note(
                f"{path}.serviceName",
                "not used in mode 'ghostunnel': each tunnel's CAS service is "
                "named ghostunnel-<service>-<port>",
            )
        if "command" in m:
            r.note(
                f"{path}.command",
                "not used in mode 'ghostunnel': the session runs Ghostunnel "
                "(set ghostunnel.binary to its path in the image)",
            )
    else:
        command = r.string(m, "command", path, check=_command) or "" if raw is not None else ""
    cas_ns = r.string(m, "casNamespace", path, check=names.scone_name) if raw is not None else None
    session = r.string_or(m, "sessionName", path, app_name, names.scone_name)
    if cas_ns is not None and len(f"{cas_ns}/{session}") > names.SCONE_SESSION_NAME_MAX:
        r.bad(
            f"{path}.sessionName",
            session,
            f"'{cas_ns}/{session}' is longer than {names.SCONE_SESSION_NAME_MAX} characters",
        )
    return SconeSettings(
        cas_address=r.string_or(
            m,
            "casAddress",
            path,
            spire.cas_connection.removeprefix("https://"),
            lambda v: names.host_port(v, port_required=False),
        ),
        cas_namespace=cas_ns or "",
        session_name=session,
        service_name=r.string_or(m, "serviceName", path, app_name, names.scone_name),
        mrenclaves=tuple(value.lower() for value in mrenclaves),
        command=command,
        pwd=r.string_or(m, "pwd", path, "/", names.absolute_path),
        tolerations=tuple(tolerations),
        ignore_advisories=tuple(advisories),
    )


def _advisory(value: str) -> str | None:
    return None if _ADVISORY.match(value) else "an advisory 'INTEL-SA-NNNNN', or '*' for all"


def _command(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if "\n" in value or "\x00" in value:
        return "must be one line (the SCONE service command)"
    return None


def _selector(value: str) -> str | None:
    kind, sep, rest = value.partition(":")
    if not sep or not kind or not rest or any(c.isspace() for c in value):
        return "must be a SPIRE selector 'type:value' without spaces (e.g. 'unix:uid:1000')"
    return None


def ghostunnel_settings(r: Reader, raw: object, path: str) -> GhostunnelSettings:
    m = r.mapping(raw, path, _GHOSTUNNEL_KEYS)
    source: CertSource = r.choice(m, "certSource", path, CERT_SOURCES, "files")  # type: ignore[assignment]
    addr: str | None = None
    selectors: list[tuple[str, str]] = []
    if source == "workload-api":
        addr = r.string(
            m, "workloadApiAddr", path, default=DEFAULT_GHOSTUNNEL_WORKLOAD_API, check=names.unix_address
        )
        for value in r.strings(m, "workloadApiSelectors", path, _selector, required=True):
            kind, _, rest = value.partition(":")
            selectors.append((kind, rest))
        if "timedReload" in m:
            r.note(f"{path}.timedReload", "only for certSource 'files' (the Workload API pushes rotations)")
    else:
        for key in ("workloadApiAddr", "workloadApiSelectors"):
            if key in m:
                r.note(f"{path}.{key}", "only for certSource 'workload-api'")
    return GhostunnelSettings(
        binary=r.string_or(m, "binary", path, DEFAULT_GHOSTUNNEL_BINARY, names.absolute_path),
        cert_source=source,
        workload_api_addr=addr,
        workload_api_selectors=tuple(selectors),
        cert_dir=r.string_or(m, "certDir", path, DEFAULT_GHOSTUNNEL_CERT_DIR, names.absolute_path),
        timed_reload=r.string_or(m, "timedReload", path, "1m", names.duration),
        status_port=r.integer(m, "statusPort", path, default=6060, check=names.port) or 6060,
    )


def ghostunnel_ports(r: Reader, targets: tuple[Target, ...], gt: GhostunnelSettings, path: str) -> None:
    """Each target runs its own Ghostunnel: listen ports and status ports (statusPort + index) must differ."""
    used: dict[int, str] = {}
    for j in range(len(targets)):
        status = f"{path}.ghostunnel.statusPort" + (f" + {j} (status of targets[{j}])" if j else "")
        used.setdefault(gt.status_port + j, status)
    for j, t in enumerate(targets):
        if t.listen_port is None:
            continue
        if t.listen_port in used:
            r.bad(
                f"{path}.targets[{j}].listenPort",
                t.listen_port,
                f"port already used by {used[t.listen_port]} (set a distinct listenPort)",
            )
        else:
            used[t.listen_port] = f"{path}.targets[{j}].listenPort"
    if gt.status_port + len(targets) - 1 > 65535:
        r.bad(f"{path}.ghostunnel.statusPort", gt.status_port, "statusPort + number of targets exceeds 65535")
