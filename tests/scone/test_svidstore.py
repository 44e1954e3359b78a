"""SVIDStore plugin side: the HCL block parses as HCL1 with the plugin's keys; the templates, filled the way
the plugin fills them, are valid CAS sessions (strict schema) with every export pinned by session hash."""

from __future__ import annotations

import re
from dataclasses import replace
from types import ModuleType

import pytest
import yaml

from scone import (
    TEMPLATE_FILES,
    SconeError,
    SvidStoreConfig,
    SvidStoreSessions,
    fill_template,
    placeholder_names,
    render_bundle_session_template,
    render_federated_bundles_session_template,
    render_svid_session_template,
    render_svidstore_hcl,
)
from scone.model import Attestation
from scone.session import attestation_advice, attestation_problems
from tests.support.pki import MiniCa
from tests.support.schemas import scone_problems

CONFIG = SvidStoreConfig(
    cas_address="https://cas.scone:8081",
    cas_client_certificate="/run/spire/cas/client.crt",
    cas_client_key="/run/spire/cas/client.key",
    trust_anchor_certificate="/run/spire/cas/trust-anchor.crt",
)
TUTORIAL = SvidStoreSessions(plugin="scone_cas_secretsmanager")
APP = "confidential-apps/mariadb-1"
APP_HASH = "03aa3f5e2779b625a455651b54866447f995a2970d164581b4073044435359ed"
PREDECESSOR = "a" * 64


@pytest.fixture(scope="module")
def hcl() -> ModuleType:
    """pyhcl: an HCL1 parser, as the plugins decode their config with hashicorp/hcl v1."""
    return pytest.importorskip("hcl", reason="pyhcl (test dependency) is not installed")


# The Go structs' `hcl:"…"` tags (ufcg-lsd/spire pkg/agent/plugin/svidstore/{sconecas,scone}/scone.go)
SESSIONMANAGER_KEYS = {
    "cas_connection_string",
    "cas_client_certificate",
    "cas_client_key",
    "cas_predecessor_dir",
    "svid_session_template_file",
    "bundle_session_template_file",
    "federated_bundles_session_template_file",
    "trust_anchor_certificate",
    "insecure_skip_verify_tls",
}
SECRETSMANAGER_KEYS = {
    "cas_address",
    "cas_client_certificate",
    "cas_client_key",
    "cas_predecessor_dir",
    "svid_session_template_file",
    "ca_bundle_session_template_file",
    "federated_bundles_session_template_file",
    "trust_anchor_certificate",
}


def _plugin_session_name(template: str) -> str:
    """getSessionNameFromTemplate: text after 'name:' on the first line starting with 'name:', trimmed."""
    for line in template.split("\n"):
        if line.startswith("name:"):
            return line.split("name:")[1].strip(" ")
    raise AssertionError("no name: line")


def test_hcl_current_plugin_parses_with_the_plugin_keys(hcl: ModuleType) -> None:
    rendered = render_svidstore_hcl(CONFIG)
    assert rendered.warnings == ()
    parsed = hcl.loads(rendered.text)
    data = parsed["SVIDStore"]["sconecas_sessionmanager"]["plugin_data"]
    assert set(data) <= SESSIONMANAGER_KEYS
    assert data == {
        "cas_connection_string": "https://cas.scone:8081",
        "cas_client_certificate": "/run/spire/cas/client.crt",
        "cas_client_key": "/run/spire/cas/client.key",
        "trust_anchor_certificate": "/run/spire/cas/trust-anchor.crt",
        # defaults on persistent storage: /run is wiped at boot (templates gone: the agent does not
        # start; predecessor hashes gone: the plugin can never update its sessions again)
        "cas_predecessor_dir": "/var/lib/spire/svidstore/predecessors",
        "svid_session_template_file": f"/var/lib/spire/svidstore/templates/{TEMPLATE_FILES['svid']}",
        "bundle_session_template_file": f"/var/lib/spire/svidstore/templates/{TEMPLATE_FILES['bundle']}",
        "federated_bundles_session_template_file": (
            f"/var/lib/spire/svidstore/templates/{TEMPLATE_FILES['federated_bundles']}"
        ),
    }


def test_hcl_insecure_skip_verify_is_a_warning(hcl: ModuleType) -> None:
    rendered = render_svidstore_hcl(replace(CONFIG, insecure_skip_verify_tls=True))
    data = hcl.loads(rendered.text)["SVIDStore"]["sconecas_sessionmanager"]["plugin_data"]
    assert data["insecure_skip_verify_tls"] is True
    (warning,) = rendered.warnings
    assert warning.path == "insecure_skip_verify_tls"
    assert "never in production" in str(warning)


