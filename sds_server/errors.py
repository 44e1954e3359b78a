"""Errors of the ``sds_server`` package.

Tree::

    SdsError                      base: anything this package raises on purpose
    ├── SpiffeIdError             a SPIFFE ID or trust domain breaks the SPIFFE ID standard
    ├── SvidError                 an X.509 document breaks the X509-SVID standard
    ├── SdsConfigError            bad ``sds serve`` options; ``problems`` lists each one
    ├── WorkloadApiCallError      a Workload API call failed (``code``: gRPC status name)
    ├── WorkloadApiResponseError  a Workload API response breaks the X509-SVID profile
    └── WorkloadApiError          (sds_server.workload_api.errors) the embedded Workload API's own tree

Every message reads ``<what>: <value!r>: <rule>`` so the user sees the field, the value and the rule.
Configuration errors carry ``problems: list[str]`` (one ``<what>: <value!r>: <rule>`` line each), as
``bridge.errors.SpecError`` does.
"""

from __future__ import annotations

from collections.abc import Sequence


class SdsError(Exception):
    """Base of every error raised on purpose by ``sds_server``."""


class SpiffeIdError(SdsError):
    """A SPIFFE ID or trust domain is not valid per the SPIFFE ID standard (SPIFFE-ID.md)."""


class SvidError(SdsError):
    """An X.509 certificate is not a valid X509-SVID or SVID signing certificate (X509-SVID.md)."""


class SdsConfigError(SdsError):
    """Options given to the SDS server are invalid. ``problems`` lists every ``what: value: rule`` line;
    the message is those lines joined (one problem: that line)."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class WorkloadApiCallError(SdsError):
    """A Workload API call failed or its stream broke; ``code`` is the gRPC status name.

    ``PERMISSION_DENIED`` means the Workload API has no identity for this caller (no registration
    entry); ``UNAVAILABLE`` covers a socket that cannot be reached and a connection that is lost.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"workload_api: {code!r}: {message}")
        self.code = code
        self.detail = message


class WorkloadApiResponseError(SdsError):
    """A Workload API response breaks the X.509-SVID profile (bad DER, bad key, bad SPIFFE ID, …)."""
