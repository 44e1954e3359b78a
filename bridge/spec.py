"""Loading the bridge spec: YAML in, a validated :class:`bridge.model.Bridge` out — or every problem at once.

``load_spec`` is the only reader of bridge specs. It maps ``yaml.YAMLError`` once (with ``file:line``
from ``problem_mark``), then walks the document collecting *every* problem as
``<path>: <value!r>: <rule>`` (or ``<path>: <rule>`` when there is no value, e.g. a missing key) and
raises one :class:`bridge.errors.SpecError` carrying them all. Unknown keys are errors (with a
"did you mean" hint from :mod:`difflib`); so are duplicate YAML keys. Names are checked for what the
consumer that receives them allows (:mod:`bridge.names`); SPIFFE IDs by ``sds_server.spiffe_id``.

The document (camelCase keys)::

    apiVersion: meshbridge.io/v1alpha1
    kind: Bridge
    trustDomain: example.org
    mesh: {istioNamespace, revision, profile, clusterDomain, sds: {image, workloadApiSocket},
           gateways: [{name, kind, labels, namespace}]}
    meshServices: [{name, namespace, serviceAccount, port, protocol, labels,
                    meshCallers: {principals, namespaces}}]
    externalApps:
    - {name, mode, spiffeId, parentId, serverAuth, targets: [NAME | {service, listenPort}],
       scone: {casAddress, casNamespace, sessionName, serviceName, mrenclaves, command, pwd, tolerations},
       ghostunnel: {binary, certSource, workloadApiAddr, workloadApiSelectors, certDir, timedReload,
                    statusPort}}
    federation: {trustDomain, bundleEndpointURL, bundleEndpointProfile, endpointSpiffeId}
    spire: {svidstorePlugin, parentId, casConnection, casClientCertificate, casClientKey,
            trustAnchorCertificate, casPredecessorDir, templatesDir, bundleSessionName,
            federatedBundlesSessionName, clusterName, className, svidTtl}

The keys each mapping accepts are the ``_*_KEYS`` tables below; defaults are the ``DEFAULT_*`` constants
and the ``default=`` arguments at each read; ``examples/httpbin/bridge.yaml`` is a commented example.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from bridge import names
from bridge.errors import SpecError
from bridge.model import (
    API_VERSION,
    APP_MODES,
    BUNDLE_ENDPOINT_PROFILES,
    GATEWAY_KINDS,
    KIND,
    PROTOCOLS,
    SVIDSTORE_PLUGINS,
    AppMode,
    Bridge,
    BundleEndpointProfile,
    ExternalApp,
    Federation,
    Gateway,
    GatewayKind,
    GhostunnelSettings,
    Mesh,
    MeshService,
    Protocol,
    SdsSettings,
    SpireSettings,
    SvidStorePlugin,
    Target,
)
from bridge.spec_reader import Reader, join, parse_yaml, read_text, suggest
from bridge.spec_scone import ghostunnel_ports, ghostunnel_settings, scone_settings
from scone.model import SVIDSTORE_STATE_DIR

__all__ = ["load_spec", "parse_document"]

MAX_PROBLEMS = 100
"""At most this many problems are reported (a generated spec gone wrong should not flood the terminal)."""
DEFAULT_SDS_IMAGE = "localhost/meshbridge/sds-server:0.1.0"
"""What ``make image`` builds; push it where the cluster pulls from and set ``mesh.sds.image``."""
DEFAULT_WORKLOAD_API_SOCKET = "/spiffe-workload-api/spire-agent.sock"
DEFAULT_SVIDSTORE_DIR = SVIDSTORE_STATE_DIR
"""Persistent: the plugin's templates and ``cas_predecessor_dir`` must survive a reboot (``/run`` is a
tmpfs; without its templates the agent does not start, and without the predecessor hashes it can never
update its sessions again - ufcg-lsd/spire ``doc/plugin_agent_svidstore_sconecas_sessionmanager.md``)."""
DEFAULT_CLASS_NAME = "spire-server-spire"
"""spire-controller-manager's class in the hardened SPIRE chart installed as the README does (release
``spire`` in namespace ``spire-server``): ``<release namespace>-<release name>``, with
``watchClassless: false`` (chart ``spire-server.controller-manager-class-name``); objects without it are
ignored (spire-controller-manager ``className``/``watchClassless`` settings)."""
VOLATILE_DIRS = ("/run/", "/var/run/", "/tmp/", "/dev/shm/")  # noqa: S108 - names paths to refuse, creates none

_TOP_KEYS = (
    "apiVersion",
    "kind",
    "trustDomain",
    "mesh",
    "meshServices",
    "externalApps",
    "federation",
    "spire",
)
_FEDERATION_KEYS = ("trustDomain", "bundleEndpointURL", "bundleEndpointProfile", "endpointSpiffeId")
_MESH_KEYS = ("istioNamespace", "revision", "profile", "clusterDomain", "sds", "gateways")
_GATEWAY_KEYS = ("name", "kind", "labels", "namespace")
_CALLER_KEYS = ("principals", "namespaces")
_SDS_KEYS = ("image", "workloadApiSocket")
_SERVICE_KEYS = (
    "name",
    "namespace",
    "serviceAccount",
    "port",
    "protocol",
    "labels",
    "meshCallers",
    "svidDnsNames",
)
_APP_KEYS = ("name", "mode", "spiffeId", "parentId", "serverAuth", "targets", "scone", "ghostunnel")
_TARGET_KEYS = ("service", "listenPort")
_SPIRE_KEYS = (
    "svidstorePlugin",
    "parentId",
    "casConnection",
    "casClientCertificate",
    "casClientKey",
    "trustAnchorCertificate",
    "casPredecessorDir",
    "templatesDir",
    "bundleSessionName",
    "federatedBundlesSessionName",
    "clusterName",
    "className",
    "svidTtl",
)


def load_spec(source: str | os.PathLike[str]) -> Bridge:
    """Load and validate a bridge spec.

    ``source`` is a path (``pathlib.Path``, or a one-line ``str`` ending in ``.yaml``/``.yml``/``.json``)
    or the YAML text itself. Raises :class:`bridge.errors.SpecError` listing every problem.
    """
    text, name = read_text(source)
    return parse_document(parse_yaml(text, name))


def parse_document(raw: object) -> Bridge:
    """Validate an already parsed YAML document (what ``yaml.safe_load`` gives) into a :class:`Bridge`."""
    r = Reader()
    top = r.mapping(raw, "", _TOP_KEYS)
    if isinstance(raw, dict):
        for key, want in (("apiVersion", API_VERSION), ("kind", KIND)):
            got = top.get(key)
            if got is None:
                r.note(key, f"required ({want!r})")
            elif got != want:
                r.bad(key, got, f"must be {want!r}")
    td = _trust_domain(r, top)
    mesh = _mesh(r, r.mapping(top.get("mesh"), "mesh", _MESH_KEYS))
    services = _services(r, top, td or "example.invalid", mesh)
    raw_federation = top.get("federation")
    federation = (
        _federation(r, r.mapping(raw_federation, "federation", _FEDERATION_KEYS), td)
        if raw_federation is not None
        else None
    )
    # an invalid federation block is reported once; the apps' trust domain is then unknown (no cascade)
    apps_td = federation.trust_domain if federation is not None else (td if raw_federation is None else None)
    spire = _spire(r, r.mapping(top.get("spire"), "spire", _SPIRE_KEYS), apps_td)
    apps = _apps(r, top, {s.key: s for s in services}, spire, td=td, apps_td=apps_td)
    if isinstance(raw, dict) and "spire" not in top:
        r.note("spire", "required (SVIDStore plugin and CAS connection)")
    _cross_checks(r, services, apps, spire)
    if r.problems:
        shown = r.problems[:MAX_PROBLEMS]
        if len(r.problems) > MAX_PROBLEMS:
            shown.append(f"<spec>: {len(r.problems) - MAX_PROBLEMS} more problems not shown")
        raise SpecError(shown)
    assert td is not None  # no problems means the trust domain parsed
    return Bridge(
        trust_domain=td, mesh=mesh, services=services, apps=apps, spire=spire, federation=federation
    )


def _federation(r: Reader, m: Mapping[str, object], mesh_td: str | None) -> Federation | None:
    """``federation:``: the external apps' own trust domain (SPIFFE Federation: bundle endpoint URL and
    profile, as spire-controller-manager's ``ClusterFederatedTrustDomain`` takes them)."""
    path = "federation"
    raw_td = m.get("trustDomain")
    td = None if raw_td is None else r.trust_domain(raw_td, f"{path}.trustDomain")
    if raw_td is None:
        r.note(
            f"{path}.trustDomain", "required (the external apps' own trust domain, e.g. 'apps.example.org')"
        )
    elif td is not None and td == mesh_td:
        r.bad(
            f"{path}.trustDomain",
            raw_td,
            "must differ from the mesh's trustDomain (federation joins two trust domains)",
        )
        td = None
    url = r.string(m, "bundleEndpointURL", path, check=_bundle_url) if m else None
    profile: BundleEndpointProfile = r.choice(  # type: ignore[assignment]
        m, "bundleEndpointProfile", path, BUNDLE_ENDPOINT_PROFILES, "https_spiffe"
    )
    endpoint_id: str | None = None
    raw_id = m.get("endpointSpiffeId")
    if profile == "https_spiffe":
        if raw_id is not None:
            endpoint_id = r.spiffe_id(raw_id, f"{path}.endpointSpiffeId", td)
        elif td is not None:
            endpoint_id = f"spiffe://{td}/spire/server"  # SPIRE server's own ID
    elif raw_id is not None:
        r.note(f"{path}.endpointSpiffeId", "only for bundleEndpointProfile 'https_spiffe'")
    if td is None or url is None:
        return None
    return Federation(
        trust_domain=td, bundle_endpoint_url=url, profile=profile, endpoint_spiffe_id=endpoint_id
    )


