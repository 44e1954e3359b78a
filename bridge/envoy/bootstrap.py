"""Envoy bootstrap builders (pure functions → plain dicts, JSON-ready) for Envoy 1.3x-1.40.

``sidecar_bootstrap`` is modelled on what istio-agent gives an Istio sidecar in STRICT mode, reduced
to the inbound path: a TLS listener that *requires* a client certificate, its own certificate from
SDS ``default``, peers validated with SDS ``ROOTCA`` (``combined_validation_context``) plus a URI-SAN
prefix ``spiffe://<td>/`` per trust domain Istio validates — or, with ``validation="spiffe"``, the SPIFFE
certificate validator from SDS ``ALL`` (federation: one bundle per trust domain). No ALPN is required of
clients (SCONE's network shield and Ghostunnel do not offer Istio's ALPN).

Istio's trust-domain check, reproduced: ``BuildInboundTLS`` → ``ApplyToCommonTLSContext``
(``pilot/pkg/security/model/authentication.go``) puts one URI-SAN prefix matcher ``spiffe://<td>/`` per
trust domain in the inbound ``DownstreamTlsContext``'s default validation context: the mesh trust
domain, ``meshConfig.trustDomainAliases`` and, since istio/istio#43536, the ``trustDomains`` of
``meshConfig.caCertificates`` (skipped only with ``PILOT_SKIP_VALIDATE_TRUST_DOMAIN``, default false).
So a client whose CA ``ROOTCA`` trusts is still refused at the handshake when its trust domain is not in
that list (``trust_domains``); and a trust domain in the list is admitted only where ``ROOTCA`` carries
its bundle.

RBAC, as Istio compiles ``AuthorizationPolicy`` (``pilot/pkg/security/authz/model``):
``source.principals`` become ``authenticated.principal_name`` string matchers with the ``spiffe://``
prefix (``exact``; ``td/*`` → ``prefix: spiffe://td/``; ``*x`` → regex); a source with
``notPrincipals`` becomes ``and_ids`` of the principals' ``or_ids`` and a ``not_id`` of the
notPrincipals' ``or_ids`` (:class:`SourceRule`); DENY policies become an RBAC filter with action
``DENY`` placed *before* the ALLOW filter (Istio's order: CUSTOM, DENY, ALLOW), so a denied
principal gets 403 (``rbac="http"``) even when no ALLOW policy exists, and every other caller passes
unless an ALLOW policy exists and does not name it. The HTTP connection manager sets
``x-forwarded-client-cert`` (``SANITIZE_SET``, URI) for the plain-HTTP backend.

``egress_bootstrap`` is Envoy as a client-side proxy: a plain TCP listener whose connections go out
over mTLS (SDS ``default`` + ``ROOTCA``), verifying the server's SPIFFE ID — the dev-mode stand-in
for the external tunnel (Ghostunnel client / SCONE network shield).

All listeners and the admin endpoint default to port 0; :class:`bridge.envoy.process.EnvoyProcess`
discovers the real ports from the admin API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bridge.envoy.errors import EnvoyError
from sds_server.errors import SpiffeIdError
from sds_server.spiffe_id import SpiffeId, TrustDomain

JsonDict = dict[str, object]

DEFAULT_NODE_ID = "sidecar~127.0.0.1~httpbin.default~default.svc.cluster.local"
SDS_CLUSTER = "sds-grpc"
_T = "type.googleapis.com/"
_TLS = _T + "envoy.extensions.transport_sockets.tls.v3."


def _spiffe_id(arg: str, value: str) -> str:
    """Accept ``spiffe://td/path`` or Istio's principal form ``td/path``; return the URI form."""
    candidate = value if value.startswith("spiffe://") else "spiffe://" + value
    try:
        return str(SpiffeId.parse(candidate))
    except SpiffeIdError as exc:
        raise EnvoyError(f"{arg}: {value!r}: not a SPIFFE ID ({exc})") from exc


def _trust_domain(value: str, arg: str = "trust_domain") -> str:
    try:
        return TrustDomain.parse(value).name
    except SpiffeIdError as exc:
        raise EnvoyError(f"{arg}: {value!r}: not a trust domain ({exc})") from exc


def _port(arg: str, value: int) -> int:
    if not 0 <= value <= 65535:
        raise EnvoyError(f"{arg}: {value!r}: a TCP port is 0..65535 (0 = any free port)")
    return value


def _address(host: str, port: int) -> JsonDict:
    return {"socket_address": {"address": host, "port_value": port}}


def sds_config(cluster: str = SDS_CLUSTER, *, delta: bool = False) -> JsonDict:
    """An ``sds_config`` pointing at the gRPC cluster (``GRPC`` SotW or ``DELTA_GRPC``)."""
    return {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "DELTA_GRPC" if delta else "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": cluster}}],
            "set_node_on_first_message_only": True,
        },
    }


