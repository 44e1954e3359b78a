"""The SVIDStore side: the SPIRE agent's plugin block and the three session templates it posts to CAS.

Sources (ufcg-lsd/spire):

* current plugin ``sconecas_sessionmanager``: ``doc/plugin_agent_svidstore_sconecas_sessionmanager.md``
  and ``pkg/agent/plugin/svidstore/sconecas/scone.go`` — HCL keys ``cas_connection_string``,
  ``cas_client_certificate``, ``cas_client_key``, ``trust_anchor_certificate``,
  ``insecure_skip_verify_tls``, ``cas_predecessor_dir``, ``svid_session_template_file``,
  ``bundle_session_template_file``, ``federated_bundles_session_template_file``; placeholders
  ``<\\svid-key>``, ``<\\session-name-selector>``, ``<\\session-hash-selector>``, ``<\\predecessor>``,
  ``<\\trust-bundle>`` (every CA of the bundle, concatenated), ``<\\federated-bundles>``, and the SVID:
  at 76ebd5c4 (newest) ``<\\svid>`` is the leaf only and ``<\\svid-intermediates>`` the rest of the
  chain (doc ``plugin_agent_svidstore_sconecas_sessionmanager.md`` @aff19e94: "SVID leaf certificate",
  "SVID intermediate certificates", example ``issuer: svid-intermediates``); at 354e6031 ``<\\svid>``
  is leaf + intermediates and there is no intermediates placeholder
  (``SvidStoreSessions.svid_intermediates`` picks the revision).
* tutorial plugin ``scone_cas_secretsmanager``: ``pkg/agent/plugin/svidstore/scone/scone.go`` (last
  version) — HCL keys ``cas_address``, ``cas_client_certificate``, ``cas_client_key``,
  ``cas_predecessor_dir``, ``svid_session_template_file``, ``ca_bundle_session_template_file``,
  ``federated_bundles_session_template_file``, ``trust_anchor_certificate``; placeholders ``<\\svid>``
  (leaf only), ``<\\svid-key>``, ``<\\intermediate-svid-cas>``, ``<\\session-name-selector>``,
  ``<\\session-hash-selector>``, ``<\\predecessor>``, ``<\\trust-bundle-ca>`` (bundle *and* federated).

How the plugins read a template (both): the session name is the text after ``name:`` on the first line
that *starts* with ``name:`` (so it must be first, unquoted, at column 0); the SVID session's name is
that line with ``<\\session-name-selector>`` replaced (the tutorial plugin keeps only the prefix before
the placeholder, so nothing may follow it); the predecessor is ``~`` the first time; PEM values are
substituted with every line break followed by 8 spaces (``pemToSconeInjectionFile``), so a PEM
placeholder must sit alone on a line indented by 8 spaces inside a ``|`` block scalar. In
``sconecas_sessionmanager`` the bundle session's name placeholder is replaced with the wrong constant,
so the bundle and federated-bundles templates carry literal names.

These templates are the one place where meshbridge writes YAML as text: the plugin substitutes text.
Every export is pinned with ``session_hash`` (SCONE "Secret Sharing": exporting to a session by name
lets whoever claims that name import the secret).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import yaml

from scone.errors import SconeError, raise_problems
from scone.model import RenderedText, RenderWarning, SvidStoreConfig, SvidStoreSessions

__all__ = [
    "FEDERATED_BUNDLES_SECRET",
    "SVID_INTERMEDIATES_SECRET",
    "SVID_KEY_SECRET",
    "SVID_SECRET",
    "TEMPLATE_FILES",
    "TRUST_BUNDLE_SECRET",
    "fill_template",
    "placeholder_names",
    "render_bundle_session_template",
    "render_federated_bundles_session_template",
    "render_svid_session_template",
    "render_svidstore_hcl",
]

# Names of CAS secrets (not secret values).
SVID_SECRET = "svid"  # noqa: S105
SVID_KEY_SECRET = "svid_key"  # noqa: S105
SVID_INTERMEDIATES_SECRET = "svid-intermediates"  # noqa: S105
TRUST_BUNDLE_SECRET = "spire-ca"  # noqa: S105
FEDERATED_BUNDLES_SECRET = "spire-federated-bundles"  # noqa: S105
TEMPLATE_VERSION = "0.3.10"  # namespaced session names need >= 0.3.5

TEMPLATE_FILES = {
    "svid": "svid-session.template",
    "bundle": "bundle-session.template",
    "federated_bundles": "federated-bundles-session.template",
}
"""File names of the three templates inside ``SvidStoreConfig.template_dir``."""

_PEM_INDENT = " " * 8  # pemToSconeInjectionFile: strings.Join(strings.Split(pem, "\n"), "\n        ")
SESSION_NAME = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
# Starts with a letter, ends with a separator: prefix + session name is never a YAML number/bool/null,
# and never equals the app's own session name.
_PREFIX = re.compile(r"^[A-Za-z]([A-Za-z0-9_-]*/)*[A-Za-z0-9_-]*[-_/]$")
_PLACEHOLDER = re.compile(r"<\\([a-z-]+)>")


def _ph(name: str) -> str:
    return f"<\\{name}>"


def _check_sessions(sessions: SvidStoreSessions) -> None:
    problems: list[str] = []
    if not _PREFIX.match(sessions.svid_session_prefix):
        problems.append(
            f"sessions.svid_session_prefix: {sessions.svid_session_prefix!r}: a letter, then letters, "
            "digits, '_', '-' or '/', ending with '-', '_' or '/' (e.g. 'spire-svid-')"
        )
    for field in ("bundle_session", "federated_bundles_session"):
        value = getattr(sessions, field)
        if not SESSION_NAME.match(value):
            problems.append(f"sessions.{field}: {value!r}: a CAS session name ([A-Za-z0-9_-] parts and '/')")
        elif yaml.safe_load(f"name: {value}") != {"name": value}:
            # the plugin reads the name from the unquoted `name:` line: it must read back as this string
            problems.append(f"sessions.{field}: {value!r}: YAML reads it as a non-string; pick another name")
    if sessions.bundle_session == sessions.federated_bundles_session:
        problems.append(
            f"sessions.federated_bundles_session: {sessions.federated_bundles_session!r}: "
            "must differ from bundle_session"
        )
    raise_problems(problems)


_EXPORT = (
    "export:",
    # quoted: a session name such as `0` or `yes` must stay a string after substitution
    f'  - session: "{_ph("session-name-selector")}"',
    f'    session_hash: "{_ph("session-hash-selector")}"',
)


def _secret(name: str, kind: str, placeholder: str, *attributes: str) -> list[str]:
    """One ``secrets[]`` item whose PEM ``value`` is the plugin's ``placeholder``."""
    return [
        f"  - name: {name}",
        f"    kind: {kind}",
        *(f"    {line}" for line in attributes),
        "    value: |",
        f"{_PEM_INDENT}{_ph(placeholder)}",
    ]


