"""Stand-in for SCONE CAS and SPIRE's SVIDStore plugin: rendered templates + a real SVID → session secrets.

On a cluster the SPIRE agent's ``sconecas_sessionmanager`` plugin fills the operator's session templates
with the workload's SVID by *text substitution* and posts them to CAS; the app's session imports the
secrets; after attestation CAS resolves ``$$SCONE::<secret>:<format>$$`` injections in the app's
environment and ``injection_files``. This module replays exactly that on one machine, from the rendered
templates and the app's rendered session, so a template or session that would not work on CAS (a secret
not exported to the app's session, an export not pinned to the session hash, a YAML-breaking template, an
unknown injection) fails the demo instead of being papered over.

Substitution follows the plugin's source (ufcg-lsd/spire ``pkg/agent/plugin/svidstore/sconecas/scone.go``):
PEM values have every newline followed by eight spaces (``pemToSconeInjectionFile``); the session name is
read from the template's first line starting with ``name:``; the bundle session keeps its literal name.
Injection formats (SCONE CAS session language 0.3, "Secret injection"): ``crt`` (the certificate),
``chain`` (the certificates after it, without the leaf), ``privatekey:pkcs8:pem`` (x509's private key, or
a private-key secret). Pure functions; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bridge.artifacts import session_name_of
from bridge.demo.errors import DemoError
from sds_server.x509svid import private_key_pem

PLACEHOLDER_SVID = "<\\svid>"
PLACEHOLDER_SVID_KEY = "<\\svid-key>"
PLACEHOLDER_SESSION_NAME = "<\\session-name-selector>"
PLACEHOLDER_SESSION_HASH = "<\\session-hash-selector>"
PLACEHOLDER_PREDECESSOR = "<\\predecessor>"
PLACEHOLDER_TRUST_BUNDLE = "<\\trust-bundle>"
PLACEHOLDER_TRUST_BUNDLE_SESSION = "<\\trust-bundle-session-name>"
PLACEHOLDER_FEDERATED_BUNDLES = "<\\federated-bundles>"
# tutorial plugin (scone_cas_secretsmanager): leaf only in <\svid>, intermediates apart, one bundle name
PLACEHOLDER_INTERMEDIATES = "<\\intermediate-svid-cas>"
PLACEHOLDER_TRUST_BUNDLE_CA = "<\\trust-bundle-ca>"

_INJECTION = re.compile(r"\$\$SCONE::([A-Za-z0-9_.\-]+)((?::[A-Za-z0-9_\-]+)*)\$\$")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Secret:
    """One CAS secret as the app's session sees it after imports are resolved."""

    name: str
    kind: str
    value: str
    private_key: str | None = None
    """Name of the private-key secret of an x509 secret (resolved in the same session)."""


@dataclass(frozen=True, slots=True)
class PostedSession:
    """A session as CAS would store it after the plugin posted it (parsed YAML)."""

    name: str
    document: Mapping[str, object]


def _indent_pem(pem: str) -> str:
    return "\n        ".join(pem.split("\n"))


def _session_name(template: str, *, what: str) -> str:
    """The session ``template`` posts (:func:`bridge.artifacts.session_name_of`); refused without one."""
    name = session_name_of(template)
    if name is None:
        raise DemoError(f"{what}: no top-level 'name:' line: the SVIDStore plugin cannot name the session")
    return name


def _load_session(text: str, *, what: str) -> Mapping[str, object]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DemoError(
            f"{what}: the filled template is not valid YAML (as CAS would reject it): {exc}"
        ) from exc
    if not isinstance(doc, dict):
        raise DemoError(f"{what}: the filled template is not a YAML mapping")
    return doc


