"""Pieces shared by the app sessions: name checks, secret imports, attestation, injection strings.

Source: sconedocs ``7.0/CAS_session_lang_0_3`` — "Session Name" (``<namespace>/<name>``), "Secret
Sharing" (``import: {session, secret}``), "x509 and x509-ca" placeholders (``$$SCONE::<s>:crt$$``,
``:chain`` = intermediates up to the root *without* the certificate, ``:privatekey:pkcs8:pem``),
"Tolerating Hardware Attestation Issues" (``security.attestation.tolerate``/``ignore_advisories``).
"""

from __future__ import annotations

import re

from scone.model import Attestation, GhostunnelApp, NetworkShieldApp, RenderWarning, SvidStoreSessions
from scone.svidstore import FEDERATED_BUNDLES_SECRET, SESSION_NAME, SVID_SECRET, TRUST_BUNDLE_SECRET

__all__ = [
    "ADVISORY_CATEGORIES",
    "IDENTITY_PEM",
    "SVID_CERT_CHAIN_PEM",
    "SVID_KEY_PEM",
    "attestation_advice",
    "attestation_problems",
    "attestation_section",
    "check_common",
    "mesh_ca_secret",
    "server_ca_pem",
    "svid_imports",
]

SVID_KEY_PEM = f"$$SCONE::{SVID_SECRET}:privatekey:pkcs8:pem$$"
SVID_CERT_CHAIN_PEM = f"$$SCONE::{SVID_SECRET}:crt$$\n$$SCONE::{SVID_SECRET}:chain$$"
IDENTITY_PEM = f"{SVID_KEY_PEM}\n{SVID_CERT_CHAIN_PEM}"
"""Network-shield identity: PKCS#8 key, end-entity certificate, then the chain (shield docs)."""


def mesh_ca_secret(sessions: SvidStoreSessions) -> tuple[str, str]:
    """(session, secret) holding the mesh's CA: the bundle session when apps share the mesh's trust
    domain, the federated-bundles session when they have their own (their SPIRE's own bundle is then
    *their* CA, useless for authenticating a mesh service)."""
    if sessions.mesh_bundle_federated:
        return sessions.federated_bundles_session, FEDERATED_BUNDLES_SECRET
    return sessions.bundle_session, TRUST_BUNDLE_SECRET


def server_ca_pem(sessions: SvidStoreSessions) -> str:
    """The injection string of the mesh's CA certificates (what authenticates a mesh service).

    The plugin writes every CA of the bundle into the one ``value`` of the ``x509-ca`` secret
    (ufcg-lsd/spire ``pkg/agent/plugin/svidstore/sconecas/scone.go`` @76ebd5c4
    ``postBundleIntoCAS(svidData.Bundle, …)``; the bundle is ``rawCertToPem(req.Svid.Bundle)``, all X.509
    authorities concatenated). During a SPIRE CA rotation the bundle holds the old and the new CA. The
    sconedocs describe ``:crt`` as *the* certificate and ``:chain`` as the rest; how CAS stores a multi-CA
    ``x509-ca`` value is not documented. Unverified against a real CAS: if ``:crt`` yields only the first
    CA, apps trust only one CA during rotation (open item; the demo's CAS emulator assumes all).
    """
    return f"$$SCONE::{mesh_ca_secret(sessions)[1]}:crt$$"


_SERVICE = re.compile(r"^[A-Za-z0-9_-]+$")
_MRENCLAVE = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^0\.3(\.[0-9]+)?$")
_ADVISORY = re.compile(r"^(INTEL-SA-[0-9]{5}|\*)$")


def check_common(problems: list[str], app: NetworkShieldApp | GhostunnelApp) -> None:
    """Append the problems of fields every app session has."""
    if not SESSION_NAME.match(app.session_name) or len(app.session_name) > 128:
        problems.append(
            f"session_name: {app.session_name!r}: a CAS session name '<namespace>/<name>' "
            "([A-Za-z0-9_-] parts, at most 128 characters)"
        )
    if not app.mrenclaves:
        problems.append("mrenclaves: (): at least one MRENCLAVE (64 hex digits) allowed to run")
    for i, mre in enumerate(app.mrenclaves):
        if not _MRENCLAVE.match(mre):
            problems.append(f"mrenclaves[{i}]: {mre!r}: 64 lowercase hex digits")
    if not _VERSION.match(app.version):
        problems.append(f"version: {app.version!r}: a session language version 0.3[.N]")
    if not app.pwd.startswith("/"):
        problems.append(f"pwd: {app.pwd!r}: an absolute path")


