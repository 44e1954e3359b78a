"""Rendered artifacts read back: the one reader ``meshbridge check`` and the demo share.

A rendering (relative path → ``dict`` / ``list`` of ``dict`` / text, as :mod:`bridge.rendering` holds
it) is read the way its consumers in a cluster read it, into small frozen values:

* :class:`ClusterSpiffeId` - spire-controller-manager's ``ClusterSPIFFEID``: a pod gets the ID when
  *both* selectors match (``api/v1alpha1/clusterspiffeid_parse.go``: an absent selector is no filter,
  so it selects everything; ``{}`` is ``labels.Everything()``); the namespace is matched on the label
  Kubernetes sets on every namespace, ``kubernetes.io/metadata.name``;
* :class:`AuthorizationPolicy` - Istio's ``security.istio.io/v1`` policy as ALLOW/DENY source rules,
  attached as istiod attaches it to a sidecar (``pilot/pkg/model/authorization.go``
  ``ListAuthorizationPolicies``: policies of the root namespace and of the workload's namespace;
  ``security/v1beta1/authorization.proto``: an absent or empty ``selector`` matches every workload
  there, a policy with ``targetRef(s)`` applies to gateways/waypoints, not to sidecars);
* :class:`Overlay` - the ``IstioOperator``: trust domains Istio's SAN check admits, and the command
  lines of the ``meshbridge-sds`` containers it injects (sidecar templates, gateway patches);
* :class:`RegisterEntry` - the SPIRE entries (``entry create -data`` JSON or the entries script):
  SPIFFE ID, selectors, ``federatesWith``;
* an app's CAS session (``scone/<app>/session.yaml``): its services' environments and commands, its
  imports.

Pure functions; the only parsing beyond the rendering's own is the sidecar injection template (YAML
text inside the overlay).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import yaml

from istio.mesh import SDS_CONTAINER_NAME
from istio.model import DEFAULT_ROOT_NAMESPACE

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
_SESSION_SELECTOR = re.compile(r"(?:sconecas_sessionmanager:session_name|cas_session_name):(\S+)")
SESSION_PATH = re.compile(r"scone/([^/]+)/session\.ya?ml")

Rendered = Mapping[str, object]


def get(doc: object, *keys: str) -> object:
    """``doc[k1][k2]…``, ``None`` as soon as a level is not a mapping."""
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def as_dict(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def _strings(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in as_list(value))


def _trust_domains(value: object) -> tuple[str, ...]:
    """Trust domain names (a ``spiffe://`` prefix, which SPIRE accepts too, removed)."""
    return tuple(t.removeprefix("spiffe://") for t in _strings(value))


def _labels(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in as_dict(value).items()}


def labels_select(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A non-empty ``matchLabels`` selector selects ``labels`` (an empty one selects nothing here)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def documents(rendering: Rendered, kind: str | None = None) -> list[tuple[str, Mapping[str, object]]]:
    """``(path, document)`` for every mapping in the rendering (of ``kind``, if given), in order."""
    out: list[tuple[str, Mapping[str, object]]] = []
    for path, doc in rendering.items():
        items = doc if isinstance(doc, list) else [doc]
        out += [(path, d) for d in items if isinstance(d, dict) and (kind is None or d.get("kind") == kind)]
    return out


class _Selecting(Protocol):
    def selects(self, namespace: str, pod_labels: Mapping[str, str]) -> bool: ...


_S = TypeVar("_S", bound=_Selecting)


def selecting(found: Iterable[_S], namespace: str, pod_labels: Mapping[str, str]) -> list[_S]:
    """Those of ``found`` (``ClusterSPIFFEID``s, ``AuthorizationPolicy``s) that select pods with these
    labels in ``namespace``."""
    return [f for f in found if f.selects(namespace, pod_labels)]


def session_environments(session: Mapping[str, object]) -> list[Mapping[str, object]]:
    """A CAS session's ``services[].environment`` (``{}`` for a service without one)."""
    return [as_dict(get(s, "environment")) for s in as_list(session.get("services"))]


def session_commands(session: Mapping[str, object]) -> list[str]:
    return [str(get(s, "command")) for s in as_list(session.get("services"))]


def session_imports(session: Mapping[str, object]) -> list[tuple[str, str]]:
    """``(secret, session)`` of every ``secrets[].import`` of a CAS session."""
    found = [as_dict(get(s, "import")) for s in as_list(session.get("secrets"))]
    return [(str(i.get("secret")), str(i.get("session"))) for i in found if i]


def session_name_of(template: str) -> str | None:
    """The session an SVIDStore template posts: the SVIDStore plugin's rule is that the first line
    starting with ``name:`` names the session (``None``: no such line, the plugin cannot post it)."""
    for line in template.split("\n"):
        if line.startswith("name:"):
            return line.split("name:", 1)[1].strip(" ")
    return None


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes ``LabelSelector`` (``matchLabels`` and ``matchExpressions``)."""

    match_labels: Mapping[str, str]
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, node: object) -> LabelSelector:
        exprs = tuple(
            (str(get(e, "key")), str(get(e, "operator")), _strings(get(e, "values")))
            for e in as_list(get(node, "matchExpressions"))
        )
        return cls(_labels(get(node, "matchLabels")), exprs)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """``metav1.LabelSelectorAsSelector(...).Matches(labels)``: every requirement holds."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, op, values in self.match_expressions:
            ok = {
                "In": key in labels and labels[key] in values,
                "NotIn": labels.get(key) not in values,
                "Exists": key in labels,
                "DoesNotExist": key not in labels,
            }.get(op, False)
            if not ok:
                return False
        return True


@dataclass(frozen=True, slots=True)
class ClusterSpiffeId:
    path: str
    name: str
    spiffe_id_template: object
    """``spec.spiffeIDTemplate`` as rendered (a ``str`` when well-formed)."""
    dns_name_templates: object
    """``spec.dnsNameTemplates`` as rendered (a list of ``str`` when well-formed, ``None`` if absent)."""
    federates_with: tuple[str, ...]
    """Trust domain names (a ``spiffe://`` prefix, which SPIRE accepts too, removed)."""
    pod_selector: LabelSelector | None
    namespace_selector: LabelSelector | None
    """``None``: the selector is absent, so it selects every pod / namespace."""

    def selects(self, namespace: str, pod_labels: Mapping[str, str]) -> bool:
        """Whether spire-controller-manager registers a pod with these labels in ``namespace``."""
        ns_ok = self.namespace_selector is None or self.namespace_selector.matches(
            {NAMESPACE_NAME_LABEL: namespace}
        )
        return ns_ok and (self.pod_selector is None or self.pod_selector.matches(pod_labels))


def cluster_spiffe_ids(rendering: Rendered) -> tuple[ClusterSpiffeId, ...]:
    out = []
    for path, doc in documents(rendering, "ClusterSPIFFEID"):
        spec = get(doc, "spec")
        ns_sel, pod_sel = get(spec, "namespaceSelector"), get(spec, "podSelector")
        out.append(
            ClusterSpiffeId(
                path=path,
                name=str(get(doc, "metadata", "name")),
                spiffe_id_template=get(spec, "spiffeIDTemplate"),
                dns_name_templates=get(spec, "dnsNameTemplates"),
                federates_with=_trust_domains(get(spec, "federatesWith")),
                pod_selector=None if pod_sel is None else LabelSelector.parse(pod_sel),
                namespace_selector=None if ns_sel is None else LabelSelector.parse(ns_sel),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PolicySource:
    """One ``rules[].from[].source``."""

    principals: tuple[str, ...]
    not_principals: tuple[str, ...]
    namespaces: tuple[str, ...]
    other_fields: tuple[str, ...]
    """Source fields besides these three (``ipBlocks``, ``requestPrincipals``, …)."""

    def principal_fields(self) -> dict[str, object]:
        """The source without ``namespaces``, in the policy's own shape (for ``istio.source_matches``)."""
        out: dict[str, object] = dict.fromkeys(self.other_fields)
        if self.principals:
            out["principals"] = list(self.principals)
        if self.not_principals:
            out["notPrincipals"] = list(self.not_principals)
        return out


@dataclass(frozen=True, slots=True)
class PolicyRule:
    sources: tuple[PolicySource, ...]
    """``from`` entries, OR-ed; none: the rule matches any source."""
    narrowed: bool
    """The rule has ``to`` or ``when`` (narrows it to some requests)."""


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    path: str
    namespace: object
    action: str
    selector: Mapping[str, str]
    """``spec.selector.matchLabels`` (empty when absent: every workload)."""
    rules: tuple[PolicyRule, ...]
    root_namespace: str = DEFAULT_ROOT_NAMESPACE
    """Istio's root namespace (``meshConfig.rootNamespace``): its policies apply in every namespace."""
    targets: bool = False
    """``spec.targetRef``/``targetRefs`` is set: the policy is not a sidecar's."""

    def selects(self, namespace: str, pod_labels: Mapping[str, str]) -> bool:
        """Istio attaches the policy to these pods' sidecars (an empty selector: every pod)."""
        in_scope = self.namespace in (namespace, self.root_namespace) and not self.targets
        return in_scope and (not self.selector or labels_select(self.selector, pod_labels))


def _source(node: object) -> PolicySource:
    fields = as_dict(node)
    return PolicySource(
        principals=_strings(fields.get("principals")),
        not_principals=_strings(fields.get("notPrincipals")),
        namespaces=_strings(fields.get("namespaces")),
        other_fields=tuple(str(k) for k in fields if k not in ("principals", "notPrincipals", "namespaces")),
    )


def root_namespace(rendering: Rendered) -> str:
    """``meshConfig.rootNamespace`` of the rendered IstioOperator, else istiod's namespace as istioctl
    places it (``values.global.istioNamespace``, else ``istio-system``; the operator's own
    ``metadata.namespace``/``spec.namespace`` do not move it: tests/istio/test_istioctl_manifest.py)."""
    for _, doc in documents(rendering, "IstioOperator"):
        spec = get(doc, "spec")
        found = get(spec, "meshConfig", "rootNamespace") or get(spec, "values", "global", "istioNamespace")
        return found if isinstance(found, str) and found else DEFAULT_ROOT_NAMESPACE
    return DEFAULT_ROOT_NAMESPACE


def authorization_policies(rendering: Rendered) -> tuple[AuthorizationPolicy, ...]:
    out = []
    root = root_namespace(rendering)
    for path, doc in documents(rendering, "AuthorizationPolicy"):
        spec = get(doc, "spec")
        rules = tuple(
            PolicyRule(
                tuple(_source(get(src, "source")) for src in as_list(get(rule, "from"))),
                bool(get(rule, "to") or get(rule, "when")),
            )
            for rule in as_list(get(spec, "rules"))
        )
        out.append(
            AuthorizationPolicy(
                path=path,
                namespace=get(doc, "metadata", "namespace"),
                action=str(get(spec, "action") or "ALLOW"),
                selector=_labels(get(spec, "selector", "matchLabels")),
                rules=rules,
                root_namespace=root,
                targets=bool(get(spec, "targetRef") or get(spec, "targetRefs")),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Overlay:
    path: str
    trust_domain: object
    """``meshConfig.trustDomain`` as rendered (a ``str`` when well-formed)."""
    trust_domain_aliases: tuple[str, ...]
    ca_trust_domains: tuple[str, ...]
    """``meshConfig.caCertificates[].trustDomains``."""
    sidecar_sds_commands: Mapping[str, tuple[tuple[str, ...], ...]]
    """Injection template name → command lines of its ``meshbridge-sds`` init containers."""
    gateway_sds_commands: tuple[tuple[str, ...], ...]
    """Command lines of the ``meshbridge-sds`` containers the gateways' Deployment patches add."""

    @property
    def san_trust_domains(self) -> tuple[str, ...]:
        """What Istio's inbound SAN check admits: the trust domain, its aliases, the CA trust domains."""
        own = (str(self.trust_domain),)
        return tuple(dict.fromkeys((*own, *self.trust_domain_aliases, *self.ca_trust_domains)))

    @property
    def sds_commands(self) -> tuple[tuple[str, ...], ...]:
        return (*(c for cs in self.sidecar_sds_commands.values() for c in cs), *self.gateway_sds_commands)


def _sds_commands(containers: object) -> tuple[tuple[str, ...], ...]:
    return tuple(
        _strings(get(c, "command")) for c in as_list(containers) if get(c, "name") == SDS_CONTAINER_NAME
    )


def overlays(rendering: Rendered) -> tuple[Overlay, ...]:
    out = []
    for path, doc in documents(rendering, "IstioOperator"):
        spec = get(doc, "spec")
        mesh = get(spec, "meshConfig")
        templates = as_dict(get(spec, "values", "sidecarInjectorWebhook", "templates"))
        sidecars = {
            str(name): _sds_commands(get(yaml.safe_load(text), "spec", "initContainers"))
            for name, text in templates.items()
            if isinstance(text, str)
        }
        gateways = [
            c
            for kind in ("ingressGateways", "egressGateways")
            for gw in as_list(get(spec, "components", kind))
            for overlay in as_list(get(gw, "k8s", "overlays"))
            for patch in as_list(get(overlay, "patches"))
            for c in _sds_commands(get(patch, "value"))
        ]
        out.append(
            Overlay(
                path=path,
                trust_domain=get(mesh, "trustDomain"),
                trust_domain_aliases=_strings(get(mesh, "trustDomainAliases")),
                ca_trust_domains=tuple(
                    td
                    for ca in as_list(get(mesh, "caCertificates"))
                    for td in _strings(get(ca, "trustDomains"))
                ),
                sidecar_sds_commands=sidecars,
                gateway_sds_commands=tuple(gateways),
            )
        )
    return tuple(out)


def federated_trust_domains(rendering: Rendered) -> tuple[str, ...]:
    """``spec.trustDomain`` of every ``ClusterFederatedTrustDomain``."""
    return tuple(
        str(get(d, "spec", "trustDomain")) for _, d in documents(rendering, "ClusterFederatedTrustDomain")
    )


@dataclass(frozen=True, slots=True)
class RegisterEntry:
    path: str
    spiffe_id: str
    selectors: tuple[str, ...]
    """``type:value``, as ``entry create -selector`` takes them."""
    federates_with: tuple[str, ...]
    """Trust domain names (``spiffe://`` removed)."""

    @property
    def session_name(self) -> str | None:
        """The CAS session the SVIDStore plugin posts this entry's SVID into (its selector), if any."""
        return next((m.group(1) for s in self.selectors if (m := _SESSION_SELECTOR.search(s))), None)


def _flag_values(command: str, flag: str) -> list[str]:
    return re.findall(rf"-{flag}[= ]+[\"']?([^\s\"']+)", command)


def register_entries(rendering: Rendered) -> tuple[RegisterEntry, ...]:
    """The SPIRE entries: the ``entries`` of JSON documents, then the ``entry create`` commands of text
    documents (one per shell command, ``\\``-continued lines joined)."""
    out: list[RegisterEntry] = []
    for path, doc in documents(rendering):
        for e in as_list(doc.get("entries")):
            if isinstance(e, dict):
                selectors = tuple(
                    f"{get(s, 'type')}:{get(s, 'value')}" if isinstance(s, dict) else str(s)
                    for s in as_list(e.get("selectors"))
                )
                feds = _trust_domains(e.get("federates_with"))
                out.append(RegisterEntry(path, str(e.get("spiffe_id")), selectors, feds))
    for path, text in rendering.items():
        if not (isinstance(text, str) and "entry create" in text):
            continue
        for cmd in re.split(r"(?<!\\)\n", text):
            ids = _flag_values(cmd, "spiffeID")
            if ids and not ids[0].startswith("$"):
                feds = _trust_domains(_flag_values(cmd, "federatesWith"))
                out.append(RegisterEntry(path, ids[0], tuple(_flag_values(cmd, "selector")), feds))
    return tuple(out)