def sds_cluster(sds_socket: str | Path, name: str = SDS_CLUSTER) -> JsonDict:
    """The HTTP/2 cluster on the SDS Unix socket (what istio-agent calls ``sds-grpc``)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(sds_socket)}}}}]}],
        },
    }


def tls_socket(typed_config: JsonDict) -> JsonDict:
    """A ``transport_socket`` with the TLS context ``typed_config`` (Up- or DownstreamTlsContext)."""
    return {"name": "envoy.transport_sockets.tls", "typed_config": typed_config}


def static_cluster(name: str, host: str, port: int, transport_socket: JsonDict | None = None) -> JsonDict:
    """A STATIC cluster of one TCP endpoint, optionally with a transport socket (:func:`tls_socket`)."""
    cluster: JsonDict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}],
        },
    }
    if transport_socket is not None:
        cluster["transport_socket"] = transport_socket
    return cluster


def tcp_proxy_listener(name: str, host: str, port: int, *, cluster: str, stat_prefix: str) -> JsonDict:
    """A plain TCP listener whose connections go to ``cluster`` (``tcp_proxy``)."""
    return {
        "name": name,
        "address": _address(host, port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": _T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": stat_prefix,
                            "cluster": cluster,
                        },
                    }
                ]
            }
        ],
    }


def _common_tls_context(
    *,
    cert_name: str,
    validation_name: str,
    sds: JsonDict,
    san_matchers: Sequence[JsonDict],
) -> JsonDict:
    default_ctx: JsonDict = {}
    if san_matchers:
        default_ctx["match_typed_subject_alt_names"] = list(san_matchers)
    return {
        "tls_certificate_sds_secret_configs": [{"name": cert_name, "sds_config": sds}],
        "combined_validation_context": {
            "default_validation_context": default_ctx,
            "validation_context_sds_secret_config": {"name": validation_name, "sds_config": sds},
        },
    }


@dataclass(frozen=True, slots=True)
class SourceRule:
    """One ``AuthorizationPolicy`` ``rules[].from[].source`` on principals: any of ``principals`` AND
    none of ``not_principals``. Values in Istio's syntax (``td/path``, or with ``spiffe://``; a
    leading or trailing ``*`` wildcard, or ``*`` alone)."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = " | ".join(self.principals) or "*"
        return text + (f" except {' | '.join(self.not_principals)}" if self.not_principals else "")


def _principal_matcher(arg: str, value: str) -> JsonDict:
    """Istio's ``matcher.StringMatcherWithPrefix(value, "spiffe://")`` for one principal value
    (``pilot/pkg/security/authz/matcher/string.go``): ``*`` → regex ``.+``, ``*x`` → regex
    ``spiffe://.*x``, ``x*`` → prefix ``spiffe://x``, else exact ``spiffe://x``."""
    bare = value.removeprefix("spiffe://")
    if bare == "*":
        return {"safe_regex": {"regex": ".+"}}
    if "*" in bare.strip("*") or bare.startswith("**") or bare.endswith("**") or bare.count("*") > 1:
        raise EnvoyError(f"{arg}: {value!r}: '*' only as a whole prefix or suffix (Istio's rule)")
    if any(c.isspace() for c in bare):
        raise EnvoyError(f"{arg}: {value!r}: not a principal (whitespace)")
    if bare.startswith("*"):
        return {"safe_regex": {"regex": "spiffe://.*" + bare[1:]}}
    if bare.endswith("*"):
        if "/" in bare:  # 'td/...*': the trust domain part is whole, check it
            _trust_domain(bare.split("/", 1)[0], arg)
        return {"prefix": "spiffe://" + bare[:-1]}
    return {"exact": _spiffe_id(arg, value)}


def _authenticated(matcher: JsonDict) -> JsonDict:
    return {"authenticated": {"principal_name": matcher}}


def _or_ids(arg: str, values: Sequence[str]) -> JsonDict:
    """``or_ids`` of one :func:`_principal_matcher` per value (``arg[i]`` names each in errors)."""
    matchers = [_authenticated(_principal_matcher(f"{arg}[{i}]", v)) for i, v in enumerate(values)]
    return {"or_ids": {"ids": matchers}}


def _source_principal(arg: str, rule: SourceRule) -> JsonDict:
    """Istio's ``rule.principal`` for ``source.principals``/``notPrincipals``: ``and_ids`` of the
    ``or_ids`` of the principals and a ``not_id`` of the ``or_ids`` of the notPrincipals."""
    if not isinstance(rule, SourceRule):
        raise EnvoyError(f"{arg}: {rule!r}: a SourceRule")
    if not rule.principals and not rule.not_principals:
        raise EnvoyError(f"{arg}: an empty source would match every caller")
    ids: list[JsonDict] = []
    if rule.principals:
        ids.append(_or_ids(f"{arg}.principals", rule.principals))
    if rule.not_principals:
        ids.append({"not_id": _or_ids(f"{arg}.not_principals", rule.not_principals)})
    return {"and_ids": {"ids": ids}}