def test_hcl_tutorial_plugin_uses_its_own_keys_and_warns(hcl: ModuleType) -> None:
    rendered = render_svidstore_hcl(replace(CONFIG, sessions=TUTORIAL, template_dir="/etc/spire/t/"))
    data = hcl.loads(rendered.text)["SVIDStore"]["scone_cas_secretsmanager"]["plugin_data"]
    assert set(data) == SECRETSMANAGER_KEYS
    assert data["cas_address"] == "https://cas.scone:8081"
    assert data["ca_bundle_session_template_file"] == f"/etc/spire/t/{TEMPLATE_FILES['bundle']}"
    (warning,) = rendered.warnings
    assert "InsecureSkipVerify" in warning.message


def test_hcl_escapes_strings(hcl: ModuleType) -> None:
    text = render_svidstore_hcl(replace(CONFIG, cas_client_key='/run/a "b"\\c.key')).text
    data = hcl.loads(text)["SVIDStore"]["sconecas_sessionmanager"]["plugin_data"]
    assert data["cas_client_key"] == '/run/a "b"\\c.key'


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (replace(CONFIG, cas_address="http://cas:8081"), "cas_address: 'http://cas:8081': an https:// URL"),
        (replace(CONFIG, cas_client_key="/a\nb"), "cas_client_key: '/a\\nb': a non-empty string"),
        (replace(CONFIG, template_dir="rel"), "template_dir: 'rel': an absolute directory path"),
        (
            replace(CONFIG, sessions=SvidStoreSessions(bundle_session="spire ca")),
            "sessions.bundle_session: 'spire ca'",
        ),
        (
            replace(CONFIG, sessions=TUTORIAL, insecure_skip_verify_tls=True),
            "insecure_skip_verify_tls: True: not a setting of scone_cas_secretsmanager",
        ),
    ],
)
def test_hcl_errors(config: SvidStoreConfig, message: str) -> None:
    with pytest.raises(SconeError) as excinfo:
        render_svidstore_hcl(config)
    assert message in str(excinfo.value)


@pytest.fixture(scope="module")
def pki() -> tuple[str, str, str]:
    ca = MiniCa.create()
    svid = ca.issue("spiffe://example.org/external/mariadb")
    return svid.cert_text, svid.key_text, ca.roots_text


@pytest.mark.parametrize("predecessor", ["~", PREDECESSOR])
def test_svid_template_filled_is_a_valid_session(pki: tuple[str, str, str], predecessor: str) -> None:
    cert, key, _ = pki
    sessions = SvidStoreSessions()
    template = render_svid_session_template(sessions)
    assert placeholder_names(template) == {
        "svid",
        "svid-key",
        "session-name-selector",
        "session-hash-selector",
        "predecessor",
    }
    filled = fill_template(
        template,
        {
            "svid": cert,
            "svid-key": key,
            "session-name-selector": APP,
            "session-hash-selector": APP_HASH,
            "predecessor": predecessor,
        },
    )
    session = yaml.safe_load(filled)
    assert scone_problems(session) == []
    # the plugin derives the session name from the filled name line; the app imports from that name
    assert session["name"] == _plugin_session_name(filled) == sessions.svid_session(APP)
    assert session["predecessor"] == (None if predecessor == "~" else predecessor)
    secrets = {s["name"]: s for s in session["secrets"]}
    assert secrets["svid"]["kind"] == "x509"
    assert secrets["svid"]["private_key"] == "svid_key"
    assert secrets["svid"]["value"] == cert  # PEM survives the plugin's 8-space indentation
    assert secrets["svid_key"]["kind"] == "private-key"
    assert secrets["svid_key"]["value"] == key
    for secret in session["secrets"]:
        assert secret["export"] == [{"session": APP, "session_hash": APP_HASH}]


def test_every_export_in_every_template_is_pinned_by_hash() -> None:
    for sessions in (SvidStoreSessions(), TUTORIAL):
        for render in (
            render_svid_session_template,
            render_bundle_session_template,
            render_federated_bundles_session_template,
        ):
            text = render(sessions)
            exports = re.findall(r"^(\s*)- session: (.*)\n\1  session_hash: (.*)$", text, re.MULTILINE)
            assert text.count("session:") == len(exports)  # no export without its hash
            assert all(h == '"<\\session-hash-selector>"' for _, _, h in exports)
            if render is render_svid_session_template:
                assert len(exports) == 2  # svid and svid_key
            else:
                assert "export_public: true" in text  # CA certificates only, no private key


def test_tutorial_svid_template_name_is_a_prefix_then_the_placeholder() -> None:
    # scone.go getSVIDSessionNameFromTemplate keeps only what precedes the placeholder
    text = render_svid_session_template(TUTORIAL)
    assert text.splitlines()[0] == "name: spire-svid-<\\session-name-selector>"


