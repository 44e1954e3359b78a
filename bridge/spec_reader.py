"""Reading raw YAML for the spec loader: the one place ``yaml.YAMLError`` is mapped, and the walker that
records every problem as ``<path>: <value!r>: <rule>`` instead of stopping at the first.

Private to :mod:`bridge.spec`.
"""

from __future__ import annotations

import difflib
import os
import reprlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import yaml

from bridge.errors import SpecError
from sds_server.errors import SpiffeIdError
from sds_server.spiffe_id import SpiffeId, TrustDomain

_T = TypeVar("_T")

Check = Callable[[str], "str | None"]


_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: faster


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """``SafeLoader`` that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[object, object]:
    loader.flatten_mapping(node)
    seen: set[tuple[str, str]] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue  # complex keys are reported later as "keys must be strings"
        ident = (key_node.tag, key_node.value)  # same tag + same text = same key; no double construction
        if ident in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key_node.value!r}",
                key_node.start_mark,
            )
        seen.add(ident)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_REPR = reprlib.Repr()
_REPR.maxstring = 120
_REPR.maxother = 120
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def show(value: object) -> str:
    """``repr`` for messages, bounded: a YAML alias bomb or a huge value must not blow up an error line."""
    if isinstance(value, str) and len(value) <= 200:
        return repr(value)
    return _REPR.repr(value)


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def join(path: str, key: str) -> str:
    """``path.key``; keys with spaces or control characters are quoted (``path['a b']``): one line each."""
    if not key or not key.isprintable() or any(c.isspace() or c in "[]'\"" for c in key):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


class Reader:
    """Walks raw YAML values, converting what is valid and recording every problem."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.invalid_services: set[str] = set()
        """Names and keys of declared mesh services that had problems (references to them stay quiet)."""

    def bad(self, path: str, value: object, rule: str) -> None:
        self.problems.append(f"{path}: {show(value)}: {rule}")

    def note(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, raw: object, path: str, allowed: tuple[str, ...]) -> dict[str, object]:
        """``raw`` as a mapping with only ``allowed`` keys (``{}`` and a problem otherwise)."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.bad(path or "<document>", raw, "must be a mapping")
            return {}
        out: dict[str, object] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                self.bad(join(path, str(key)), key, "keys must be strings")
            elif key not in allowed:
                self.note(join(path, key), "unknown key" + suggest(key, allowed))
            else:
                out[key] = value
        return out

    def mappings(
        self, top: Mapping[str, object], key: str, allowed: tuple[str, ...], needs: str
    ) -> Iterator[tuple[str, dict[str, object]]]:
        """``(path, item)`` for each item of the required top-level list ``key``, as a mapping with
        only ``allowed`` keys; an item that is none (or empty) is reported (``needs``: the keys it must
        have, in words) and skipped."""
        for i, raw in enumerate(self.seq(top, key, "", required=True)):
            path = f"{key}[{i}]"
            item = self.mapping(raw, path, allowed)
            if not item:
                if raw is None or raw == {}:
                    self.note(path, f"must be a mapping with at least {needs}")
                continue
            yield path, item

    def seq(self, m: Mapping[str, object], key: str, path: str, *, required: bool = False) -> list[object]:
        p = join(path, key)
        raw = m.get(key)
        if raw is None:
            if required:
                self.note(p, "required (a non-empty list)")
            return []
        if not isinstance(raw, list):
            self.bad(p, raw, "must be a list")
            return []
        if required and not raw:
            self.note(p, "must not be empty")
        return raw

    def string(
        self,
        m: Mapping[str, object],
        key: str,
        path: str,
        *,
        default: str | None = None,
        check: Check | None = None,
    ) -> str | None:
        """The string at ``key``: ``default`` when absent (``None`` default = required)."""
        return self._field(m, key, path, default, lambda raw, p: self.value_string(raw, p, check))

    def string_or(self, m: Mapping[str, object], key: str, path: str, default: str, check: Check) -> str:
        """The string at ``key``; ``default`` when absent, and when invalid (the problem is recorded)."""
        return self.string(m, key, path, default=default, check=check) or default

    def _field(
        self,
        m: Mapping[str, object],
        key: str,
        path: str,
        default: _T | None,
        convert: Callable[[object, str], _T | None],
    ) -> _T | None:
        """``convert(value, path)`` of the value at ``key``; ``default`` when absent (``None`` = required)."""
        p = join(path, key)
        raw = m.get(key)
        if raw is None:
            if default is None:
                self.note(p, "required")
            return default
        return convert(raw, p)

    def optional_string(
        self, m: Mapping[str, object], key: str, path: str, check: Check | None
    ) -> str | None:
        raw = m.get(key)
        return None if raw is None else self.value_string(raw, join(path, key), check)

    def each(
        self,
        m: Mapping[str, object],
        key: str,
        path: str,
        convert: Callable[[object, str], _T | None],
        *,
        required: bool = False,
    ) -> list[_T]:
        """``convert(item, path)`` of each item of the list at ``key``, the invalid ones left out."""
        items = (
            convert(raw, f"{join(path, key)}[{i}]")
            for i, raw in enumerate(self.seq(m, key, path, required=required))
        )
        return [item for item in items if item is not None]

    def strings(
        self, m: Mapping[str, object], key: str, path: str, check: Check | None, *, required: bool = False
    ) -> list[str]:
        """The valid strings (by ``check``) of the list at ``key``."""
        return self.each(m, key, path, lambda raw, p: self.value_string(raw, p, check), required=required)

    def value_string(
        self, raw: object, p: str, check: Check | None, *, must: str = "must be a string"
    ) -> str | None:
        return self._typed(raw, p, str, must, check)

    def _typed(
        self, raw: object, p: str, kind: type[_T], must: str, check: Callable[[_T], str | None] | None
    ) -> _T | None:
        """``raw`` if it is a ``kind`` (``bool`` is no ``int`` here) that ``check`` accepts, else ``None``."""
        if isinstance(raw, bool) or not isinstance(raw, kind):
            self.bad(p, raw, must)
            return None
        rule = check(raw) if check is not None else None
        if rule is not None:
            self.bad(p, raw, rule)
            return None
        return raw

    def choice(
        self, m: Mapping[str, object], key: str, path: str, choices: tuple[str, ...], default: str
    ) -> str:
        raw = m.get(key)
        if raw is None:
            return default
        p = join(path, key)
        if not isinstance(raw, str) or raw not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            hint = suggest(raw, choices) if isinstance(raw, str) else ""
            self.bad(p, raw, f"must be one of {allowed}{hint}")
            return default
        return raw

    def integer(
        self,
        m: Mapping[str, object],
        key: str,
        path: str,
        *,
        default: int | None = None,
        check: Callable[[int], str | None] | None = None,
    ) -> int | None:
        return self._field(
            m, key, path, default, lambda raw, p: self._typed(raw, p, int, "must be an integer", check)
        )

    def boolean(self, m: Mapping[str, object], key: str, path: str, default: bool) -> bool:
        raw = m.get(key)
        if raw is None:
            return default
        if not isinstance(raw, bool):
            self.bad(join(path, key), raw, "must be true or false")
            return default
        return raw

    def spiffe_id(self, raw: object, p: str, trust_domain: str | None) -> str | None:
        sid = self._parsed(raw, p, SpiffeId.parse)
        if sid is None:
            return None
        if trust_domain is not None and sid.trust_domain.name != trust_domain:
            self.bad(p, raw, f"must be in the bridge's trust domain {trust_domain!r}")
            return None
        return str(sid)

    def trust_domain(self, raw: object, p: str) -> str | None:
        td = self._parsed(raw, p, TrustDomain.parse)
        return None if td is None else td.name

    def _parsed(self, raw: object, p: str, parse: Callable[[str], _T]) -> _T | None:
        text = self.value_string(raw, p, None)
        if text is None:
            return None
        try:
            return parse(text)
        except SpiffeIdError as exc:
            self.note(p, str(exc))
            return None


def read_text(source: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, name for messages). ``PathLike`` and one-line ``*.yaml``/``*.yml`` strings are files."""
    if isinstance(source, str) and ("\n" in source or not source.endswith((".yaml", ".yml", ".json"))):
        return source, "<spec>"
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise SpecError([f"{path}: cannot read the spec: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}: the spec is not UTF-8 text"]) from exc


def parse_yaml(text: str, name: str) -> object:
    try:
        docs = list(yaml.load_all(text, Loader=_UniqueKeyLoader))
    except RecursionError as exc:
        # PyYAML constructs nested collections recursively: a document nested a few hundred levels
        # deep exhausts the interpreter stack. No bridge spec is deeper than a handful of levels.
        raise SpecError([f"{name}: the spec nests too deeply (a bridge spec is a few levels deep)"]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"{where}: invalid YAML: {problem}"]) from exc
    if len(docs) != 1:
        raise SpecError([f"{name}: expected exactly one YAML document, found {len(docs)}"])
    return docs[0]
