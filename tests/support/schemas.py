"""Validate rendered documents against the real schemas in ``shared/schemas`` — in *strict* mode.

Strict mode (``shared/schemas/README.md``): every object schema that lists ``properties`` and neither sets
``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields: true`` gets
``additionalProperties: false``, because the API server (kubectl ``--validate=strict``) rejects unknown
fields and istioctl/CAS silently ignore or reject them. Plain JSON Schema would accept ``spec.mtls.mood``.

Usage::

    from tests.support.schemas import validate, validate_scone_session, problems
    validate(doc)                      # Kubernetes/Istio/SPIRE document: schema from apiVersion + kind
    validate_scone_session(session)    # SCONE CAS session (scone_session_v0.3.json)
    assert problems(doc) == []         # all errors as 'path: message' strings instead of the first one

The schema folder is ``$MESHBRIDGE_SCHEMAS`` or ``shared/schemas`` beside the repository checkout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

__all__ = [
    "SCHEMAS_DIR",
    "SCONE_SESSION_SCHEMA",
    "k8s_schema_path",
    "problems",
    "scone_problems",
    "strict",
    "validate",
    "validate_scone_session",
]


def _schemas_dir() -> Path:
    env = os.environ.get("MESHBRIDGE_SCHEMAS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo.parent / "shared" / "schemas", repo / "shared" / "schemas"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "schemas"


SCHEMAS_DIR = _schemas_dir()
SCONE_SESSION_SCHEMA = "scone_session_v0.3.json"

_COMBINATORS = ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf")


def strict(schema: Any) -> Any:
    """A copy of ``schema`` with unknown properties forbidden wherever upstream does not preserve them."""
    if isinstance(schema, list):
        return [strict(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "definitions", "$defs", "patternProperties") and isinstance(value, dict):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in _COMBINATORS:
            out[key] = strict(value)
        else:
            out[key] = value
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def k8s_schema_path(api_version: str, kind: str) -> Path:
    """``shared/schemas/<group>_<Kind>_<version>.json`` for a document's apiVersion and kind."""
    group, sep, version = api_version.rpartition("/")
    if not sep or not group:
        raise ValueError(
            f"apiVersion {api_version!r}: expected '<group>/<version>' (core kinds have no schema here)"
        )
    path = SCHEMAS_DIR / f"{group}_{kind}_{version}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no schema for {api_version} {kind}: {path} does not exist")
    return path


@cache
def _validator(path: Path, strict_mode: bool) -> jsonschema.Draft7Validator:
    schema = json.loads(path.read_text())
    if strict_mode:
        schema = strict(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _k8s_validator(doc: Mapping[str, Any], strict_mode: bool) -> jsonschema.Draft7Validator:
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise ValueError(f"document without apiVersion/kind: {dict(doc)!r:.200}")
    return _validator(k8s_schema_path(api_version, kind), strict_mode)


def _format(errors: list[jsonschema.ValidationError]) -> list[str]:
    return sorted(f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors)


def validate(doc: Mapping[str, Any], *, strict_mode: bool = True) -> None:
    """Raise ``jsonschema.ValidationError`` unless the Kubernetes-style ``doc`` is valid."""
    _k8s_validator(doc, strict_mode).validate(doc)


def problems(doc: Mapping[str, Any], *, strict_mode: bool = True) -> list[str]:
    """Every schema violation of ``doc`` as ``'json/path: message'`` (empty when valid)."""
    return _format(list(_k8s_validator(doc, strict_mode).iter_errors(doc)))


def validate_scone_session(session: Mapping[str, Any], *, strict_mode: bool = True) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``session`` is a valid CAS session (v0.3)."""
    _validator(SCHEMAS_DIR / SCONE_SESSION_SCHEMA, strict_mode).validate(session)


def scone_problems(session: Mapping[str, Any], *, strict_mode: bool = True) -> list[str]:
    """Every schema violation of a CAS session as ``'json/path: message'`` (empty when valid)."""
    return _format(list(_validator(SCHEMAS_DIR / SCONE_SESSION_SCHEMA, strict_mode).iter_errors(session)))
