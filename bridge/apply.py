"""``meshbridge apply`` / ``diff``: the Kubernetes objects a bridge renders, server-side applied.

What is applied: every YAML/JSON document of the rendering that is a Kubernetes object (``apiVersion``,
``kind``, ``metadata.name``) — today ``istio/peer-authentication.yaml``,
``istio/authorization-policies.yaml``, ``spire/cluster-spiffeids.yaml`` and, with federation,
``spire/cluster-federated-trust-domains.yaml``. The ``IstioOperator`` is not:
it is input to ``istioctl install -f``, which has no API server object behind it; :class:`Plan` lists it
in ``not_applied`` and the CLI says so. SCONE sessions, SPIRE entries and templates are not Kubernetes
objects.

Every applied object carries three labels::

    app.kubernetes.io/managed-by: meshbridge     who applied it
    meshbridge.io/bridge: <trust domain>         which bridge (one bridge per trust domain and cluster)
    meshbridge.io/spec-hash: <40 hex digits>     sha256 of the spec file's bytes, first 40 digits
                                                 (``sha256sum bridge.yaml | cut -c1-40``)

Server-side apply with field manager ``meshbridge`` (:data:`bridge.kube.FIELD_MANAGER`). ``--prune``
deletes objects of the kinds meshbridge renders (:data:`PRUNABLE`) that carry the first two labels with
this bridge's value and are not in the rendering: what meshbridge applied earlier for this bridge and the
spec no longer renders, nothing else. Before anything is written, every kind is looked up in the cluster's
discovery; kinds it does not serve are reported together as one :class:`~bridge.kube.KindsMissing`
naming what to install (:data:`INSTALL_HINTS`).

Planning (:func:`plan`) is pure; :func:`apply` and :func:`diff` do cluster I/O only through
:class:`bridge.kube.Cluster`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bridge import artifacts
from bridge.kube import Cluster, KindsMissing, ObjectRef
from bridge.rendering import Rendering
from bridge.writer import dumps

__all__ = [
    "BRIDGE_LABEL",
    "INSTALL_HINTS",
    "MANAGED_BY_LABEL",
    "PRUNABLE",
    "SPEC_HASH_LABEL",
    "Change",
    "Difference",
    "Plan",
    "apply",
    "bridge_label_value",
    "diff",
    "plan",
    "spec_hash",
]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
BRIDGE_LABEL = "meshbridge.io/bridge"
SPEC_HASH_LABEL = "meshbridge.io/spec-hash"
MANAGER = "meshbridge"

NOT_APPLIED_KINDS: Mapping[str, str] = {
    "IstioOperator": "it is for 'istioctl install -f {path}' (no API server object behind it)",
}

PRUNABLE: tuple[tuple[str, str], ...] = (
    ("security.istio.io/v1", "PeerAuthentication"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID"),
    ("spire.spiffe.io/v1alpha1", "ClusterFederatedTrustDomain"),
)
"""Every kind meshbridge renders for the API server: ``--prune`` looks for stale objects of these."""

INSTALL_HINTS: Mapping[str, str] = {
    "security.istio.io": "Istio's CRDs: istioctl install -f istio/istio-operator.yaml",
    "spire.spiffe.io": (
        "the SPIRE controller manager's CRDs: helm upgrade --install -n spire-server spire-crds spire-crds "
        "--repo https://spiffe.github.io/helm-charts-hardened/ --create-namespace"
    ),
}

_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)$")
_VOLATILE_METADATA = (
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
)


def spec_hash(source: bytes) -> str:
    """The ``meshbridge.io/spec-hash`` label value: first 40 hex digits of the spec's sha256."""
    return hashlib.sha256(source).hexdigest()[:40]


