"""Serialising renderings and writing them to disk: the one place that dumps YAML/JSON and writes files.

Format follows the path: ``*.json`` → ``json.dumps`` (indent 2, key order kept); ``*.yaml``/``*.yml``
→ ``yaml.safe_dump`` (a list of mappings becomes a multi-document stream); a ``str`` document (scripts,
HCL, Markdown, the SVIDStore templates with the plugin's ``<\\…>`` placeholders) is written as is.
``yaml.safe_dump`` quotes what YAML 1.1 would misread (``on``, ``2024-01-01``) and never emits Python tags.

:func:`write_tree` is atomic for the directory as a whole: everything is written into a temporary
directory next to the target, ``fsync``'d, and only then renamed into place; an existing target is
replaced only after that succeeded (and only when it is empty or an earlier meshbridge output, marked by
``.meshbridge-render``, so ``-o ~`` can never wipe a home directory). Scripts (``*.sh``) are 0755, the
rest 0644. Private keys are never part of a rendering, so no file needs 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import yaml

from bridge.errors import BridgeError
from bridge.rendering import Document

MARKER = ".meshbridge-render"
"""File present in every directory :func:`write_tree` writes; only such directories are replaced."""


_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~10x faster


class _Dumper(_BaseDumper):  # type: ignore[misc,valid-type]
    """``SafeDumper`` that writes multi-line strings (templates, certificates) as literal blocks."""

    def ignore_aliases(self, data: object) -> bool:
        return True  # rendered documents share no objects worth anchoring; skip the identity bookkeeping


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not value.strip(" ").endswith(" ") and "\t" not in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(doc: Document) -> str:
    """YAML text of one mapping, or a ``---``-separated stream of a list of mappings."""
    if isinstance(doc, str):
        return doc
    docs = doc if isinstance(doc, list) else [doc]
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def dump_json(doc: Document) -> str:
    if isinstance(doc, str):
        return doc
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def serialize(path: str, doc: Document) -> str:
    """The text of ``doc`` as it is written at ``path`` (format chosen by the extension)."""
    if isinstance(doc, str):
        return doc
    if path.endswith(".json"):
        return dump_json(doc)
    if path.endswith((".yaml", ".yml")):
        return dump_yaml(doc)
    raise BridgeError(f"{path}: structured documents go to .yaml or .json files")


def dumps(doc: Document, fmt: str) -> str:
    """``fmt`` ``yaml`` or ``json`` (what the single-purpose commands print)."""
    if fmt == "json":
        return dump_json(doc)
    if fmt == "yaml":
        return dump_yaml(doc)
    raise BridgeError(f"-o: {fmt!r}: must be 'yaml' or 'json'")


def _check_relative(path: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or any(p in ("", ".", "..") for p in path.split("/")):
        raise BridgeError(f"{path!r}: output paths must be relative, without '.' or '..'")
    return rel


def _write_file(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, mode)  # O_CREAT honours the umask; the modes are part of the contract


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replaceable(target: Path) -> bool:
    if not target.exists():
        return True
    if not target.is_dir() or target.is_symlink():
        return False
    return (target / MARKER).is_file() or not any(target.iterdir())


def write_tree(target: Path, documents: Mapping[str, Document]) -> list[Path]:
    """Write every document under ``target`` atomically; return the written paths (sorted).

    Everything is serialised before the first byte touches the disk, so a serialisation problem leaves
    nothing behind; a write problem removes the temporary directory and leaves ``target`` untouched.
    """
    texts = {str(_check_relative(p)): serialize(p, doc) for p, doc in documents.items()}
    target = Path(target)
    parent = target.parent if target.parent != Path() else Path()
    if not _replaceable(target):
        raise BridgeError(
            f"-o: {str(target)!r}: exists and is not an earlier meshbridge output "
            f"(no {MARKER} inside) nor empty; refusing to replace it: choose another directory"
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as exc:
        raise BridgeError(f"-o: {str(target)!r}: cannot create the output directory: {exc.strerror}") from exc
    old: Path | None = None
    try:
        os.chmod(tmp, 0o755)  # noqa: S103 - an output directory others read, like mkdir with umask 022
        for rel, text in sorted(texts.items()):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write_file(dest, text, 0o755 if rel.endswith(".sh") else 0o644)
        _write_file(tmp / MARKER, "meshbridge render output; replaced whole by the next render\n", 0o644)
        for d in sorted({(tmp / rel).parent for rel in texts} | {tmp}, reverse=True):
            _fsync_dir(d)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.rename(target, old / "previous")
        os.rename(tmp, target)
        _fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not target.exists() and (old / "previous").exists():
            os.rename(old / "previous", target)
        raise BridgeError(f"-o: {str(target)!r}: cannot write the output: {exc}") from exc
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return sorted(target / rel for rel in texts)