def _template(name: str, *secrets: list[str]) -> str:
    header = [
        f"name: {name}",
        f'version: "{TEMPLATE_VERSION}"',
        f"predecessor: {_ph('predecessor')}",
        "secrets:",
    ]
    return "\n".join(header + [line for secret in secrets for line in secret]) + "\n"


def render_svid_session_template(sessions: SvidStoreSessions) -> str:
    """The SVID session template: ``svid`` (x509) and ``svid_key``, both exported to the app's session
    pinned by its hash."""
    _check_sessions(sessions)
    split = sessions.plugin == "sconecas_sessionmanager" and sessions.svid_intermediates
    issuer = [f"issuer: {SVID_INTERMEDIATES_SECRET}"] if split else []
    secrets = [_secret(SVID_SECRET, "x509", "svid", f"private_key: {SVID_KEY_SECRET}", *issuer, *_EXPORT)]
    if split:
        # the newest plugin puts only the leaf in <\svid>: without this secret (and `issuer`)
        # SPIRE's intermediate under an UpstreamAuthority never reaches $$SCONE::svid:chain$$
        secrets.append(_secret(SVID_INTERMEDIATES_SECRET, "x509-ca", "svid-intermediates", *_EXPORT))
    secrets.append(_secret(SVID_KEY_SECRET, "private-key", "svid-key", *_EXPORT))
    return _template(f"{sessions.svid_session_prefix}{_ph('session-name-selector')}", *secrets)


def _bundle_template(sessions: SvidStoreSessions, name: str, secret: str, placeholder: str) -> str:
    """A CA bundle session template; ``placeholder`` is the current plugin's (the tutorial plugin has
    one, ``trust-bundle-ca``, for both bundles)."""
    _check_sessions(sessions)
    if sessions.plugin != "sconecas_sessionmanager":
        placeholder = "trust-bundle-ca"
    # CA certificates are public: export_public lets any session import them (no private key).
    return _template(name, _secret(secret, "x509-ca", placeholder, "export_public: true"))