def bridge_label_value(trust_domain: str) -> str:
    """The ``meshbridge.io/bridge`` value: the trust domain, or ``td-<hash>`` if it is no label value."""
    if _LABEL_VALUE.match(trust_domain):
        return trust_domain
    return "td-" + hashlib.sha256(trust_domain.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Plan:
    """What apply sends: labelled objects in rendering order, and what it leaves to other tools."""

    objects: tuple[dict[str, Any], ...]
    not_applied: tuple[str, ...]
    """One sentence per document that is not applied, naming its path and why."""
    bridge: str
    spec_hash: str

    @property
    def selector(self) -> str:
        """Label selector of every object meshbridge applied for this bridge (any spec version)."""
        return f"{MANAGED_BY_LABEL}={MANAGER},{BRIDGE_LABEL}={self.bridge}"

    def kinds(self) -> list[tuple[str, str]]:
        """``(apiVersion, kind)`` of the objects, first occurrence order."""
        return list(dict.fromkeys((str(o["apiVersion"]), str(o["kind"])) for o in self.objects))


def _is_object(doc: Mapping[str, object]) -> bool:
    meta = doc.get("metadata")
    return (
        isinstance(doc.get("apiVersion"), str)
        and isinstance(doc.get("kind"), str)
        and isinstance(meta, dict)
        and isinstance(meta.get("name"), str)
    )


def plan(rendering: Rendering, *, trust_domain: str, source: bytes) -> Plan:
    """The objects of ``rendering`` to apply, each with meshbridge's labels. Pure."""
    bridge = bridge_label_value(trust_domain)
    digest = spec_hash(source)
    labels = {MANAGED_BY_LABEL: MANAGER, BRIDGE_LABEL: bridge, SPEC_HASH_LABEL: digest}
    objects: list[dict[str, Any]] = []
    not_applied: list[str] = []
    for path, doc in artifacts.documents(rendering):
        if not _is_object(doc):
            continue
        obj: dict[str, Any] = copy.deepcopy(dict(doc))
        kind = str(obj["kind"])
        meta: dict[str, Any] = obj["metadata"]
        if kind in NOT_APPLIED_KINDS:
            why = NOT_APPLIED_KINDS[kind].format(path=path)
            not_applied.append(f"{path}: {kind} {meta['name']} is not applied: {why}")
            continue
        meta["labels"] = {**(meta.get("labels") or {}), **labels}
        objects.append(obj)
    return Plan(tuple(objects), tuple(not_applied), bridge, digest)


def _missing_kinds(cluster: Cluster, kinds: Iterable[tuple[str, str]]) -> None:
    missing = [(v, k) for v, k in kinds if not cluster.serves(v, k)]
    if not missing:
        return
    names = ", ".join(f"{k} ({v})" for v, k in missing)
    groups = list(dict.fromkeys(v.rpartition("/")[0] for v, _ in missing))
    hints = "; ".join(INSTALL_HINTS.get(g, f"the CRDs of {g}") for g in groups)
    raise KindsMissing(missing, f"{cluster.server}: the cluster does not serve {names}: install {hints}")


def _normal(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """``obj`` without what the server changes on every write (and without ``status``)."""
    if obj is None:
        return {}
    out = copy.deepcopy(dict(obj))
    out.pop("status", None)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        for key in _VOLATILE_METADATA:
            meta.pop(key, None)
        if not meta.get("annotations"):
            meta.pop("annotations", None)
    return out


Action = Literal["created", "configured", "unchanged", "pruned"]


@dataclass(frozen=True, slots=True)
class Change:
    """What :func:`apply` did (or would do, in a dry run) to one object."""

    ref: ObjectRef
    action: Action

    def __str__(self) -> str:
        return f"{self.ref} {self.action}"


def _stale(cluster: Cluster, p: Plan) -> list[dict[str, Any]]:
    planned = {ObjectRef.of(o) for o in p.objects}
    kinds = dict.fromkeys([*PRUNABLE, *p.kinds()])
    out: list[dict[str, Any]] = []
    seen: set[ObjectRef] = set()
    for api_version, kind in kinds:
        if not cluster.serves(api_version, kind):
            continue
        for live in cluster.list(api_version, kind, p.selector):
            ref = ObjectRef.of(live)
            if ref not in planned and ref not in seen:
                seen.add(ref)
                out.append(live)
    return sorted(out, key=ObjectRef.of)


def apply(
    cluster: Cluster, p: Plan, *, dry_run: bool = False, prune: bool = False, force: bool = False
) -> list[Change]:
    """Server-side apply every object of ``p`` (then prune, if asked); what changed, per object."""
    _missing_kinds(cluster, p.kinds())
    changes: list[Change] = []
    for obj in p.objects:
        live = cluster.get(obj)
        result = cluster.apply(obj, dry_run=dry_run, force=force)
        if live is None:
            action: Action = "created"
        elif _normal(live) == _normal(result):
            action = "unchanged"
        else:
            action = "configured"
        changes.append(Change(ObjectRef.of(obj), action))
    if prune:
        for live in _stale(cluster, p):
            cluster.delete(live, dry_run=dry_run)
            changes.append(Change(ObjectRef.of(live), "pruned"))
    return changes


@dataclass(frozen=True, slots=True)
class Difference:
    """What apply would change in one object: a unified diff of its YAML (live → applied)."""

    ref: ObjectRef
    text: str


def _unified(ref: ObjectRef, before: dict[str, Any], after: dict[str, Any]) -> str:
    a = dumps(before, "yaml").splitlines(keepends=True) if before else []
    b = dumps(after, "yaml").splitlines(keepends=True) if after else []
    name = str(ref).replace(" -n ", " namespace ")
    return "".join(difflib.unified_diff(a, b, f"live: {name}", f"meshbridge: {name}"))


def diff(cluster: Cluster, p: Plan, *, prune: bool = False) -> list[Difference]:
    """What :func:`apply` would change, object by object (server dry run; nothing is written)."""
    _missing_kinds(cluster, p.kinds())
    out: list[Difference] = []
    for obj in p.objects:
        live = _normal(cluster.get(obj))
        would = _normal(cluster.apply(obj, dry_run=True))
        if live != would:
            ref = ObjectRef.of(obj)
            out.append(Difference(ref, _unified(ref, live, would)))
    if prune:
        for live_obj in _stale(cluster, p):
            ref = ObjectRef.of(live_obj)
            out.append(Difference(ref, _unified(ref, _normal(live_obj), {})))
    return out
