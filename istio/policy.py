"""Who may talk to the mesh: mesh-wide STRICT mTLS and per-service ALLOW and DENY policies.

Sources: istio.io reference "security/peer_authentication" and "security/authorization-policy"
(``security.istio.io/v1``; the schemas in ``shared/schemas`` pin istio/api 1.30.3). Istio principals
are SPIFFE IDs without the ``spiffe://`` scheme (``<td>/ns/<ns>/sa/<sa>``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from istio._checks import DNS1123_LABEL, TRUST_DOMAIN, check_service, is_label, is_subdomain
from istio.errors import IstioError, raise_problems
from istio.model import DEFAULT_ROOT_NAMESPACE, AuthorizationParams, MeshService

__all__ = [
    "SECURITY_API_VERSION",
    "authorization_policy_name",
    "principal",
    "principal_matches",
    "render_authorization_policy",
    "render_external_deny_policy",
    "render_peer_authentication",
    "source_matches",
]

SECURITY_API_VERSION = "security.istio.io/v1"
_SCHEME = "spiffe://"


def principal(spiffe_id: str, *, field: str = "spiffe_id") -> str:
    """``spiffe://example.org/external/app`` -> ``example.org/external/app`` (an Istio principal)."""
    if not spiffe_id.startswith(_SCHEME) or len(spiffe_id) == len(_SCHEME):
        raise IstioError(f"{field}: {spiffe_id!r}: a SPIFFE ID 'spiffe://<trust domain>/<path>'")
    rest = spiffe_id[len(_SCHEME) :]
    # istiod rejects '*' except as a whole prefix/suffix wildcard; SPIFFE IDs never contain it.
    if "*" in rest or any(c.isspace() for c in rest):
        raise IstioError(f"{field}: {spiffe_id!r}: no '*' or spaces in a SPIFFE ID")
    return rest


def _principals(spiffe_ids: Iterable[tuple[int, str]], field: str, problems: list[str]) -> list[str]:
    """:func:`principal` of each ``(index, SPIFFE ID)``, without repeats; errors go to ``problems``."""
    out: list[str] = []
    for i, spiffe_id in spiffe_ids:
        try:
            p = principal(spiffe_id, field=f"{field}[{i}]")
        except IstioError as exc:
            problems.append(str(exc))
            continue
        if p not in out:
            out.append(p)
    return out


def render_peer_authentication(root_namespace: str = DEFAULT_ROOT_NAMESPACE) -> dict[str, object]:
    """Mesh-wide STRICT mTLS: ``PeerAuthentication`` ``default`` in the Istio root namespace."""
    if not is_label(root_namespace):
        raise IstioError(f"root_namespace: {root_namespace!r}: a DNS-1123 label")
    return {
        "apiVersion": SECURITY_API_VERSION,
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": root_namespace},
        "spec": {"mtls": {"mode": "STRICT"}},
    }