def post_svid_session(
    template: str, *, svid_chain_pem: str, key_pem: str, session_name: str, session_hash: str
) -> PostedSession:
    """Fill the SVID template as the plugin does for an entry with these SVIDStore selectors."""
    name = _session_name(template, what="SVID session template").replace(
        PLACEHOLDER_SESSION_NAME, session_name
    )
    text = template.replace(PLACEHOLDER_PREDECESSOR, "~")
    if PLACEHOLDER_INTERMEDIATES in text:  # tutorial plugin: <\svid> is the leaf only
        end = "-----END CERTIFICATE-----\n"
        leaf, _, rest = svid_chain_pem.partition(end)
        text = text.replace(PLACEHOLDER_SVID, _indent_pem(leaf + end))
        text = text.replace(PLACEHOLDER_INTERMEDIATES, _indent_pem(rest))
    text = text.replace(PLACEHOLDER_SVID, _indent_pem(svid_chain_pem))
    text = text.replace(PLACEHOLDER_SVID_KEY, _indent_pem(key_pem))
    text = text.replace(PLACEHOLDER_SESSION_NAME, session_name)
    text = text.replace(PLACEHOLDER_SESSION_HASH, session_hash)
    return PostedSession(name=name, document=_load_session(text, what=f"SVID session {name!r}"))


def post_bundle_session(template: str, *, bundle_pem: str) -> PostedSession:
    """Fill the trust-bundle template (its name is literal: the plugin never substitutes it)."""
    name = _session_name(template, what="bundle session template")
    text = template.replace(PLACEHOLDER_PREDECESSOR, "~")
    text = text.replace(PLACEHOLDER_TRUST_BUNDLE_SESSION, name)
    text = text.replace(PLACEHOLDER_TRUST_BUNDLE, _indent_pem(bundle_pem))
    text = text.replace(PLACEHOLDER_TRUST_BUNDLE_CA, _indent_pem(bundle_pem))
    return PostedSession(name=name, document=_load_session(text, what=f"bundle session {name!r}"))


def post_federated_bundles_session(template: str, *, bundles_pem: str) -> PostedSession:
    """Fill the federated-bundles template with every bundle the entry federates with (literal name)."""
    if not bundles_pem:
        raise DemoError(
            "federated bundles session: the app's entry received no federated bundle (its SPIRE entry "
            "must federate with the mesh's trust domain): the session would import an empty CA list"
        )
    name = _session_name(template, what="federated bundles session template")
    text = template.replace(PLACEHOLDER_PREDECESSOR, "~")
    text = text.replace(PLACEHOLDER_FEDERATED_BUNDLES, _indent_pem(bundles_pem))
    return PostedSession(name=name, document=_load_session(text, what=f"federated bundles session {name!r}"))


def _secrets_of(doc: Mapping[str, object], *, what: str) -> list[Mapping[str, object]]:
    secrets = doc.get("secrets", [])
    if not isinstance(secrets, list) or not all(isinstance(s, dict) for s in secrets):
        raise DemoError(f"{what}.secrets: must be a list of mappings")
    return secrets


def _exported_to(secret: Mapping[str, object], session_name: str, session_hash: str) -> bool:
    """Whether CAS lets ``session_name`` (with ``session_hash``) import ``secret``.

    Export by name alone would let whoever claims that name take the key (SCONE docs, "Secret Sharing"),
    so an export to a session counts only when it pins ``session_hash``; ``export_public`` counts (bundles).
    """
    if secret.get("export_public") is True:
        return True
    exports = secret.get("export", [])
    if isinstance(exports, dict):
        exports = [exports]
    if not isinstance(exports, list):
        return False
    return any(
        isinstance(e, dict) and e.get("session") == session_name and e.get("session_hash") == session_hash
        for e in exports
    )


