"""Errors of the ``sds_server`` package.

Tree::

    SdsError                      base: anything this package raises on purpose
    ├── SpiffeIdError             a SPIFFE ID or trust domain breaks the SPIFFE ID standard
    ├── SvidError                 an X.509 document breaks the X509-SVID standard
    └── SdsConfigError            bad ``sds serve`` options

Every message reads ``<what>: <value!r>: <rule>`` so the user sees the field, the value and the rule.
"""

from __future__ import annotations


class SdsError(Exception):
    """Base of every error raised on purpose by ``sds_server``."""


class SpiffeIdError(SdsError):
    """A SPIFFE ID or trust domain is not valid per the SPIFFE ID standard (SPIFFE-ID.md)."""


class SvidError(SdsError):
    """An X.509 certificate is not a valid X509-SVID or SVID signing certificate (X509-SVID.md)."""


class SdsConfigError(SdsError):
    """Options given to the SDS server are invalid."""