@pytest.mark.parametrize(
    ("sessions", "render", "placeholder", "secret", "name"),
    [
        (SvidStoreSessions(), render_bundle_session_template, "trust-bundle", "spire-ca", "spire-ca"),
        (
            SvidStoreSessions(),
            render_federated_bundles_session_template,
            "federated-bundles",
            "spire-federated-bundles",
            "spire-federated-bundles",
        ),
        (TUTORIAL, render_bundle_session_template, "trust-bundle-ca", "spire-ca", "spire-ca"),
        (
            TUTORIAL,
            render_federated_bundles_session_template,
            "trust-bundle-ca",
            "spire-federated-bundles",
            "spire-federated-bundles",
        ),
        (
            SvidStoreSessions(bundle_session="spire/ca", federated_bundles_session="spire/fed"),
            render_bundle_session_template,
            "trust-bundle",
            "spire-ca",
            "spire/ca",
        ),
    ],
)
def test_bundle_templates_have_literal_names_and_public_ca(
    pki: tuple[str, str, str],
    sessions: SvidStoreSessions,
    render: object,
    placeholder: str,
    secret: str,
    name: str,
) -> None:
    _, _, ca_pem = pki
    text = render(sessions)  # type: ignore[operator]
    assert placeholder_names(text) == {placeholder, "predecessor"}  # no name placeholder: literal name
    bundle = ca_pem + MiniCa.create().roots_text  # a bundle with two roots (rotation)
    session = yaml.safe_load(fill_template(text, {placeholder: bundle, "predecessor": "~"}))
    assert scone_problems(session) == []
    assert session["name"] == name == _plugin_session_name(text)
    (s,) = session["secrets"]
    assert s == {"name": secret, "kind": "x509-ca", "export_public": True, "value": bundle}


def test_fill_template_refuses_missing_values() -> None:
    with pytest.raises(SconeError, match=r"values: \['predecessor'\]: no value"):
        fill_template(render_bundle_session_template(SvidStoreSessions()), {"trust-bundle": "x"})


def test_newest_plugin_split_chain_gets_an_intermediates_secret_and_issuer() -> None:
    # ufcg-lsd/spire 76ebd5c4 sconecas/scone.go: <\svid> = leaf, <\svid-intermediates> = the rest
    sessions = SvidStoreSessions(svid_intermediates=True)
    template = render_svid_session_template(sessions)
    assert "svid-intermediates" in placeholder_names(template)
    filled = fill_template(
        template,
        {
            "svid": "LEAF\n",
            "svid-intermediates": "INTERMEDIATE\n",
            "svid-key": "KEY\n",
            "session-name-selector": "ns/app",
            "session-hash-selector": "ab" * 32,
            "predecessor": "~",
        },
    )
    doc = yaml.safe_load(filled)
    by_name = {s["name"]: s for s in doc["secrets"]}
    assert by_name["svid"]["issuer"] == "svid-intermediates"
    assert by_name["svid"]["value"].strip() == "LEAF"
    inter = by_name["svid-intermediates"]
    assert inter["kind"] == "x509-ca"
    assert inter["value"].strip() == "INTERMEDIATE"
    assert inter["export"] == [{"session": "ns/app", "session_hash": "ab" * 32}]


def test_older_plugin_and_tutorial_plugin_have_no_intermediates_placeholder() -> None:
    for sessions in (
        SvidStoreSessions(),
        SvidStoreSessions(plugin="scone_cas_secretsmanager", svid_intermediates=True),
    ):
        assert "svid-intermediates" not in placeholder_names(render_svid_session_template(sessions))


def test_attestation_rules_follow_the_cas_docs() -> None:
    # sconedocs "Tolerating Hardware Attestation Issues": advisories need their category tolerated
    assert attestation_problems(Attestation(ignore_advisories=("INTEL-SA-00615",)))
    for category in ("outdated-tcb", "software-hardening-needed", "insecure-configuration"):
        ok = Attestation(tolerate=(category,), ignore_advisories=("INTEL-SA-00615",))
        assert attestation_problems(ok) == []
        assert attestation_advice(ok) == []
        assert [a[1] for a in attestation_advice(Attestation(tolerate=(category,)))] == [category]
    # "wildcards cannot be used in (non-debug) production mode"
    assert attestation_problems(Attestation(tolerate=("outdated-tcb",), ignore_advisories=("*",)))
    assert not attestation_problems(
        Attestation(tolerate=("debug-mode", "outdated-tcb"), ignore_advisories=("*",))
    )