def _bundle_url(value: str) -> str | None:
    if not value.startswith("https://"):
        return "must be an https:// URL (SPIFFE bundle endpoints are served over TLS)"
    authority = value.removeprefix("https://").split("/", 1)[0]
    if "@" in authority:
        return "must not contain user info"
    return names.host_port(authority, port_required=False)


def _trust_domain(r: Reader, top: Mapping[str, object]) -> str | None:
    raw = top.get("trustDomain")
    if raw is None:
        r.note("trustDomain", "required (e.g. 'example.org')")
        return None
    return r.trust_domain(raw, "trustDomain")


def _mesh(r: Reader, m: Mapping[str, object]) -> Mesh:
    sds_raw = r.mapping(m.get("sds"), "mesh.sds", _SDS_KEYS)
    sds = SdsSettings(
        image=r.string_or(sds_raw, "image", "mesh.sds", DEFAULT_SDS_IMAGE, names.image_reference),
        workload_api_socket=r.string_or(
            sds_raw, "workloadApiSocket", "mesh.sds", DEFAULT_WORKLOAD_API_SOCKET, names.socket_in_directory
        ),
    )
    gateways: list[Gateway] = []
    raw_gateways = m.get("gateways")
    items = [{"name": "istio-ingressgateway"}] if raw_gateways is None else r.seq(m, "gateways", "mesh")
    for i, raw in enumerate(items):
        path = f"mesh.gateways[{i}]"
        g = r.mapping(raw, path, _GATEWAY_KEYS)
        name = r.string(g, "name", path, check=names.dns1123_label)
        kind: GatewayKind = r.choice(g, "kind", path, GATEWAY_KINDS, "ingress")  # type: ignore[assignment]
        default_labels = {"istio": "ingressgateway" if kind == "ingress" else "egressgateway"}
        labels = _labels(r, g.get("labels", default_labels), f"{path}.labels", name or "")
        namespace = r.optional_string(g, "namespace", path, names.dns1123_label)
        if name is not None:
            gateways.append(Gateway(name=name, kind=kind, labels=labels, namespace=namespace))
    return Mesh(
        istio_namespace=r.string_or(m, "istioNamespace", "mesh", "istio-system", names.dns1123_label),
        revision=r.optional_string(m, "revision", "mesh", names.dns1123_label),
        profile=r.string_or(m, "profile", "mesh", "default", names.dns1123_label),
        cluster_domain=r.string_or(m, "clusterDomain", "mesh", "cluster.local", names.dns1123_subdomain),
        sds=sds,
        gateways=tuple(gateways),
    )


