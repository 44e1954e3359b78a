"""The embedded Workload API's configuration: one loader, frozen dataclasses, every problem at once.

The YAML keys are a contract (scripts outside the test suite use them)::

    trust_domain: example.org
    data_dir: /var/lib/meshbridge        # CA persisted here; absent = in memory
    svid_ttl: 1h                         # durations: "90s", "10m", "1h", "2d", "1h30m" or integer seconds
    jwt_svid_ttl: 5m
    ca: {key_type: ec-p256, ttl: 24h, upstream: {cert: up.pem, key: up.key}}   # all optional
    sockets:                             # optional; --socket on the command line replaces them
      - {name: mesh, path: /run/meshbridge/mesh.sock, mode: "0777"}
    entries:
      - spiffe_id: spiffe://example.org/ns/default/sa/httpbin
        selectors: ["unix:uid:1000", "socket:mesh"]
        ttl: 10m                         # optional; also dns_names, hint, federates_with
    federation:                          # optional: trust domain -> PEM bundle file
      partner.org: partner-bundle.pem

Relative file paths are taken from the config file's directory. Federation bundle files are read here,
so a SIGHUP reload picks up edits. Unknown keys are errors. Every problem is collected and reported
together as ``<path>: <value!r>: <rule>`` in one :class:`ConfigError`.

Selectors: ``unix:*`` exactly as SPIRE's unix workload attestor names them, plus ``socket:<name>`` (the
socket the caller reached — the single-machine mode, see ``attestor.py``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TypeVar, cast

import yaml
from cryptography import x509

from sds_server.errors import SpiffeIdError
from sds_server.spiffe_id import SpiffeId, TrustDomain
from sds_server.workload_api.ca import KEY_TYPES, KeyType
from sds_server.workload_api.errors import ConfigError

__all__ = [
    "CaConfig",
    "Config",
    "Entry",
    "FederatedBundle",
    "SocketConfig",
    "UpstreamConfig",
    "check_sockets",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_socket_mode",
]

DEFAULT_SVID_TTL = timedelta(hours=1)  # SPIRE's default X509-SVID TTL
DEFAULT_JWT_SVID_TTL = timedelta(minutes=5)  # SPIRE's default JWT-SVID TTL
DEFAULT_CA_TTL = timedelta(hours=24)
DEFAULT_SOCKET_MODE = 0o777  # like SPIRE's agent socket: attestation decides, not file permissions

#: SPIRE unix workload attestor selector kinds; numeric ones take digits.
UNIX_SELECTORS = frozenset(
    {"uid", "gid", "user", "group", "supplementary_gid", "supplementary_group", "path", "sha256"}
)
_NUMERIC_UNIX = frozenset({"uid", "gid", "supplementary_gid"})
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_SOCKET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"^(?=.{{1,253}}$)(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class CaConfig:
    key_type: KeyType = "ec-p256"
    ttl: timedelta = DEFAULT_CA_TTL
    upstream: UpstreamConfig | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """A registration entry: who (selectors) gets which identity."""

    spiffe_id: SpiffeId
    selectors: frozenset[str]
    ttl: timedelta | None = None
    dns_names: tuple[str, ...] = ()
    hint: str = ""
    federates_with: tuple[TrustDomain, ...] = ()

    def matches(self, caller: frozenset[str]) -> bool:
        """An entry matches when all its selectors are among the caller's (SPIRE's rule)."""
        return self.selectors <= caller


@dataclass(frozen=True, slots=True)
class FederatedBundle:
    trust_domain: TrustDomain
    path: Path
    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class SocketConfig:
    name: str
    path: Path
    mode: int = DEFAULT_SOCKET_MODE


@dataclass(frozen=True, slots=True)
class Config:
    trust_domain: TrustDomain
    data_dir: Path | None = None
    svid_ttl: timedelta = DEFAULT_SVID_TTL
    jwt_svid_ttl: timedelta = DEFAULT_JWT_SVID_TTL
    ca: CaConfig = field(default_factory=CaConfig)
    entries: tuple[Entry, ...] = ()
    federation: tuple[FederatedBundle, ...] = ()
    sockets: tuple[SocketConfig, ...] = ()
    source: Path | None = None


class _Rule(Exception):  # private: caught in this module and turned into a problem line
    """The rule a value breaks, in the config's words."""


