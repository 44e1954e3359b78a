"""The CAS / SVIDStore stand-in: templates filled like the plugin, imports checked like CAS."""

from __future__ import annotations

import pytest
from cryptography import x509

from bridge.demo.cas import inject, post_bundle_session, post_svid_session, resolve_imports
from bridge.demo.errors import DemoError
from tests.support.pki import MiniCa

SVID_TEMPLATE = """name: spire-svid-<\\session-name-selector>
version: "0.3.10"
predecessor: <\\predecessor>
secrets:
  - name: svid
    kind: x509
    value: |
        <\\svid>
    private_key: svid_key
    export:
      - session: <\\session-name-selector>
        session_hash: <\\session-hash-selector>
  - name: svid_key
    kind: private-key
    value: |
        <\\svid-key>
    export:
      - session: <\\session-name-selector>
        session_hash: <\\session-hash-selector>
"""

BUNDLE_TEMPLATE = """name: spire-ca-bundle
version: "0.3.10"
predecessor: <\\predecessor>
secrets:
  - name: spire-ca
    kind: x509-ca
    export_public: true
    value: |
        <\\trust-bundle>
"""

HASH = "a" * 64


def _app_session(export_hash_ok: bool = True) -> dict[str, object]:
    return {
        "name": "apps/client",
        "version": "0.3.10",
        "secrets": [
            {"name": "svid", "import": {"session": "spire-svid-apps/client", "secret": "svid"}},
            {"name": "spire-ca", "import": {"session": "spire-ca-bundle", "secret": "spire-ca"}},
        ],
    }


def _posted(ca: MiniCa, session_hash: str = HASH) -> dict[str, object]:
    leaf = ca.issue("spiffe://example.org/external/client")
    svid = post_svid_session(
        SVID_TEMPLATE,
        svid_chain_pem=leaf.cert_text,
        key_pem=leaf.key_text,
        session_name="apps/client",
        session_hash=session_hash,
    )
    bundle = post_bundle_session(BUNDLE_TEMPLATE, bundle_pem=ca.roots_text)
    return {"leaf": leaf, "sessions": {svid.name: svid, bundle.name: bundle}}


def test_identity_injection_resolves_to_the_svid_key_and_cert() -> None:
    ca = MiniCa.create()
    posted = _posted(ca)
    secrets = resolve_imports(_app_session(), posted["sessions"], session_hash=HASH)  # type: ignore[arg-type]
    text = inject(
        "$$SCONE::svid:privatekey:pkcs8:pem$$\n$$SCONE::svid:crt$$$$SCONE::svid:chain$$", secrets, where="env"
    )
    assert "BEGIN PRIVATE KEY" in text
    leaf = posted["leaf"]
    assert (
        x509.load_pem_x509_certificate(text.split("-----END PRIVATE KEY-----\n")[1].encode()).serial_number
        == leaf.serial
    )  # type: ignore[attr-defined]
    assert inject("$$SCONE::spire-ca:crt$$", secrets, where="env").strip() == ca.roots_text.strip()


def test_import_refused_when_export_is_not_pinned_to_the_app_session_hash() -> None:
    ca = MiniCa.create()
    posted = _posted(ca, session_hash="b" * 64)
    with pytest.raises(DemoError, match="not exported to 'apps/client' pinned to its session_hash"):
        resolve_imports(_app_session(), posted["sessions"], session_hash=HASH)  # type: ignore[arg-type]


def test_import_from_a_session_nobody_posted_fails() -> None:
    session = _app_session()
    session["secrets"] = [{"name": "svid", "import": {"session": "nope/svid", "secret": "svid"}}]
    with pytest.raises(DemoError, match="'nope/svid': no such session was posted"):
        resolve_imports(session, _posted(MiniCa.create())["sessions"], session_hash=HASH)  # type: ignore[arg-type]


def test_unknown_secret_or_format_fails() -> None:
    ca = MiniCa.create()
    secrets = resolve_imports(_app_session(), _posted(ca)["sessions"], session_hash=HASH)  # type: ignore[arg-type]
    with pytest.raises(DemoError, match="no secret 'svidd'"):
        inject("$$SCONE::svidd:crt$$", secrets, where="X")
    with pytest.raises(DemoError, match="format ':pem' not supported"):
        inject("$$SCONE::svid:pem$$", secrets, where="X")


def test_template_indented_wrongly_breaks_like_on_cas() -> None:
    bad = SVID_TEMPLATE.replace("        <\\svid>", "  <\\svid>")
    leaf = MiniCa.create().issue("spiffe://example.org/x")
    with pytest.raises(DemoError, match="not valid YAML"):
        post_svid_session(
            bad,
            svid_chain_pem=leaf.cert_text,
            key_pem=leaf.key_text,
            session_name="apps/client",
            session_hash=HASH,
        )