def render_bundle_session_template(sessions: SvidStoreSessions) -> str:
    """The trust-bundle session template: ``spire-ca`` (x509-ca, ``export_public``), literal name."""
    return _bundle_template(sessions, sessions.bundle_session, TRUST_BUNDLE_SECRET, "trust-bundle")


def render_federated_bundles_session_template(sessions: SvidStoreSessions) -> str:
    """The federated-bundles session template: ``spire-federated-bundles``, literal name."""
    return _bundle_template(
        sessions, sessions.federated_bundles_session, FEDERATED_BUNDLES_SECRET, "federated-bundles"
    )


def _hcl_string(value: str, path: str) -> str:
    if not value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise SconeError(f"{path}: {value!r}: a non-empty string without control characters")
    # HCL (hashicorp/hcl v1, which the plugins decode with) reads JSON-style escapes in quoted strings.
    return json.dumps(value)


def render_svidstore_hcl(config: SvidStoreConfig) -> RenderedText:
    """The agent's ``SVIDStore "<plugin>" { plugin_data { … } }`` block (goes into ``plugins { }``)."""
    _check_sessions(config.sessions)
    plugin = config.sessions.plugin
    warnings: list[RenderWarning] = []
    if not config.cas_address.startswith("https://"):
        raise SconeError(
            f"cas_address: {config.cas_address!r}: an https:// URL of the CAS (e.g. https://cas:8081)"
        )
    tdir = config.template_dir.rstrip("/")
    if not tdir.startswith("/"):
        raise SconeError(f"template_dir: {config.template_dir!r}: an absolute directory path")
    current = plugin == "sconecas_sessionmanager"
    # the two plugins name two of these keys differently
    data: list[tuple[str, str | bool]] = [
        ("cas_connection_string" if current else "cas_address", config.cas_address),
        ("cas_client_certificate", config.cas_client_certificate),
        ("cas_client_key", config.cas_client_key),
        ("trust_anchor_certificate", config.trust_anchor_certificate),
        ("cas_predecessor_dir", config.cas_predecessor_dir),
        ("svid_session_template_file", f"{tdir}/{TEMPLATE_FILES['svid']}"),
        (
            "bundle_session_template_file" if current else "ca_bundle_session_template_file",
            f"{tdir}/{TEMPLATE_FILES['bundle']}",
        ),
        ("federated_bundles_session_template_file", f"{tdir}/{TEMPLATE_FILES['federated_bundles']}"),
    ]
    if not current:
        # scone.go (tutorial plugin) builds its TLS client with InsecureSkipVerify: true and the trust
        # anchor pool commented out: it does not authenticate CAS whatever the configuration says.
        warnings.append(
            RenderWarning(
                "sessions.plugin",
                plugin,
                "the tutorial plugin does not verify CAS's TLS certificate (InsecureSkipVerify is "
                "hard-coded); use sconecas_sessionmanager in production",
            )
        )
        if config.insecure_skip_verify_tls:
            raise SconeError(
                "insecure_skip_verify_tls: True: not a setting of scone_cas_secretsmanager "
                "(it never verifies)"
            )
    elif config.insecure_skip_verify_tls:
        data.append(("insecure_skip_verify_tls", True))
        warnings.append(
            RenderWarning(
                "insecure_skip_verify_tls",
                "true",
                "the agent posts SVID keys to any server claiming to be CAS; never in production",
            )
        )
    width = max(len(k) for k, _ in data)
    body = []
    for key, value in data:
        rendered = ("true" if value else "false") if isinstance(value, bool) else _hcl_string(value, key)
        body.append(f"        {key.ljust(width)} = {rendered}")
    text = "\n".join([f'SVIDStore "{plugin}" {{', "    plugin_data {", *body, "    }", "}"]) + "\n"
    return RenderedText(text, tuple(warnings))


def placeholder_names(template: str) -> frozenset[str]:
    """The plugin placeholders (``<\\name>`` -> ``name``) a template uses."""
    return frozenset(_PLACEHOLDER.findall(template))


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """Substitute placeholders the way the plugins do (tests, docs; the agent does this for real).

    Multi-line values (PEM) get every line break followed by 8 spaces, as ``pemToSconeInjectionFile``.
    Raises if a placeholder in the template has no value.
    """
    missing = sorted(placeholder_names(template) - set(values))
    if missing:
        raise SconeError(f"values: {missing!r}: no value for these placeholders")
    out = template
    for name, value in values.items():
        out = out.replace(_ph(name), value.replace("\n", "\n" + _PEM_INDENT))
    return out