def _authorization_policy(
    svc: MeshService, name: str, action: str, rules: list[dict[str, object]]
) -> dict[str, object]:
    """An ``AuthorizationPolicy`` applying ``rules`` to the pods of ``svc``."""
    return {
        "apiVersion": SECURITY_API_VERSION,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": svc.namespace},
        "spec": {"action": action, "selector": {"matchLabels": dict(svc.pod_labels)}, "rules": rules},
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
    if params.name is not None and not is_subdomain(params.name):
        problems.append(f"name: {params.name!r}: a DNS-1123 subdomain")
    if not params.allowed_spiffe_ids:
        problems.append(f"allowed_spiffe_ids: {params.allowed_spiffe_ids!r}: at least one external SPIFFE ID")
    ids = (*params.allowed_spiffe_ids, *params.mesh_principals)
    principals = _principals(enumerate(ids), "allowed_spiffe_ids", problems)
    for i, ns in enumerate(params.mesh_namespaces):
        if not DNS1123_LABEL.match(ns):
            problems.append(f"mesh_namespaces[{i}]: {ns!r}: a DNS-1123 label")
    raise_problems(problems)
    rules: list[dict[str, object]] = [{"from": [{"source": {"principals": principals}}]}]
    if params.mesh_namespaces:
        rules.append({"from": [{"source": {"namespaces": sorted(set(params.mesh_namespaces))}}]})
    return _authorization_policy(svc, authorization_policy_name(params), "ALLOW", rules)


def render_external_deny_policy(
    params: AuthorizationParams,
    denied_spiffe_ids: tuple[str, ...],
    *,
    foreign_trust_domains: tuple[str, ...] = (),
) -> dict[str, object] | None:
    """A DENY policy on the service's pods refusing external identities it must not admit.

    Two kinds of source, OR-ed (``from`` entries of one rule):

    * per trust domain in ``foreign_trust_domains`` (the external apps' own, federated ones): every
      identity of it - ``principals: ["<td>/*"]`` - except the ``params.allowed_spiffe_ids`` in it
      (``notPrincipals``). Istio compiles ``<td>/*`` to the Envoy matcher ``prefix: spiffe://<td>/``
      and a source's ``notPrincipals`` to ``not_id`` of their ``or_ids``, AND-ed with the principals
      (``pilot/pkg/security/authz/model``: ``srcPrincipalGenerator``, ``rule.principal``); trust
      domain aliasing leaves such principals alone (``trustdomain.Bundle.ReplaceTrustDomainAliases``
      rewrites only ``<td>/ns/<ns>/sa/<sa>``-shaped ones). So any SVID the apps' SPIRE issues is
      refused here unless the spec admits it to this service;
    * ``denied_spiffe_ids``: exact principals (declared apps in the mesh's own trust domain that do not
      target the service - the mesh's other identities must keep working, so no wildcard there).

    Unlike an ALLOW policy it leaves every other caller alone: in-mesh traffic keeps working (an ALLOW
    policy would deny every caller it does not list, Istio "Authorization Policy" semantics; DENY
    policies are evaluated before ALLOW ones). ``None`` when there is nothing to deny.
    ``params.allowed_spiffe_ids`` must not be among ``denied_spiffe_ids``.
    """
    svc = params.service
    problems: list[str] = []
    check_service(problems, svc)
    denied = [(i, s) for i, s in enumerate(denied_spiffe_ids) if s not in params.allowed_spiffe_ids]
    problems += [
        f"denied_spiffe_ids[{i}]: {s!r}: also admitted"
        for i, s in enumerate(denied_spiffe_ids)
        if s in params.allowed_spiffe_ids
    ]
    principals = _principals(denied, "denied_spiffe_ids", problems)
    sources: list[dict[str, object]] = []
    for i, td in enumerate(dict.fromkeys(foreign_trust_domains)):
        if not TRUST_DOMAIN.match(td):
            problems.append(
                f"foreign_trust_domains[{i}]: {td!r}: a trust domain name (no scheme, path or '*')"
            )
            continue
        source: dict[str, object] = {"principals": [f"{td}/*"]}
        in_td = [(j, s) for j, s in enumerate(params.allowed_spiffe_ids) if s.startswith(f"{_SCHEME}{td}/")]
        admitted = _principals(in_td, "allowed_spiffe_ids", problems)
        if admitted:
            source["notPrincipals"] = admitted
        sources.append({"source": source})
    raise_problems(problems)
    if principals:
        sources.append({"source": {"principals": principals}})
    if not sources:
        return None
    return _authorization_policy(svc, f"{svc.name}-meshbridge-deny", "DENY", [{"from": sources}])


def principal_matches(pattern: str, peer: str) -> bool:
    """Istio's match of one ``principals`` value against a peer's principal (SPIFFE ID without scheme).

    ``matcher.StringMatcherWithPrefix`` (``pilot/pkg/security/authz/matcher/string.go``): ``*`` alone
    matches any non-empty principal, ``*x`` a suffix, ``x*`` a prefix, anything else exactly.
    """
    if pattern == "*":
        return bool(peer)
    if pattern.startswith("*"):
        return peer.endswith(pattern[1:])
    if pattern.endswith("*"):
        return peer.startswith(pattern[:-1])
    return peer == pattern


def source_matches(source: Mapping[str, object], peer: str) -> bool | None:
    """Whether an AuthorizationPolicy ``source`` (principal fields only) matches ``peer``.

    ``principals`` (any) AND NOT ``notPrincipals`` (any), as Istio's ``rule.principal`` builds it;
    ``None`` when the source uses fields this evaluator does not model (namespaces, IP blocks, request
    principals), so callers can refuse to guess.
    """
    if set(source) - {"principals", "notPrincipals"}:
        return None
    principals = _strings(source.get("principals"))
    not_principals = _strings(source.get("notPrincipals"))
    if principals and not any(principal_matches(p, peer) for p in principals):
        return False
    return not any(principal_matches(p, peer) for p in not_principals)


def _strings(value: object) -> Sequence[str]:
    return [str(v) for v in value] if isinstance(value, list) else []