def resolve_imports(
    app_session: Mapping[str, object], posted: Mapping[str, PostedSession], *, session_hash: str
) -> dict[str, Secret]:
    """The app session's secrets with every ``import`` resolved against the posted sessions.

    An imported x509 secret brings its ``private_key`` secret along (CAS semantics), under the exporting
    session's name for it.
    """
    app_name = str(app_session.get("name", ""))
    out: dict[str, Secret] = {}
    for i, entry in enumerate(_secrets_of(app_session, what=f"session {app_name!r}")):
        where = f"session {app_name!r}.secrets[{i}]"
        local = str(entry.get("name", ""))
        imp = entry.get("import")
        if imp is None:
            value = entry.get("value")
            if isinstance(value, str):
                out[local] = Secret(local, str(entry.get("kind", "ascii")), value)
            continue
        if not isinstance(imp, dict):
            raise DemoError(f"{where}.import: {imp!r}: must be a mapping with 'session' and 'secret'")
        src_name, src_secret = str(imp.get("session", "")), str(imp.get("secret", local))
        source = posted.get(src_name)
        if source is None:
            raise DemoError(
                f"{where}.import.session: {src_name!r}: no such session was posted by the SVIDStore plugin "
                f"(posted: {sorted(posted)})"
            )
        found = {str(s.get("name")): s for s in _secrets_of(source.document, what=f"session {src_name!r}")}
        secret = found.get(src_secret)
        if secret is None:
            raise DemoError(f"{where}.import.secret: {src_secret!r}: session {src_name!r} has no such secret")
        if not _exported_to(secret, app_name, session_hash):
            raise DemoError(
                f"{where}: {src_secret!r} of {src_name!r} is not exported to {app_name!r} pinned to its "
                "session_hash: CAS refuses the import"
            )
        key_name = secret.get("private_key")
        if isinstance(key_name, str):
            key = found.get(key_name)
            if key is None or not isinstance(key.get("value"), str):
                raise DemoError(
                    f"session {src_name!r}: private_key {key_name!r} of {src_secret!r} is missing"
                )
            out[f"{local}\0key"] = Secret(key_name, "private-key", str(key["value"]))
        out[local] = Secret(
            local,
            str(secret.get("kind", "")),
            str(secret.get("value", "")),
            private_key=f"{local}\0key" if isinstance(key_name, str) else None,
        )
    return out


def _pem_certs(value: str, *, what: str) -> list[bytes]:
    certs = _PEM_CERT.findall(value.encode())
    if not certs:
        raise DemoError(f"{what}: holds no PEM certificate")
    for pem in certs:
        try:
            x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise DemoError(f"{what}: a certificate does not parse: {exc}") from exc
    return [c if c.endswith(b"\n") else c + b"\n" for c in certs]


def _pkcs8(value: str, *, what: str) -> str:
    try:
        key = serialization.load_pem_private_key(value.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise DemoError(f"{what}: not a PEM private key: {exc}") from exc
    return private_key_pem(key).decode()


def _render(secrets: Mapping[str, Secret], name: str, fmt: str, *, where: str) -> str:
    secret = secrets.get(name)
    if secret is None:
        raise DemoError(f"{where}: $$SCONE::{name}{fmt}$$: no secret {name!r} in the session")
    what = f"{where}: $$SCONE::{name}{fmt}$$"
    if fmt == ":crt" and secret.kind in ("x509", "x509-ca"):
        certs = _pem_certs(secret.value, what=what)
        return (certs[0] if secret.kind == "x509" else b"".join(certs)).decode()
    if fmt == ":chain" and secret.kind == "x509":
        return b"".join(_pem_certs(secret.value, what=what)[1:]).decode()
    if fmt == ":privatekey:pkcs8:pem":
        if secret.kind == "x509" and secret.private_key is not None:
            return _pkcs8(secrets[secret.private_key].value, what=what)
        if secret.kind == "private-key":
            return _pkcs8(secret.value, what=what)
    if fmt == "" and secret.kind in ("ascii", "binary"):
        return secret.value
    raise DemoError(f"{what}: format {fmt or '(none)'!r} not supported for a {secret.kind!r} secret")


def inject(text: str, secrets: Mapping[str, Secret], *, where: str) -> str:
    """Resolve every ``$$SCONE::<secret>:<format>$$`` in ``text`` as CAS does after attestation."""
    return _INJECTION.sub(lambda m: _render(secrets, m.group(1), m.group(2), where=where), text)
