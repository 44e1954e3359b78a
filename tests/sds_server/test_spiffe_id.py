"""Table tests pinning the SPIFFE ID parser's rules and whole error messages (SPIFFE-ID.md §2)."""

from __future__ import annotations

import pytest

from sds_server.errors import SpiffeIdError
from sds_server.spiffe_id import SpiffeId, TrustDomain

_SCHEME_RULE = "scheme must be 'spiffe' (IDs start with 'spiffe://')"


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://example.org/ns/default/sa/httpbin",
        "spiffe://example.org/external/scone-app",
        "spiffe://a-b_c.d/x.y/Z_9",
        "spiffe://1.2.3.4/ok",
        "spiffe://td/" + "a" * 2000,
    ],
)
def test_valid_ids_round_trip(value: str) -> None:
    sid = SpiffeId.parse(value)
    assert str(sid) == value
    assert SpiffeId.parse(str(sid)) == sid


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "'': SPIFFE ID cannot be empty"),
        ("http://example.org/a", "'http://example.org/a': " + _SCHEME_RULE),
        ("SPIFFE://example.org/a", "'SPIFFE://example.org/a': " + _SCHEME_RULE),
        ("spiffe:///a", "'spiffe:///a': trust domain is missing"),
        (
            "spiffe://Example.org/a",
            "'spiffe://Example.org/a': trust domain characters are limited to lowercase letters, "
            "digits, '.', '-' and '_' (found 'E')",
        ),
        (
            "spiffe://example.org:8080/a",
            "'spiffe://example.org:8080/a': trust domain cannot contain a port (':')",
        ),
        (
            "spiffe://u@example.org/a",
            "'spiffe://u@example.org/a': trust domain cannot contain user info ('@')",
        ),
        ("spiffe://example.org//a", "'spiffe://example.org//a': path cannot contain empty segments ('//')"),
        ("spiffe://example.org/a/", "'spiffe://example.org/a/': path cannot have a trailing '/'"),
        ("spiffe://example.org/./a", "'spiffe://example.org/./a': path cannot contain dot segments ('.')"),
        ("spiffe://example.org/a/..", "'spiffe://example.org/a/..': path cannot contain dot segments ('..')"),
        (
            "spiffe://example.org/a%20b",
            "'spiffe://example.org/a%20b': path segment characters are limited to "
            "letters, digits, '.', '-' and '_' (found '%')",
        ),
        (
            "spiffe://example.org/a?x=1",
            "'spiffe://example.org/a?x=1': SPIFFE ID cannot contain a query ('?')",
        ),
        ("spiffe://example.org/a#f", "'spiffe://example.org/a#f': SPIFFE ID cannot contain a fragment ('#')"),
        (
            "spiffe://example.org",
            "'spiffe://example.org': a workload SPIFFE ID needs a path (e.g. 'spiffe://td/ns/x/sa/y')",
        ),
    ],
)
def test_invalid_ids_name_rule_and_value(value: str, message: str) -> None:
    with pytest.raises(SpiffeIdError) as info:
        SpiffeId.parse(value)
    assert str(info.value) == message


def test_length_limit_is_2048_bytes() -> None:
    ok = "spiffe://td/" + "a" * (2048 - len("spiffe://td/"))
    assert str(SpiffeId.parse(ok)) == ok
    with pytest.raises(SpiffeIdError, match="longer than 2048 bytes"):
        SpiffeId.parse(ok + "a")


@pytest.mark.parametrize(
    ("value", "name"),
    [("example.org", "example.org"), ("spiffe://example.org", "example.org"), ("a_b-c.1", "a_b-c.1")],
)
def test_trust_domain_parse(value: str, name: str) -> None:
    td = TrustDomain.parse(value)
    assert td.name == name
    assert td.id == f"spiffe://{name}"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("spiffe://example.org/a", "'spiffe://example.org/a': a trust domain ID has no path"),
        ("https://example.org", "'https://example.org': scheme must be 'spiffe'"),
        ("", "'': trust domain is missing"),
        (
            "EXAMPLE",
            "'EXAMPLE': trust domain characters are limited to lowercase letters, digits, '.', '-' "
            "and '_' (found 'AELMPX')",
        ),
    ],
)
def test_trust_domain_errors(value: str, message: str) -> None:
    with pytest.raises(SpiffeIdError) as info:
        TrustDomain.parse(value)
    assert str(info.value) == message


def test_from_parts() -> None:
    sid = SpiffeId.from_parts("example.org", "ns", "default", "sa", "httpbin")
    assert str(sid) == "spiffe://example.org/ns/default/sa/httpbin"
    with pytest.raises(SpiffeIdError, match="empty segments"):
        SpiffeId.from_parts("example.org", "ns", "", "x")