def check_service_name(problems: list[str], path: str, name: str) -> None:
    """Append a problem if ``name`` is not a CAS service name."""
    if not _SERVICE.match(name):
        problems.append(f"{path}: {name!r}: a service name ([A-Za-z0-9_-])")


def svid_imports(app_session: str, sessions: SvidStoreSessions, *, bundle: bool) -> list[dict[str, object]]:
    """``secrets`` importing the SVID (its key comes with it) and, if asked, the mesh trust bundle."""
    out: list[dict[str, object]] = [
        {
            "name": SVID_SECRET,
            "import": {"session": sessions.svid_session(app_session), "secret": SVID_SECRET},
        },
    ]
    if bundle:
        session, secret = mesh_ca_secret(sessions)
        out.append({"name": secret, "import": {"session": session, "secret": secret}})
    return out


def attestation_section(
    attestation: Attestation, problems: list[str]
) -> tuple[dict[str, object] | None, list[RenderWarning]]:
    """``{"attestation": {...}}`` for ``security`` (``None`` when nothing is tolerated) and warnings."""
    warnings: list[RenderWarning] = []
    body: dict[str, object] = {}
    if attestation.tolerate:
        if len(set(attestation.tolerate)) != len(attestation.tolerate):
            problems.append(f"attestation.tolerate: {attestation.tolerate!r}: duplicates")
        body["tolerate"] = list(attestation.tolerate)
        if "debug-mode" in attestation.tolerate:
            warnings.append(
                RenderWarning(
                    "attestation.tolerate",
                    "debug-mode",
                    "a debug-mode enclave can be inspected by the host: its SVID key is not protected",
                )
            )
    advisories = attestation.ignore_advisories
    problems.extend(attestation_problems(attestation))
    warnings.extend(RenderWarning(*advice) for advice in attestation_advice(attestation))
    if advisories:
        for i, adv in enumerate(advisories):
            if not _ADVISORY.match(adv):
                problems.append(f"attestation.ignore_advisories[{i}]: {adv!r}: 'INTEL-SA-NNNNN' or '*'")
        if "*" in advisories:
            if len(advisories) != 1:
                problems.append(f"attestation.ignore_advisories: {advisories!r}: '*' stands alone")
            body["ignore_advisories"] = "*"
            warnings.append(
                RenderWarning(
                    "attestation.ignore_advisories",
                    "*",
                    "every Intel security advisory is ignored, including future ones",
                )
            )
        else:
            body["ignore_advisories"] = list(advisories)
    return ({"attestation": body} if body else None), warnings


ADVISORY_CATEGORIES = ("outdated-tcb", "software-hardening-needed", "insecure-configuration")
"""Tolerations that are *categories* of Intel advisories (sconedocs 7.0 ``CAS_session_lang_0_3``,
"Tolerating Hardware Attestation Issues": "This is a category for a collection of Intel SGX advisories,
which need to be specified separately"; "they and their associated category … need to be specified
explicitly"). Tolerating one without listing advisories tolerates nothing."""


def attestation_problems(attestation: Attestation) -> list[str]:
    """What CAS refuses or ignores in ``ignore_advisories`` (same rules for ``check`` and the renderer).

    * advisories without a category toleration: CAS needs the category too (docs, above);
    * ``"*"`` without ``debug-mode``: "wildcards cannot be used in (non-debug) production mode".
    """
    out: list[str] = []
    advisories = attestation.ignore_advisories
    if not advisories:
        return out
    if not any(c in attestation.tolerate for c in ADVISORY_CATEGORIES):
        out.append(
            f"attestation.ignore_advisories: {list(advisories)!r}: only with a toleration of their category "
            f"({', '.join(ADVISORY_CATEGORIES)}): CAS ignores an advisory only when its category is tolerated"
        )
    if "*" in advisories and "debug-mode" not in attestation.tolerate:
        out.append(
            "attestation.ignore_advisories: '*': only with tolerate debug-mode (CAS refuses the wildcard in "
            "production mode); list the INTEL-SA advisories you accept"
        )
    return out


def attestation_advice(attestation: Attestation) -> list[tuple[str, str, str]]:
    """(field, value, message) warnings: a category tolerated with no advisory listed."""
    if attestation.ignore_advisories:
        return []
    return [
        (
            "attestation.tolerate",
            c,
            f"tolerates {c} without ignore_advisories: CAS still refuses a platform flagged by any advisory "
            "of that category not listed in ignore_advisories; list the INTEL-SA advisories you accept "
            "(or drop the toleration)",
        )
        for c in attestation.tolerate
        if c in ADVISORY_CATEGORIES
    ]