def _rbac_rules(
    action: Literal["ALLOW", "DENY"], arg: str, ids: Sequence[str], sources: Sequence[SourceRule] = ()
) -> JsonDict:
    name = "allowed-spiffe-ids" if action == "ALLOW" else "denied-spiffe-ids"
    policies: JsonDict = {}
    if ids or (action == "ALLOW" and not sources):
        # an ALLOW with no principals admits nobody; a DENY with none denies nobody
        principals = [_authenticated({"exact": _spiffe_id(f"{arg}[{i}]", p)}) for i, p in enumerate(ids)]
        policies[name] = {"permissions": [{"any": True}], "principals": principals}
    if sources:
        policies[f"{action.lower()}-sources"] = {
            "permissions": [{"any": True}],
            "principals": [_source_principal(f"{arg}_sources[{i}]", r) for i, r in enumerate(sources)],
        }
    return {"action": action, "policies": policies}


def _rbac_filter(
    layer: Literal["http", "network"], action: Literal["ALLOW", "DENY"], rules: JsonDict
) -> JsonDict:
    typed_config: JsonDict = {"@type": _T + f"envoy.extensions.filters.{layer}.rbac.v3.RBAC"}
    if layer == "network":  # the network filter requires a stat_prefix
        typed_config["stat_prefix"] = f"inbound_rbac_{action.lower()}"
    typed_config["rules"] = rules
    return {"name": f"envoy.filters.{layer}.rbac.{action.lower()}", "typed_config": typed_config}


def loopback_admin() -> JsonDict:
    """The admin endpoint on 127.0.0.1, any free port (:class:`EnvoyProcess` reads it back)."""
    return {"address": _address("127.0.0.1", 0)}


def _bootstrap(
    node_id: str, node_cluster: str, sds_socket: str | Path, listener: JsonDict, cluster: JsonDict
) -> JsonDict:
    """One listener, the SDS cluster and one more cluster, with a loopback admin endpoint."""
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": loopback_admin(),
        "static_resources": {"listeners": [listener], "clusters": [sds_cluster(sds_socket), cluster]},
    }


