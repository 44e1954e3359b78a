"""Who may talk to the mesh: mesh-wide STRICT mTLS and per-service ALLOW policies.

Sources: istio.io reference "security/peer_authentication" and "security/authorization-policy"
(``security.istio.io/v1``; the schemas in ``shared/schemas`` pin istio/api 1.30.3). Istio principals
are SPIFFE IDs without the ``spiffe://`` scheme (``<td>/ns/<ns>/sa/<sa>``).
"""

from __future__ import annotations

import re

from istio._checks import DNS1123_SUBDOMAIN, check_service
from istio.errors import IstioError
from istio.model import AuthorizationParams

__all__ = [
    "SECURITY_API_VERSION",
    "authorization_policy_name",
    "principal",
    "render_authorization_policy",
    "render_external_deny_policy",
    "render_peer_authentication",
]

SECURITY_API_VERSION = "security.istio.io/v1"
_SCHEME = "spiffe://"
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def principal(spiffe_id: str, *, field: str = "spiffe_id") -> str:
    """``spiffe://example.org/external/app`` -> ``example.org/external/app`` (an Istio principal)."""
    if not spiffe_id.startswith(_SCHEME) or len(spiffe_id) == len(_SCHEME):
        raise IstioError(f"{field}: {spiffe_id!r}: a SPIFFE ID 'spiffe://<trust domain>/<path>'")
    rest = spiffe_id[len(_SCHEME) :]
    # istiod rejects '*' except as a whole prefix/suffix wildcard; SPIFFE IDs never contain it.
    if "*" in rest or any(c.isspace() for c in rest):
        raise IstioError(f"{field}: {spiffe_id!r}: no '*' or spaces in a SPIFFE ID")
    return rest


def render_peer_authentication(root_namespace: str = "istio-system") -> dict[str, object]:
    """Mesh-wide STRICT mTLS: ``PeerAuthentication`` ``default`` in the Istio root namespace."""
    if not _DNS1123_LABEL.match(root_namespace) or len(root_namespace) > 63:
        raise IstioError(f"root_namespace: {root_namespace!r}: a DNS-1123 label")
    return {
        "apiVersion": SECURITY_API_VERSION,
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": root_namespace},
        "spec": {"mtls": {"mode": "STRICT"}},
    }


def authorization_policy_name(params: AuthorizationParams) -> str:
    """``<service>-meshbridge`` unless the caller named it."""
    return params.name if params.name is not None else f"{params.service.name}-meshbridge"


def render_authorization_policy(params: AuthorizationParams) -> dict[str, object]:
    """An ALLOW policy on the service's pods admitting the external apps' SPIFFE IDs.

    One rule per kind of source so that ``principals`` and ``namespaces`` stay OR-ed (inside one
    ``source`` they would be AND-ed).
    """
    svc = params.service
    problems: list[str] = []
    check_service(problems, svc)  # label syntax excludes '*' and empty keys (Istio's CEL rule) too
    if params.name is not None and (len(params.name) > 253 or not DNS1123_SUBDOMAIN.match(params.name)):
        problems.append(f"name: {params.name!r}: a DNS-1123 subdomain")
    if not params.allowed_spiffe_ids:
        problems.append(f"allowed_spiffe_ids: {params.allowed_spiffe_ids!r}: at least one external SPIFFE ID")
    principals: list[str] = []
    for i, spiffe_id in enumerate((*params.allowed_spiffe_ids, *params.mesh_principals)):
        try:
            p = principal(spiffe_id, field=f"allowed_spiffe_ids[{i}]")
        except IstioError as exc:
            problems.append(str(exc))
            continue
        if p not in principals:
            principals.append(p)
    for i, ns in enumerate(params.mesh_namespaces):
        if not _DNS1123_LABEL.match(ns):
            problems.append(f"mesh_namespaces[{i}]: {ns!r}: a DNS-1123 label")
    if problems:
        raise IstioError("\n".join(problems))
    rules: list[dict[str, object]] = [{"from": [{"source": {"principals": principals}}]}]
    if params.mesh_namespaces:
        rules.append({"from": [{"source": {"namespaces": sorted(set(params.mesh_namespaces))}}]})
    return {
        "apiVersion": SECURITY_API_VERSION,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": authorization_policy_name(params), "namespace": svc.namespace},
        "spec": {
            "action": "ALLOW",
            "selector": {"matchLabels": dict(svc.pod_labels)},
            "rules": rules,
        },
    }


def render_external_deny_policy(
    params: AuthorizationParams, denied_spiffe_ids: tuple[str, ...]
) -> dict[str, object] | None:
    """A DENY policy on the service's pods refusing ``denied_spiffe_ids`` (declared external apps that
    do not target it), for services whose spec declares no in-mesh callers.

    Unlike an ALLOW policy it leaves every other caller alone: in-mesh traffic keeps working (an ALLOW
    policy would deny every caller it does not list, Istio "Authorization Policy" semantics). ``None``
    when there is nothing to deny. ``params.allowed_spiffe_ids`` must not be among the denied.
    """
    svc = params.service
    problems: list[str] = []
    check_service(problems, svc)
    principals: list[str] = []
    for i, spiffe_id in enumerate(denied_spiffe_ids):
        if spiffe_id in params.allowed_spiffe_ids:
            problems.append(f"denied_spiffe_ids[{i}]: {spiffe_id!r}: also admitted")
            continue
        try:
            p = principal(spiffe_id, field=f"denied_spiffe_ids[{i}]")
        except IstioError as exc:
            problems.append(str(exc))
            continue
        if p not in principals:
            principals.append(p)
    if problems:
        raise IstioError("\n".join(problems))
    if not principals:
        return None
    return {
        "apiVersion": SECURITY_API_VERSION,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": f"{svc.name}-meshbridge-deny", "namespace": svc.namespace},
        "spec": {
            "action": "DENY",
            "selector": {"matchLabels": dict(svc.pod_labels)},
            "rules": [{"from": [{"source": {"principals": principals}}]}],
        },
    }
