"""SPIFFE IDs and trust domains, parsed and validated per the SPIFFE ID standard.

Source: spiffe/spiffe ``standards/SPIFFE-ID.md``:

* §2 "SPIFFE Identity": ``spiffe://<trust domain>/<path>``; the scheme is exactly ``spiffe``.
* §2.1 "Trust Domain": lowercase letters, digits, ``.``, ``-`` and ``_`` only; no port, no user info.
* §2.2 "Path": segments of letters, digits, ``.``, ``-``, ``_``; no empty, ``.`` or ``..`` segment and
  no trailing ``/``.
* §2.3 "Maximum SPIFFE ID Length": URIs up to 2048 bytes SHOULD be accepted, longer ones MAY be refused;
  we refuse them so every consumer (SPIRE, Envoy, CAS) agrees.
* §2: no query or fragment.

py-spiffe's ``SpiffeId`` implements the same grammar; we keep our own parser because our errors must
name the rule *and* the offending value (py-spiffe's do not carry the value) and because we enforce the
length limit. ``tests/sds_server/workload_api/test_spiffe_id_fuzz.py`` checks both parsers agree on
generated inputs (py-spiffe lowercases an upper-case scheme/trust domain; we refuse it, as go-spiffe does).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from sds_server.errors import SpiffeIdError

SCHEME_PREFIX = "spiffe://"
MAX_SPIFFE_ID_BYTES = 2048

_TD_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_PATH_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")
_ALLOWED = "letters, digits, '.', '-' and '_'"


def _fail(value: str, rule: str) -> SpiffeIdError:
    return SpiffeIdError(f"{value!r}: {rule}")


def _check_chars(part: str, allowed: frozenset[str], original: str, rule: str) -> None:
    bad = sorted({c for c in part if c not in allowed})
    if bad:
        raise _fail(original, f"{rule} (found {''.join(bad)!r})")


def _check_trust_domain_name(name: str, original: str) -> None:
    if not name:
        raise _fail(original, "trust domain is missing")
    if "@" in name:
        raise _fail(original, "trust domain cannot contain user info ('@')")
    if ":" in name:
        raise _fail(original, "trust domain cannot contain a port (':')")
    _check_chars(name, _TD_CHARS, original, f"trust domain characters are limited to lowercase {_ALLOWED}")


def _check_path(path: str, original: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise _fail(original, "path must start with '/'")
    if path.endswith("/"):
        raise _fail(original, "path cannot have a trailing '/'")
    for segment in path[1:].split("/"):
        if segment == "":
            raise _fail(original, "path cannot contain empty segments ('//')")
        if segment in (".", ".."):
            raise _fail(original, f"path cannot contain dot segments ({segment!r})")
        _check_chars(segment, _PATH_CHARS, original, f"path segment characters are limited to {_ALLOWED}")


@dataclass(frozen=True, slots=True, order=True)
class TrustDomain:
    """A SPIFFE trust domain name, e.g. ``example.org`` (SPIFFE-ID.md §2.1)."""

    name: str

    @classmethod
    def parse(cls, value: str) -> TrustDomain:
        """Accept ``example.org`` or ``spiffe://example.org`` (the trust domain's own ID)."""
        if not isinstance(value, str):
            raise SpiffeIdError(f"{value!r}: trust domain must be a string")
        if value.startswith(SCHEME_PREFIX):
            sid = SpiffeId.parse(value, allow_empty_path=True)
            if sid.path:
                raise _fail(value, "a trust domain ID has no path")
            return sid.trust_domain
        if "://" in value:
            raise _fail(value, "scheme must be 'spiffe'")
        _check_trust_domain_name(value, value)
        return cls(value)

    @property
    def id(self) -> str:
        """The trust domain's SPIFFE ID, ``spiffe://<name>``."""
        return SCHEME_PREFIX + self.name

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A parsed SPIFFE ID. ``str()`` gives back the canonical URI (comparison is exact, §2.2)."""

    trust_domain: TrustDomain
    path: str

    @classmethod
    def parse(cls, value: str, *, allow_empty_path: bool = False) -> SpiffeId:
        """Parse ``value``; raise :class:`SpiffeIdError` naming the rule and the value on failure.

        A workload's ID has a non-empty path; ``allow_empty_path`` admits the trust domain's own ID.
        """
        if not isinstance(value, str):
            raise SpiffeIdError(f"{value!r}: SPIFFE ID must be a string")
        if not value:
            raise _fail(value, "SPIFFE ID cannot be empty")
        if len(value.encode("utf-8")) > MAX_SPIFFE_ID_BYTES:
            raise _fail(value[:64] + "...", f"SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes")
        if not value.startswith(SCHEME_PREFIX):
            raise _fail(value, "scheme must be 'spiffe' (IDs start with 'spiffe://')")
        rest = value[len(SCHEME_PREFIX) :]
        if "?" in rest:
            raise _fail(value, "SPIFFE ID cannot contain a query ('?')")
        if "#" in rest:
            raise _fail(value, "SPIFFE ID cannot contain a fragment ('#')")
        slash = rest.find("/")
        td, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        _check_trust_domain_name(td, value)
        _check_path(path, value)
        if not path and not allow_empty_path:
            raise _fail(value, "a workload SPIFFE ID needs a path (e.g. 'spiffe://td/ns/x/sa/y')")
        return cls(TrustDomain(td), path)

    @classmethod
    def from_parts(cls, trust_domain: TrustDomain | str, *segments: str) -> SpiffeId:
        """Build ``spiffe://<td>/<seg>/<seg>…``, validating every part."""
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain.parse(trust_domain)
        return cls.parse(SCHEME_PREFIX + td.name + "".join("/" + s for s in segments))

    def __str__(self) -> str:
        return SCHEME_PREFIX + self.trust_domain.name + self.path