def sidecar_bootstrap(
    *,
    sds_socket: str | Path,
    trust_domain: str,
    backend_port: int,
    backend_host: str = "127.0.0.1",
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    node_id: str = DEFAULT_NODE_ID,
    node_cluster: str = "httpbin.default",
    allowed_principals: Sequence[str] | None = None,
    denied_principals: Sequence[str] | None = None,
    denied_sources: Sequence[SourceRule] | None = None,
    rbac: Literal["http", "network"] = "http",
    validation: Literal["rootca", "spiffe"] = "rootca",
    trust_domains: Sequence[str] | None = None,
    san_prefixes: Sequence[str] | None = None,
    cert_name: str = "default",
    rootca_name: str = "ROOTCA",
    all_name: str = "ALL",
    delta: bool = False,
    listener_name: str = "inbound",
) -> JsonDict:
    """An Istio-sidecar-shaped bootstrap: STRICT mTLS inbound listener → plain HTTP backend.

    ``validation="rootca"`` checks client certificates against SDS ``rootca_name`` and, as Istio does,
    requires a URI SAN starting with ``spiffe://<td>/`` for one of ``trust_domains`` (Istio's list:
    ``meshConfig.trustDomain``, ``trustDomainAliases``, ``caCertificates[].trustDomains``; default
    ``[trust_domain]``). ``san_prefixes`` replaces the matchers outright (``[]`` = none; not with
    ``trust_domains``). ``"spiffe"`` uses the SPIFFE validator from SDS ``all_name`` (every trust domain
    with its own bundle; no SAN prefix unless given). ``allowed_principals`` (``spiffe://…`` or Istio's
    ``td/path``; an ALLOW AuthorizationPolicy) admits only those; ``denied_principals`` (a DENY policy)
    refuses those, checked first; ``denied_sources`` adds DENY sources with Istio's wildcards and
    ``notPrincipals`` (e.g. every identity of the apps' trust domain but the admitted apps). Refused
    callers get HTTP 403 (``rbac="http"``) or a closed connection (``"network"``).
    """
    td = _trust_domain(trust_domain)
    _port("backend_port", backend_port)
    _port("listen_port", listen_port)
    if validation not in ("rootca", "spiffe"):
        raise EnvoyError(f"validation: {validation!r}: must be 'rootca' or 'spiffe'")
    if rbac not in ("http", "network"):
        raise EnvoyError(f"rbac: {rbac!r}: must be 'http' or 'network'")
    if trust_domains is not None and san_prefixes is not None:
        raise EnvoyError("trust_domains, san_prefixes: give one (san_prefixes replaces the SAN matchers)")
    if trust_domains is not None and not trust_domains:
        raise EnvoyError("trust_domains: []: Istio always validates at least the mesh trust domain")
    if san_prefixes is None:
        listed = trust_domains if trust_domains is not None else [td]
        tds = dict.fromkeys(_trust_domain(name, f"trust_domains[{i}]") for i, name in enumerate(listed))
        san_prefixes = [f"spiffe://{t}/" for t in tds] if validation == "rootca" or trust_domains else []
    sds = sds_config(delta=delta)
    tls_context: JsonDict = {
        "@type": _TLS + "DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls_context(
            cert_name=cert_name,
            validation_name=rootca_name if validation == "rootca" else all_name,
            sds=sds,
            san_matchers=[{"san_type": "URI", "matcher": {"prefix": p}} for p in san_prefixes],
        ),
    }
    http_filters: list[JsonDict] = []
    network_filters: list[JsonDict] = []
    # Istio's order: DENY filter before ALLOW filter (a denied principal never reaches the ALLOW check)
    steps: list[tuple[Literal["ALLOW", "DENY"], str, Sequence[str] | None, Sequence[SourceRule]]] = [
        ("DENY", "denied_principals", denied_principals, denied_sources or ()),
        ("ALLOW", "allowed_principals", allowed_principals, ()),
    ]
    for action, arg, ids, sources in steps:
        if ids is not None or sources:
            rules = _rbac_rules(action, arg, ids or (), sources)
            rbac_filter = _rbac_filter(rbac, action, rules)
            (http_filters if rbac == "http" else network_filters).append(rbac_filter)
    http_filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    hcm: JsonDict = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound",
            "forward_client_cert_details": "SANITIZE_SET",
            "set_current_client_cert_details": {"uri": True},
            "route_config": {
                "name": "inbound",
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                    }
                ],
            },
            "http_filters": http_filters,
        },
    }
    listener: JsonDict = {
        "name": listener_name,
        "address": _address(listen_host, listen_port),
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": _T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                },
            }
        ],
        "filter_chains": [
            {
                "filter_chain_match": {"transport_protocol": "tls"},
                "transport_socket": tls_socket(tls_context),
                "filters": [*network_filters, hcm],
            }
        ],
    }
    backend = static_cluster("backend", backend_host, backend_port)
    return _bootstrap(node_id, node_cluster, sds_socket, listener, backend)


def egress_bootstrap(
    *,
    sds_socket: str | Path,
    upstream_port: int,
    server_spiffe_ids: Sequence[str],
    upstream_host: str = "127.0.0.1",
    sni: str | None = None,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    node_id: str = "sidecar~127.0.0.1~external-app.external~external.svc.cluster.local",
    node_cluster: str = "external-app",
    cert_name: str = "default",
    rootca_name: str = "ROOTCA",
    delta: bool = False,
    listener_name: str = "outbound",
) -> JsonDict:
    """Envoy as a client-side proxy: plain TCP in on ``listen_port`` → mTLS to the upstream.

    The upstream's certificate must chain to SDS ``rootca_name`` and carry one of
    ``server_spiffe_ids`` as its URI SAN (exact match; hostname verification is not used — SVIDs need
    no DNS SAN). ``sni`` sets the TLS server name if the upstream needs one.
    """
    if not server_spiffe_ids:
        raise EnvoyError("server_spiffe_ids: []: name at least one SPIFFE ID the server must present")
    ids = [_spiffe_id(f"server_spiffe_ids[{i}]", s) for i, s in enumerate(server_spiffe_ids)]
    _port("upstream_port", upstream_port)
    _port("listen_port", listen_port)
    sds = sds_config(delta=delta)
    upstream_tls: JsonDict = {
        "@type": _TLS + "UpstreamTlsContext",
        "common_tls_context": _common_tls_context(
            cert_name=cert_name,
            validation_name=rootca_name,
            sds=sds,
            san_matchers=[{"san_type": "URI", "matcher": {"exact": i}} for i in ids],
        ),
    }
    if sni:
        upstream_tls["sni"] = sni
    listener = tcp_proxy_listener(
        listener_name, listen_host, listen_port, cluster="upstream", stat_prefix="outbound"
    )
    upstream = static_cluster("upstream", upstream_host, upstream_port, tls_socket(upstream_tls))
    return _bootstrap(node_id, node_cluster, sds_socket, listener, upstream)