def _callers(r: Reader, raw: object, path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    m = r.mapping(raw, path, _CALLER_KEYS)
    principals = r.each(m, "principals", path, lambda item, p: r.spiffe_id(item, p, None))
    namespaces = r.strings(m, "namespaces", path, names.dns1123_label)
    return tuple(principals), tuple(namespaces)


_LABEL_VALUE_TYPE = "label values must be strings (quote numbers and booleans)"


def _labels(r: Reader, raw: object, path: str, name: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return (("app", name),)
    if not isinstance(raw, dict):
        r.bad(path, raw, "must be a mapping of label keys to values")
        return ()
    if not raw:
        r.note(path, "must not be empty: the AuthorizationPolicy selects the service's pods by these labels")
    out: list[tuple[str, str]] = []
    for key, value in raw.items():
        p = join(path, str(key))
        if (
            r.value_string(key, p, names.label_key, must="label keys must be strings") is not None
            and r.value_string(value, p, names.label_value, must=_LABEL_VALUE_TYPE) is not None
        ):
            out.append((key, value))
    return tuple(sorted(out))


def _services(r: Reader, top: Mapping[str, object], td: str, mesh: Mesh) -> tuple[MeshService, ...]:
    out: list[MeshService] = []
    seen: dict[str, str] = {}
    cluster_domain = mesh.cluster_domain
    for path, m in r.mappings(top, "meshServices", _SERVICE_KEYS, "'name' and 'port'"):
        name = r.string(m, "name", path, check=names.dns1035_label)
        namespace = r.string(m, "namespace", path, default="default", check=names.dns1123_label)
        if namespace is not None and namespace == mesh.istio_namespace:
            # istiod attaches a root-namespace AuthorizationPolicy to matching workloads in every
            # namespace (authorization.proto `selector`; model/authorization.go): this service's DENY/ALLOW
            # policies would reach other services' pods with the same labels
            r.bad(
                f"{path}.namespace",
                namespace,
                "Istio's root namespace (mesh.istioNamespace): its AuthorizationPolicies would apply to "
                "workloads with these labels in every namespace; give the service a namespace of its own",
            )
            namespace = None
        sa = r.string(m, "serviceAccount", path, default=name or "default", check=names.dns1123_subdomain)
        port = r.integer(m, "port", path, check=names.port)
        protocol: Protocol = r.choice(m, "protocol", path, PROTOCOLS, "http")  # type: ignore[assignment]
        labels = _labels(r, m.get("labels"), f"{path}.labels", name or "")
        principals, caller_namespaces = _callers(r, m.get("meshCallers"), f"{path}.meshCallers")
        if name is None or namespace is None or sa is None or port is None:
            raw_name, raw_ns = m.get("name"), m.get("namespace", "default")
            if isinstance(raw_name, str):
                r.invalid_services.update({raw_name, f"{raw_ns}/{raw_name}"})
            continue
        key = f"{namespace}/{name}"
        if key in seen:
            r.bad(f"{path}.name", name, f"duplicates {seen[key]} (service {key!r})")
            continue
        seen[key] = path
        out.append(
            MeshService(
                name=name,
                namespace=namespace,
                service_account=sa,
                port=port,
                protocol=protocol,
                labels=labels,
                spiffe_id=f"spiffe://{td}/ns/{namespace}/sa/{sa}",
                dns_names=(f"{name}.{namespace}.svc.{cluster_domain}", f"{name}.{namespace}.svc"),
                svid_dns_names=None
                if m.get("svidDnsNames") is None
                else r.boolean(m, "svidDnsNames", path, False),
                mesh_principals=principals,
                mesh_namespaces=caller_namespaces,
            )
        )
    return tuple(out)


def _resolve(r: Reader, ref: str, path: str, services: Mapping[str, MeshService]) -> MeshService | None:
    """The service ``ref`` names: its ``namespace/name`` key, or a name no other service has."""
    if ref in services:
        return services[ref]
    matches = [s for s in services.values() if s.name == ref]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        keys = ", ".join(repr(s.key) for s in matches)
        r.bad(path, ref, f"ambiguous mesh service name: write it as 'namespace/name' ({keys})")
        return None
    if ref in r.invalid_services:
        return None  # the service itself is reported already
    choices = sorted({s.name for s in services.values()} | set(services))
    r.note(path, f"no mesh service {ref!r}{suggest(ref, choices)}")
    return None


def _targets(
    r: Reader, m: Mapping[str, object], path: str, services: Mapping[str, MeshService], mode: str
) -> tuple[Target, ...]:
    out: list[Target] = []
    for j, raw in enumerate(r.seq(m, "targets", path, required=True)):
        tp = f"{path}.targets[{j}]"
        listen: int | None = None
        if isinstance(raw, str):
            service = _resolve(r, raw, tp, services)
        elif isinstance(raw, dict):
            t = r.mapping(raw, tp, _TARGET_KEYS)
            ref = r.string(t, "service", tp)
            service = _resolve(r, ref, f"{tp}.service", services) if ref is not None else None
            if "listenPort" in t and mode != "ghostunnel":
                r.note(
                    f"{tp}.listenPort", "only for mode 'ghostunnel' (the network shield needs no local port)"
                )
            else:
                listen = r.integer(t, "listenPort", tp, default=0, check=names.port) or None
        else:
            r.bad(tp, raw, "must be a mesh service name or a mapping {service, listenPort}")
            continue
        if service is None:
            continue
        if any(prev.service.key == service.key for prev in out):
            r.bad(tp, raw if isinstance(raw, str) else service.key, "duplicate target")
            continue
        if mode == "ghostunnel" and listen is None:
            listen = service.port
        if mode == "ghostunnel" and any(
            (p.service.name, p.service.port) == (service.name, service.port) for p in out
        ):
            r.bad(
                tp,
                service.key,
                "Ghostunnel names its CAS service ghostunnel-<service>-<port>: "
                "two targets with the same service name and port would collide",
            )
            continue
        out.append(Target(service=service, listen_port=listen))
    return tuple(out)


def _apps(
    r: Reader,
    top: Mapping[str, object],
    services: Mapping[str, MeshService],
    spire: SpireSettings,
    *,
    td: str | None,
    apps_td: str | None,
) -> tuple[ExternalApp, ...]:
    """External apps. Their SPIFFE IDs default to (and may be in) ``apps_td``, the federation's trust
    domain or else the mesh's (``None``: unknown, an invalid federation block); an ID in the mesh's trust
    domain stays possible (``check`` explains the exposure)."""
    allowed_tds = {t for t in (td, apps_td) if t is not None}
    out: list[ExternalApp] = []
    seen: dict[str, str] = {}
    for path, m in r.mappings(top, "externalApps", _APP_KEYS, "'name', 'targets' and 'scone'"):
        name = r.string(m, "name", path, check=names.dns1123_label)
        mode: AppMode = r.choice(m, "mode", path, APP_MODES, "network-shield")  # type: ignore[assignment]
        if "mode" not in m:
            r.note(f"{path}.mode", f"required (one of {', '.join(repr(x) for x in APP_MODES)})")
        spiffe_id = (
            _app_id(r, m["spiffeId"], f"{path}.spiffeId", allowed_tds)
            if m.get("spiffeId") is not None
            else (f"spiffe://{apps_td}/external/{name}" if apps_td and name else None)
        )
        parent_raw = m.get("parentId")
        parent = (
            spire.parent_id if parent_raw is None else r.spiffe_id(parent_raw, f"{path}.parentId", apps_td)
        )
        if parent_raw is None and not spire.parent_id:
            r.note(
                f"{path}.parentId", "required (or set spire.parentId): the SPIRE agent that stores the SVID"
            )
        server_auth = r.boolean(m, "serverAuth", path, default=True)
        if "serverAuth" in m and mode != "network-shield":
            r.note(
                f"{path}.serverAuth",
                "only for mode 'network-shield' (Ghostunnel always verifies --verify-uri)",
            )
        targets = _targets(r, m, path, services, mode)
        scone = scone_settings(r, m.get("scone"), f"{path}.scone", name or "app", mode=mode, spire=spire)
        ghostunnel: GhostunnelSettings | None = None
        if mode == "ghostunnel":
            ghostunnel = ghostunnel_settings(r, m.get("ghostunnel"), f"{path}.ghostunnel")
            ghostunnel_ports(r, targets, ghostunnel, path)
        elif "ghostunnel" in m:
            r.note(f"{path}.ghostunnel", "only for mode 'ghostunnel'")
        if name is None or spiffe_id is None or not parent:
            continue
        if name in seen:
            r.bad(f"{path}.name", name, f"duplicates {seen[name]}.name")
            continue
        seen[name] = path
        out.append(
            ExternalApp(
                name=name,
                mode=mode,
                spiffe_id=spiffe_id,
                parent_id=parent,
                scone=scone,
                targets=targets,
                server_auth=server_auth,
                ghostunnel=ghostunnel,
            )
        )
    return tuple(out)


def _app_id(r: Reader, raw: object, path: str, allowed: set[str]) -> str | None:
    sid = r.spiffe_id(raw, path, None)
    if sid is None:
        return None
    td = sid.removeprefix("spiffe://").split("/", 1)[0]
    if td not in allowed:
        r.bad(path, raw, f"must be in the trust domain {' or '.join(repr(t) for t in sorted(allowed))}")
        return None
    return sid


def _https_url(value: str) -> str | None:
    if not value.startswith("https://"):
        return "must be the https:// URL of CAS, e.g. 'https://cas.example.org:8081'"
    return names.host_port(value.removeprefix("https://"), port_required=True)


def _spire(r: Reader, m: Mapping[str, object], td: str | None) -> SpireSettings:
    path = "spire"
    plugin: SvidStorePlugin = r.choice(  # type: ignore[assignment]
        m, "svidstorePlugin", path, SVIDSTORE_PLUGINS, "sconecas_sessionmanager"
    )
    parent_raw = m.get("parentId")
    parent = r.spiffe_id(parent_raw, "spire.parentId", td) if parent_raw is not None else None
    cas = r.string(m, "casConnection", path, check=_https_url) if m else None

    def file(key: str, default: str) -> str:
        return r.string_or(m, key, path, default, names.absolute_path)

    ttl_text = r.string_or(m, "svidTtl", path, "1h", names.duration)
    ttl = int(names.duration_seconds(ttl_text))
    if ttl < 60:
        r.bad("spire.svidTtl", ttl_text, "must be at least 1m")
    for key in ("casPredecessorDir", "templatesDir"):
        value = m.get(key)
        if isinstance(value, str) and (value + "/").startswith(VOLATILE_DIRS):
            r.bad(
                f"spire.{key}",
                value,
                "must be on persistent storage (/run and /tmp are wiped at boot: the agent then fails to "
                "start, and lost predecessor hashes stop SVID updates in CAS for good)",
            )
    return SpireSettings(
        svidstore_plugin=plugin,
        parent_id=parent or "",
        cas_connection=cas or "",
        cas_client_certificate=file("casClientCertificate", f"{DEFAULT_SVIDSTORE_DIR}/cas-client.crt"),
        cas_client_key=file("casClientKey", f"{DEFAULT_SVIDSTORE_DIR}/cas-client.key"),
        trust_anchor_certificate=file(
            "trustAnchorCertificate", f"{DEFAULT_SVIDSTORE_DIR}/cas-trust-anchor.pem"
        ),
        cas_predecessor_dir=file("casPredecessorDir", f"{DEFAULT_SVIDSTORE_DIR}/predecessors"),
        templates_dir=file("templatesDir", f"{DEFAULT_SVIDSTORE_DIR}/templates"),
        bundle_session_name=r.string_or(
            m, "bundleSessionName", path, "spire-bundle", names.scone_session_name
        ),
        federated_bundles_session_name=r.string_or(
            m, "federatedBundlesSessionName", path, "spire-federated-bundles", names.scone_session_name
        ),
        cluster_name=r.string_or(m, "clusterName", path, "cluster", names.dns1123_label),
        class_name=r.string_or(m, "className", path, DEFAULT_CLASS_NAME, names.dns1123_subdomain),
        svid_ttl=ttl,
    )


def _cross_checks(
    r: Reader, services: tuple[MeshService, ...], apps: tuple[ExternalApp, ...], spire: SpireSettings
) -> None:
    ids: dict[str, str] = {}
    for i, s in enumerate(services):
        ids.setdefault(s.spiffe_id, f"meshServices[{i}]")
    for i, a in enumerate(apps):
        where = ids.get(a.spiffe_id)
        if where is not None:
            r.bad(f"externalApps[{i}].spiffeId", a.spiffe_id, f"SPIFFE ID already used by {where}")
        ids.setdefault(a.spiffe_id, f"externalApps[{i}]")
    sessions: dict[str, str] = {
        spire.bundle_session_name: "spire.bundleSessionName",
        spire.federated_bundles_session_name: "spire.federatedBundlesSessionName",
    }
    for i, a in enumerate(apps):
        qualified = a.scone.qualified_session_name
        if qualified in sessions:
            r.bad(
                f"externalApps[{i}].scone.sessionName",
                a.scone.session_name,
                f"CAS session {qualified!r} already used by {sessions[qualified]}",
            )
        sessions.setdefault(qualified, f"externalApps[{i}].scone.sessionName")
