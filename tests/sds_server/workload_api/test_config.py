"""The config loader: the YAML contract, durations, unknown keys, and every problem reported at once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from sds_server.spiffe_id import SpiffeId, TrustDomain
from sds_server.workload_api.config import (
    SocketConfig,
    check_sockets,
    load_config,
    parse_config,
    parse_duration,
    parse_socket_mode,
)
from sds_server.workload_api.errors import ConfigError
from tests.support.pki import make_upstream


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "wl.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_full_contract_loads(tmp_path: Path) -> None:
    cert, _key = make_upstream(tmp_path)
    (tmp_path / "partner.pem").write_bytes(cert.read_bytes())
    path = _write(
        tmp_path,
        {
            "trust_domain": "example.org",
            "data_dir": "state",
            "svid_ttl": "10m",
            "jwt_svid_ttl": 120,
            "ca": {"key_type": "rsa-2048", "ttl": "48h", "upstream": {"cert": "up.pem", "key": "up.key"}},
            "sockets": [{"name": "mesh", "path": "/tmp/mesh.sock", "mode": "0660"}],
            "entries": [
                {
                    "spiffe_id": "spiffe://example.org/ns/default/sa/httpbin",
                    "selectors": ["unix:uid:1000", "socket:mesh"],
                    "ttl": "90s",
                    "dns_names": ["httpbin.default.svc.cluster.local"],
                    "hint": "internal",
                    "federates_with": ["partner.org"],
                }
            ],
            "federation": {"partner.org": "partner.pem"},
        },
    )
    config = load_config(path)
    assert config.trust_domain == TrustDomain.parse("example.org")
    assert config.data_dir == tmp_path / "state"
    assert config.svid_ttl == timedelta(minutes=10)
    assert config.jwt_svid_ttl == timedelta(seconds=120)
    assert config.ca.key_type == "rsa-2048"
    assert config.ca.ttl == timedelta(hours=48)
    assert config.ca.upstream is not None
    assert config.ca.upstream.cert == tmp_path / "up.pem"
    assert config.sockets[0].name == "mesh"
    assert config.sockets[0].mode == 0o660
    entry = config.entries[0]
    assert entry.spiffe_id == SpiffeId.parse("spiffe://example.org/ns/default/sa/httpbin")
    assert entry.selectors == frozenset({"unix:uid:1000", "socket:mesh"})
    assert entry.ttl == timedelta(seconds=90)
    assert entry.hint == "internal"
    assert entry.federates_with == (TrustDomain.parse("partner.org"),)
    assert config.federation[0].certificates[0].subject.rfc4514_string() == "CN=upstream root"
    assert config.source == path.resolve()


def test_defaults() -> None:
    config = parse_config({"trust_domain": "example.org"}, base=Path("/"))
    assert config.svid_ttl == timedelta(hours=1)
    assert config.jwt_svid_ttl == timedelta(minutes=5)
    assert config.ca.key_type == "ec-p256"
    assert config.ca.ttl == timedelta(hours=24)
    assert config.data_dir is None
    assert config.entries == ()
    assert config.sockets == ()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("2d", 172800), ("1h30m", 5400), (45, 45), ("45", 45)],
)
def test_durations(text: object, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "1x", "h", "-5s", 0, -1, True, 1.5, None, "1 h"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ConfigError, match="must be") as info:
        parse_duration(bad, path="svid_ttl")
    assert info.value.problems[0].startswith(f"svid_ttl: {bad!r}: must be")


@pytest.mark.parametrize(
    ("mode", "value"), [("0777", 0o777), ("660", 0o660), (0o600, 0o600), ("0o700", 0o700)]
)
def test_socket_modes(mode: object, value: int) -> None:
    assert parse_socket_mode(mode) == value


def test_every_problem_is_reported_at_once_with_its_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "trust_domain": "example.org",
            "svid_ttl": "soon",
            "colour": "blue",
            "ca": {"key_type": "dsa", "upstream": {"cert": "missing.pem", "key": "missing.key"}},
            "entries": [
                {"spiffe_id": "spiffe://example.org/ok", "selectors": ["unix:uid:1000"]},
                {"spiffe_id": "spiffe://example.org/x", "selectors": ["k8s:ns:default", "unix:uid:root"]},
                {"spiffe_id": "spiffe://example.org//a", "selectors": ["unix:uid:1"], "tll": "1h"},
                {"spiffe_id": "spiffe://other.org/a", "selectors": [], "federates_with": ["partner.org"]},
                {"spiffe_id": "spiffe://example.org/ok", "selectors": ["unix:uid:1000"]},
            ],
            "federation": {"Bad.Org": "x.pem"},
        },
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "colour: 'colour': unknown key (allowed: ca, data_dir, entries, federation, jwt_svid_ttl, sockets, "
        "svid_ttl, trust_domain)",
        "svid_ttl: 'soon': must be a duration like '90s', '10m', '1h' or integer seconds",
        "ca.key_type: 'dsa': must be one of ec-p256, rsa-2048",
        "ca.upstream.cert: 'missing.pem': file does not exist",
        "ca.upstream.key: 'missing.key': file does not exist",
        "federation.Bad.Org: 'Bad.Org': trust domain characters are limited to lowercase letters, digits, "
        "'.', '-' and '_' (found 'BO')",
        "entries[1].selectors[0]: 'k8s:ns:default': unknown selector type 'k8s': this server attests "
        "'unix:*' (SPIRE's unix workload attestor) and 'socket:<name>'",
        "entries[1].selectors[1]: 'unix:uid:root': 'unix:uid' takes a number",
        "entries[2].tll: 'tll': unknown key (allowed: dns_names, federates_with, hint, selectors, "
        "spiffe_id, ttl)",
        "entries[2].spiffe_id: 'spiffe://example.org//a': path cannot contain empty segments ('//')",
        "entries[3].spiffe_id: 'spiffe://other.org/a': must be in the trust domain 'example.org'",
        "entries[3].selectors: []: must be a non-empty list of selectors",
        "entries[3].federates_with[0]: 'partner.org': not a trust domain listed under 'federation'",
        "entries[4]: 'spiffe://example.org/ok': duplicates entries[0] (same SPIFFE ID and selectors)",
    ]
    assert str(info.value).startswith(f"{path}: 14 problems:\n  colour: ")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "trust_domain: [",
            "line 1, column 16: invalid YAML: expected the node content, but found '<stream end>'",
        ),
        ("- a\n- b\n", "<top>: 'list': the config must be a YAML mapping"),
        ("svid_ttl: 1h\n", "trust_domain: None: required"),
        (
            "trust_domain: spiffe://example.org/x\n",
            "trust_domain: 'spiffe://example.org/x': a trust domain ID has no path",
        ),
    ],
)
def test_file_level_problems(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert problem in info.value.problems


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read \(No such file or directory\)"):
        load_config(tmp_path / "nope.yaml")


def test_socket_checks(tmp_path: Path) -> None:
    doc = {
        "trust_domain": "example.org",
        "sockets": [{"name": "a", "path": "/tmp/a.sock"}],
        "entries": [{"spiffe_id": "spiffe://example.org/a", "selectors": ["socket:b"]}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base=tmp_path)
    assert info.value.problems == ["entries[0].selectors: 'socket:b': no socket named 'b' (sockets: a)"]
    # sockets from the command line replace the file's, and are what selectors are checked against
    config = parse_config(doc, base=tmp_path, sockets=[SocketConfig("b", Path("/tmp/b.sock"))])
    assert [s.name for s in config.sockets] == ["b"]
    check_sockets(config)
    with pytest.raises(ConfigError, match="no socket to serve"):
        check_sockets(parse_config({"trust_domain": "example.org"}, base=tmp_path))
    with pytest.raises(ConfigError, match=r"sockets\[0\].path: .*limited to 107 bytes"):
        parse_config(
            {"trust_domain": "example.org", "sockets": [{"name": "a", "path": "/" + "x" * 120}]},
            base=tmp_path,
        )