def _duration(value: object) -> timedelta:
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and value.strip().isdigit():
        seconds = int(value)
    elif isinstance(value, str) and value and (m := _DURATION_RE.match(value.strip())):
        d, h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    else:
        raise _Rule("must be a duration like '90s', '10m', '1h' or integer seconds")
    if seconds <= 0:
        raise _Rule("must be positive")
    return timedelta(seconds=seconds)


def _socket_mode(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{1,4}", value.strip()):
        mode = int(value.strip().replace("o", ""), 8)
    else:
        raise _Rule("must be an octal file mode like '0777'")
    if not 0 <= mode <= 0o777:
        raise _Rule("must be an octal file mode between 0000 and 0777")
    return mode


def _parse(parse: Callable[[object], _T], value: object, path: str, source: str) -> _T:
    try:
        return parse(value)
    except _Rule as exc:
        raise ConfigError([f"{path}: {value!r}: {exc}"], source) from None


def parse_duration(value: object, *, path: str = "duration", source: str = "config") -> timedelta:
    """``"90s"``, ``"10m"``, ``"1h"``, ``"2d"``, ``"1h30m"`` or integer seconds; must be positive.

    Raises :class:`ConfigError` with the problem ``<path>: <value!r>: <rule>``.
    """
    return _parse(_duration, value, path, source)


def parse_socket_mode(value: object, *, path: str = "mode", source: str = "config") -> int:
    """A file mode: octal string (``"0777"``, ``"660"``) or an int (YAML reads ``0777`` as octal).

    Raises :class:`ConfigError` with the problem ``<path>: <value!r>: <rule>``.
    """
    return _parse(_socket_mode, value, path, source)


class _Collector:
    """Gathers problems so the user sees every one of them in one go."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, value: object, rule: str) -> None:
        self.problems.append(f"{path}: {value!r}: {rule}")

    def add_raw(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def unknown_keys(self, path: str, data: Mapping[str, object], allowed: frozenset[str]) -> None:
        for key in sorted(set(data) - allowed, key=str):
            where = f"{path}.{key}" if path else str(key)
            self.add(where, key, f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def mapping(self, path: str, value: object) -> Mapping[str, object] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            self.add(path, value, "must be a mapping")
            return None
        return cast(Mapping[str, object], value)

    def check(self, path: str, value: object, parse: Callable[[object], _T]) -> _T | None:
        """``parse(value)``, or None with the broken rule recorded."""
        try:
            return parse(value)
        except _Rule as exc:
            self.add(path, value, str(exc))
        except SpiffeIdError as exc:  # its message names the value and the rule
            self.add_raw(path, str(exc))
        return None

    def parsed(self, path: str, value: object, parse: Callable[[object], _T], default: _T) -> _T:
        """``parse(value)``, or ``default`` when absent or (a problem recorded) invalid."""
        result = None if value is None else self.check(path, value, parse)
        return default if result is None else result

    def required(self, path: str, value: object, parse: Callable[[object], _T]) -> _T | None:
        if value is None:
            self.add(path, None, "required")
            return None
        return self.check(path, value, parse)

    def each(
        self, path: str, value: object, parse: Callable[[object], _T], rule: str, *, required: bool = False
    ) -> list[_T] | None:
        """``parse`` of each item of the list ``value``; None (problems recorded) if any is invalid."""
        if not isinstance(value, list) or (required and not value):
            self.add(path, value, rule)
            return None
        items = [self.check(f"{path}[{i}]", item, parse) for i, item in enumerate(value)]
        valid = [item for item in items if item is not None]
        return valid if len(valid) == len(items) else None

    def string(self, path: str, value: object) -> str | None:
        if not isinstance(value, str) or not value:
            self.add(path, value, "must be a non-empty string")
            return None
        return value


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


_TOP_KEYS = frozenset(
    {"trust_domain", "data_dir", "svid_ttl", "jwt_svid_ttl", "ca", "entries", "federation", "sockets"}
)
_ENTRY_KEYS = frozenset({"spiffe_id", "selectors", "ttl", "dns_names", "hint", "federates_with"})


def _trust_domain(value: object) -> TrustDomain:
    return TrustDomain.parse(value)  # type: ignore[arg-type]  # it rejects a non-string itself


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Rule("must be a string")
    return value


def _dns_name(value: object) -> str:
    if not isinstance(value, str) or not _DNS_RE.match(value):
        raise _Rule("must be a DNS name (letters, digits, '-', dots)")
    return value


def _selector(value: object) -> str:
    selector = _string(value)
    kind, sep, rest = selector.partition(":")
    if not sep or not rest:
        raise _Rule("a selector reads '<type>:<value>', e.g. 'unix:uid:1000' or 'socket:mesh'")
    if kind == "socket":
        if not _SOCKET_NAME_RE.match(rest):
            raise _Rule("socket names are letters, digits, '.', '-', '_'")
        return selector
    if kind != "unix":
        raise _Rule(
            f"unknown selector type {kind!r}: this server attests 'unix:*' (SPIRE's unix workload "
            "attestor) and 'socket:<name>'"
        )
    sub, sep, arg = rest.partition(":")
    if sub not in UNIX_SELECTORS:
        raise _Rule(f"unknown unix selector {sub!r} (allowed: {', '.join(sorted(UNIX_SELECTORS))})")
    if not sep or not arg:
        raise _Rule(f"'unix:{sub}' needs a value")
    if sub in _NUMERIC_UNIX and not arg.isdigit():
        raise _Rule(f"'unix:{sub}' takes a number")
    if sub == "sha256" and not _SHA256_RE.match(arg):
        raise _Rule("'unix:sha256' takes 64 lowercase hex digits")
    if sub == "path" and not arg.startswith("/"):
        raise _Rule("'unix:path' takes an absolute path")
    return selector


def _entry(
    c: _Collector, path: str, raw: object, td: TrustDomain | None, federation: frozenset[TrustDomain]
) -> Entry | None:
    data = c.mapping(path, raw)
    if data is None:
        if raw is None:
            c.add(path, raw, "an entry must be a mapping with spiffe_id and selectors")
        return None
    c.unknown_keys(path, data, _ENTRY_KEYS)

    def member(value: object) -> SpiffeId:
        spiffe_id = SpiffeId.parse(value)  # type: ignore[arg-type]  # it rejects a non-string itself
        if td is not None and spiffe_id.trust_domain != td:
            raise _Rule(f"must be in the trust domain {td.name!r}")
        return spiffe_id

    def federated(value: object) -> TrustDomain:
        fed = _trust_domain(value)
        if fed not in federation:
            raise _Rule("not a trust domain listed under 'federation'")
        return fed

    spiffe_id = c.required(f"{path}.spiffe_id", data.get("spiffe_id"), member)
    selectors = c.each(
        f"{path}.selectors",
        data.get("selectors"),
        _selector,
        "must be a non-empty list of selectors",
        required=True,
    )
    ttl = c.parsed(f"{path}.ttl", data.get("ttl"), _duration, None)
    dns_names = c.each(
        f"{path}.dns_names", data.get("dns_names", []), _dns_name, "must be a list of DNS names"
    )
    hint = c.check(f"{path}.hint", data.get("hint", ""), _string)
    feds = c.each(
        f"{path}.federates_with", data.get("federates_with", []), federated, "must be a list of trust domains"
    )
    if spiffe_id is None or selectors is None or dns_names is None or hint is None or feds is None:
        return None
    return Entry(spiffe_id, frozenset(selectors), ttl, tuple(dns_names), hint, tuple(feds))


def _ca(c: _Collector, raw: object, base: Path) -> CaConfig:
    data = c.mapping("ca", raw)
    if data is None:
        return CaConfig()
    c.unknown_keys("ca", data, frozenset({"key_type", "ttl", "upstream"}))
    key_type = data.get("key_type", "ec-p256")
    if key_type not in KEY_TYPES:
        c.add("ca.key_type", key_type, f"must be one of {', '.join(KEY_TYPES)}")
        key_type = "ec-p256"
    ttl = c.parsed("ca.ttl", data.get("ttl"), _duration, DEFAULT_CA_TTL)
    upstream = None
    up = c.mapping("ca.upstream", data.get("upstream"))
    if up is not None:
        c.unknown_keys("ca.upstream", up, frozenset({"cert", "key"}))
        cert = c.string("ca.upstream.cert", up.get("cert"))
        key = c.string("ca.upstream.key", up.get("key"))
        for name, value in (("cert", cert), ("key", key)):
            if value is not None and not _resolve(base, value).is_file():
                c.add(f"ca.upstream.{name}", value, "file does not exist")
        if cert and key:
            upstream = UpstreamConfig(_resolve(base, cert), _resolve(base, key))
    return CaConfig(cast(KeyType, key_type), ttl, upstream)


def _federation(
    c: _Collector, raw: object, base: Path, td: TrustDomain | None
) -> tuple[FederatedBundle, ...]:
    data = c.mapping("federation", raw)
    if data is None:
        return ()
    out = []
    for name, file in data.items():
        where = f"federation.{name}"
        fed_td = c.check(where, name, _trust_domain)
        if fed_td is None:
            continue
        if fed_td == td:
            c.add(where, name, "cannot federate with our own trust domain")
            continue
        if not isinstance(file, str) or not file:
            c.add(where, file, "must be the path of a PEM bundle file")
            continue
        path = _resolve(base, file)
        try:
            certs = tuple(x509.load_pem_x509_certificates(path.read_bytes()))
        except OSError as exc:
            c.add(where, file, f"cannot read the bundle file ({exc.strerror})")
            continue
        except ValueError:
            c.add(where, file, "not a PEM file of certificates")
            continue
        out.append(FederatedBundle(fed_td, path, certs))
    return tuple(out)


def _sockets(c: _Collector, raw: object, base: Path) -> tuple[SocketConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        c.add("sockets", raw, "must be a list of {name, path, mode}")
        return ()
    out: list[SocketConfig] = []
    for i, item in enumerate(raw):
        where = f"sockets[{i}]"
        data = c.mapping(where, item)
        if data is None:
            continue
        c.unknown_keys(where, data, frozenset({"name", "path", "mode"}))
        name = c.string(f"{where}.name", data.get("name"))
        if name is not None and not _SOCKET_NAME_RE.match(name):
            c.add(f"{where}.name", name, "socket names are letters, digits, '.', '-', '_' (max 64)")
            name = None
        raw_path = c.string(f"{where}.path", data.get("path"))
        mode = c.parsed(f"{where}.mode", data.get("mode"), _socket_mode, DEFAULT_SOCKET_MODE)
        if name and raw_path:
            path = _resolve(base, raw_path)
            if len(str(path).encode()) > MAX_SOCKET_PATH:
                c.add(f"{where}.path", str(path), f"Unix socket paths are limited to {MAX_SOCKET_PATH} bytes")
            elif any(s.name == name for s in out):
                c.add(f"{where}.name", name, "duplicate socket name")
            else:
                out.append(SocketConfig(name, path, mode))
    return tuple(out)


def parse_config(
    data: object, *, base: Path, source: str = "config", sockets: Sequence[SocketConfig] | None = None
) -> Config:
    """Validate an already-parsed YAML document (a dict); raise :class:`ConfigError` listing every problem.

    ``sockets`` (e.g. from ``--socket``) replace the document's ``sockets:``; once sockets are known,
    ``socket:<name>`` selectors naming none of them are reported with the other problems.
    """
    c = _Collector()
    if not isinstance(data, dict):
        raise ConfigError([f"<top>: {type(data).__name__!r}: the config must be a YAML mapping"], source)
    top = cast(Mapping[str, object], data)
    c.unknown_keys("", top, _TOP_KEYS)
    td = c.required("trust_domain", top.get("trust_domain"), _trust_domain)
    data_dir = None
    if top.get("data_dir") is not None:
        raw_dir = c.string("data_dir", top["data_dir"])
        if raw_dir:
            data_dir = _resolve(base, raw_dir)
            if data_dir.exists() and not data_dir.is_dir():
                c.add("data_dir", raw_dir, "exists and is not a directory")
    svid_ttl = c.parsed("svid_ttl", top.get("svid_ttl"), _duration, DEFAULT_SVID_TTL)
    jwt_ttl = c.parsed("jwt_svid_ttl", top.get("jwt_svid_ttl"), _duration, DEFAULT_JWT_SVID_TTL)
    ca = _ca(c, top.get("ca"), base)
    federation = _federation(c, top.get("federation"), base, td)
    file_sockets = _sockets(c, top.get("sockets"), base)
    final_sockets = tuple(sockets) if sockets is not None else file_sockets
    entries: list[Entry] = []
    raw_entries = top.get("entries", [])
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        c.add("entries", raw_entries, "must be a list of entries")
    else:
        fed_tds = frozenset(f.trust_domain for f in federation)
        if isinstance(top.get("federation"), dict):  # listed but unreadable bundles: no cascade
            for name in cast(dict[str, object], top["federation"]):
                with contextlib.suppress(SpiffeIdError):
                    fed_tds |= {TrustDomain.parse(name)}
        seen: dict[tuple[SpiffeId, frozenset[str]], int] = {}
        for i, raw in enumerate(raw_entries):
            entry = _entry(c, f"entries[{i}]", raw, td, fed_tds)
            if entry is None:
                continue
            key = (entry.spiffe_id, entry.selectors)
            if key in seen:
                c.add(
                    f"entries[{i}]",
                    str(entry.spiffe_id),
                    f"duplicates entries[{seen[key]}] (same SPIFFE ID and selectors)",
                )
                continue
            seen[key] = i
            entries.append(entry)
            if final_sockets:
                c.problems.extend(_socket_selector_problems(i, entry, final_sockets))
    if c.problems or td is None:
        raise ConfigError(c.problems, source)
    return Config(td, data_dir, svid_ttl, jwt_ttl, ca, tuple(entries), federation, final_sockets)


def load_config(path: Path | str, *, sockets: Sequence[SocketConfig] | None = None) -> Config:
    """Read and validate the YAML config file at ``path`` (the only reader of it).

    ``sockets`` (the command line's ``--socket``) replace the file's ``sockets:``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{str(p)!r}: cannot read ({exc.strerror})"], str(p)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{str(p)!r}: not UTF-8 text"], str(p)) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"], str(p)) from exc
    config = parse_config(data, base=p.resolve().parent, source=str(p), sockets=sockets)
    return replace(config, source=p.resolve())


def _socket_selector_problems(index: int, entry: Entry, sockets: Sequence[SocketConfig]) -> list[str]:
    names = {s.name for s in sockets}
    return [
        f"entries[{index}].selectors: {sel!r}: no socket named {sel[len('socket:') :]!r} "
        f"(sockets: {', '.join(sorted(names)) or 'none'})"
        for sel in sorted(entry.selectors)
        if sel.startswith("socket:") and sel[len("socket:") :] not in names
    ]


def check_sockets(config: Config) -> None:
    """Once the sockets are final (config or ``--socket``): there is one, and entries name real ones."""
    problems: list[str] = []
    if not config.sockets:
        problems.append("sockets: []: no socket to serve: give --socket PATH or 'sockets:' in the config")
    for i, entry in enumerate(config.entries):
        problems.extend(_socket_selector_problems(i, entry, config.sockets))
    paths = [str(s.path) for s in config.sockets]
    for path in sorted({p for p in paths if paths.count(p) > 1}):
        problems.append(f"sockets: {path!r}: the same path is given twice")
    if problems:
        raise ConfigError(problems, str(config.source) if config.source else "config")
