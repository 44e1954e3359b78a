"""Name and value rules of every consumer of the bridge's output, in one place.

Each check returns ``None`` when the value is fine, or the rule it breaks in the consumer's own words, so
the spec loader can report ``<path>: <value!r>: <rule>`` for every problem at once.

Sources:

* Kubernetes ``k8s.io/apimachinery/pkg/util/validation``: ``IsDNS1123Label`` (namespaces, Istio
  revisions), ``IsDNS1035Label`` (Service names), ``IsDNS1123Subdomain`` (service accounts and other object
  names), ``IsQualifiedName`` (label keys), ``IsValidLabelValue``.
* SCONE CAS session language v0.3: session names ``[A-Za-z0-9_-]+`` segments joined by ``/`` (at most 128
  characters), service and secret names ``[A-Za-z0-9_-]+``; MRENCLAVE = SHA-256 of the enclave, 64 hex.
* Go's ``time.ParseDuration`` (Ghostunnel flags, SPIRE TTLs): ``1h30m``, ``45s``, ``500ms``.
"""

from __future__ import annotations

import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
SCONE_SESSION_NAME_MAX = 128

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_SCONE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_MRENCLAVE = re.compile(r"[0-9a-fA-F]{64}")
_DURATION = re.compile(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_HOST = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*")
_IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})")

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def dns1123_label(value: str) -> str | None:
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be at most {DNS1123_LABEL_MAX} characters (DNS-1123 label)"
    if not _DNS1123_LABEL.fullmatch(value):
        return (
            "must be a DNS-1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def dns1035_label(value: str) -> str | None:
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be at most {DNS1123_LABEL_MAX} characters (DNS-1035 label)"
    if not _DNS1035_LABEL.fullmatch(value):
        return (
            "must be a DNS-1035 label (Kubernetes Service name): lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"must be at most {DNS1123_SUBDOMAIN_MAX} characters (DNS-1123 subdomain)"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            "must be a DNS-1123 subdomain: dot-separated lowercase labels of letters, digits and '-', "
            "each starting and ending with a letter or digit"
        )
    return None


def label_key(value: str) -> str | None:
    """Kubernetes label key: ``[prefix/]name`` (``IsQualifiedName``)."""
    prefix, _, name = value.rpartition("/")
    if "/" in value and (not prefix or dns1123_subdomain(prefix) is not None):
        return "label key prefix must be a DNS-1123 subdomain (e.g. 'example.com/name')"
    if len(name) > LABEL_VALUE_MAX or not _QUALIFIED_NAME.fullmatch(name):
        return (
            "label key name must be at most 63 characters of letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value(value: str) -> str | None:
    if value == "":
        return None
    if len(value) > LABEL_VALUE_MAX or not _QUALIFIED_NAME.fullmatch(value):
        return (
            "label value must be empty or at most 63 characters of letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def scone_name(value: str) -> str | None:
    """A SCONE service, secret or CAS namespace name (one session-name segment)."""
    if not _SCONE_NAME.fullmatch(value):
        return "SCONE names are limited to letters, digits, '_' and '-'"
    return None


def scone_session_name(value: str) -> str | None:
    """A (possibly namespaced) SCONE session name ``seg/seg``."""
    if len(value) > SCONE_SESSION_NAME_MAX:
        return f"SCONE session names are at most {SCONE_SESSION_NAME_MAX} characters"
    if not all(_SCONE_NAME.fullmatch(part) for part in value.split("/")):
        return "SCONE session names are '/'-separated segments of letters, digits, '_' and '-'"
    return None


def mrenclave(value: str) -> str | None:
    if not _MRENCLAVE.fullmatch(value):
        return "MRENCLAVE must be 64 hexadecimal digits (SHA-256 of the enclave)"
    return None


def port(value: int) -> str | None:
    if not 1 <= value <= 65535:
        return "port must be between 1 and 65535"
    return None


def duration(value: str) -> str | None:
    """A Go ``time.ParseDuration`` string, positive."""
    if not _DURATION.fullmatch(value):
        return "must be a duration like '30s', '5m' or '1h30m' (units ns, us, ms, s, m, h)"
    if duration_seconds(value) <= 0:
        return "duration must be positive"
    return None


def duration_seconds(value: str) -> float:
    """Seconds in a duration already accepted by :func:`duration`."""
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))


def host_port(value: str, *, port_required: bool) -> str | None:
    """``host[:port]`` with a DNS name or IPv4 address (what CAS addresses and SPIRE settings take)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, ""
    if port_required and not port_text:
        return "must be host:port"
    if sep and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        return "port must be between 1 and 65535"
    ipv4 = _IPV4.fullmatch(host)
    if ipv4 and all(int(octet) <= 255 for octet in ipv4.groups()):
        return None
    if len(host) > DNS1123_SUBDOMAIN_MAX or not _HOST.fullmatch(host):
        return "host must be a DNS name or an IPv4 address"
    return None


def absolute_path(value: str) -> str | None:
    if not value.startswith("/"):
        return "must be an absolute path"
    if "\x00" in value or "\n" in value:
        return "path cannot contain NUL or newline characters"
    return None


def socket_in_directory(value: str) -> str | None:
    """A socket path inside a directory that can be mounted (the CSI volume), not ``/`` itself."""
    problem = absolute_path(value)
    if problem is not None:
        return problem
    directory, _, name = value.rpartition("/")
    if not directory or not name or any(c.isspace() for c in value):
        return "must be /<mount directory>/<socket file> without spaces (the directory is the CSI mount)"
    return None


def unix_address(value: str) -> str | None:
    """A ``unix:///absolute/path`` Workload API address (go-spiffe's form)."""
    if not value.startswith("unix:///"):
        return "must be 'unix:///absolute/path' (the Workload API socket address)"
    return absolute_path(value[len("unix://") :])


def image_reference(value: str) -> str | None:
    if not value or any(c.isspace() for c in value) or "{{" in value:
        return "must be a container image reference without spaces or '{{' (e.g. 'ghcr.io/org/img:1.0')"
    return None
