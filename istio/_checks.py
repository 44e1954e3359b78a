"""Name rules shared by the Istio/SPIRE renderers (Kubernetes apimachinery validation)."""

from __future__ import annotations

import re

from istio.model import MeshService

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # <= 63
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")  # <= 253
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Service names, <= 63
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")  # <= 63
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")  # <= 63
# SPIFFE trust domain names: lowercase letters, digits, '.', '-', '_' (SPIFFE-ID spec, 2.1)
TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
SPIFFE_ID = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


def is_label(value: str) -> bool:
    return len(value) <= 63 and bool(DNS1123_LABEL.match(value))


def is_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(DNS1123_SUBDOMAIN.match(value))


def label_key_ok(key: str) -> bool:
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.match(name))


def label_value_ok(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def check_service(problems: list[str], svc: MeshService, path: str = "service") -> None:
    """Append a ``path: value: rule`` line for every field of ``svc`` Kubernetes would refuse."""
    if len(svc.name) > 63 or not DNS1035_LABEL.match(svc.name):
        problems.append(f"{path}.name: {svc.name!r}: a Service name (DNS-1035 label: a-z, 0-9, '-')")
    if not is_label(svc.namespace):
        problems.append(f"{path}.namespace: {svc.namespace!r}: a namespace name (DNS-1123 label)")
    if not is_subdomain(svc.service_account):
        problems.append(f"{path}.service_account: {svc.service_account!r}: a DNS-1123 subdomain")
    if not 1 <= svc.port <= 65535:
        problems.append(f"{path}.port: {svc.port!r}: a TCP port 1-65535")
    if not svc.pod_labels:
        problems.append(
            f"{path}.pod_labels: {svc.pod_labels!r}: at least one label (an empty selector selects every pod)"
        )
    keys = [k for k, _ in svc.pod_labels]
    for key, value in svc.pod_labels:
        if not label_key_ok(key):
            problems.append(f"{path}.pod_labels[{key!r}]: {key!r}: a label key ([prefix/]name)")
        elif not label_value_ok(value):
            problems.append(f"{path}.pod_labels[{key!r}]: {value!r}: a label value (<= 63 of [A-Za-z0-9_.-])")
        if keys.count(key) > 1:
            problems.append(f"{path}.pod_labels[{key!r}]: {value!r}: label key given twice")
