"""The result of rendering a bridge: relative path → document, plus warnings for the operator.

A :class:`Rendering` is an immutable :class:`~collections.abc.Mapping`; documents are plain data:

* ``dict`` - one YAML (``*.yaml``) or JSON (``*.json``) document;
* ``list`` of ``dict`` - a multi-document YAML stream (``---`` between documents);
* ``str`` - text written as is (shell scripts, HCL, Markdown, SVIDStore templates).

:mod:`bridge.writer` turns them into text and files; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

Document = dict[str, object] | list[dict[str, object]] | str


@dataclass(frozen=True, slots=True)
class Rendering(Mapping[str, Document]):
    """Every artifact of a bridge, by relative output path (POSIX separators), in a stable order."""

    documents: Mapping[str, Document]
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "documents", MappingProxyType(dict(self.documents)))

    def __getitem__(self, path: str) -> Document:
        return self.documents[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self.documents)

    def __len__(self) -> int:
        return len(self.documents)

    def yaml_documents(self, path: str) -> list[dict[str, object]]:
        """The document(s) at ``path`` as a list of mappings (one-document files give a one-item list)."""
        doc = self.documents[path]
        if isinstance(doc, str):
            raise TypeError(f"{path}: a text document, not YAML/JSON data")
        return doc if isinstance(doc, list) else [doc]

    def text(self, path: str) -> str:
        """The text document at ``path`` (scripts, HCL, README, SVIDStore templates)."""
        doc = self.documents[path]
        if not isinstance(doc, str):
            raise TypeError(f"{path}: structured data, not text; use yaml_documents()")
        return doc
