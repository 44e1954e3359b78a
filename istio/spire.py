"""SPIRE registration: ``ClusterSPIFFEID`` per mesh service, entries for the external apps.

Sources:

* spire-controller-manager v0.6.6 ``ClusterSPIFFEID`` (``spire.spiffe.io/v1alpha1``; schema in
  ``shared/schemas``) and Istio's SPIRE guide for the ID template
  ``spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}``.
* ``spire-server entry create`` (spire ``cmd/spire-server/cli/entry/create.go``) and its ``-data`` file
  (shape of spire ``test/fixture/registration/good.json``).
* SVIDStore selectors: ufcg-lsd/spire ``doc/plugin_agent_svidstore_sconecas_sessionmanager.md`` (type
  ``sconecas_sessionmanager``, values ``session_name:<ns/name>`` and ``session_hash:<hash>``, both
  required: ``selectorsFromMetadata`` refuses an entry without either) and, for the tutorial plugin,
  ``pkg/agent/plugin/svidstore/scone/scone.go`` (selector *types* ``cas_session_name`` and
  ``cas_session_hash``, plus ``svidstore:type:scone_cas_secretsmanager``).

The CAS session hash exists only once the app's session is posted (``scone session create``), so the
entries script takes it at run time and refuses to run without it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from istio._checks import DNS1123_SUBDOMAIN, SPIFFE_ID, TRUST_DOMAIN, check_service, is_subdomain
from istio.errors import IstioError, raise_problems
from istio.model import (
    DEFAULT_ROOT_NAMESPACE,
    ClusterSpiffeIdParams,
    EntriesParams,
    ExternalAppEntry,
    FederatedTrustDomainParams,
    Gateway,
    Labels,
    MeshService,
    Selector,
    SvidStorePluginName,
)

__all__ = [
    "ISTIO_SPIFFE_ID_TEMPLATE",
    "SPIRE_API_VERSION",
    "cluster_spiffe_id_name",
    "entry_selectors",
    "mesh_spiffe_id",
    "render_cluster_federated_trust_domain",
    "render_cluster_spiffe_id",
    "render_entries_json",
    "render_entries_script",
    "render_gateway_cluster_spiffe_id",
    "service_dns_names",
]

SPIRE_API_VERSION = "spire.spiffe.io/v1alpha1"
ISTIO_SPIFFE_ID_TEMPLATE = (
    "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}"
)
_HASH = re.compile(r"^[0-9a-f]{64}$")
_SESSION = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


def mesh_spiffe_id(trust_domain: str, service: MeshService) -> str:
    """The SPIFFE ID Istio gives the service's pods: ``spiffe://<td>/ns/<ns>/sa/<sa>``."""
    if not TRUST_DOMAIN.match(trust_domain):
        raise IstioError(f"trust_domain: {trust_domain!r}: lowercase letters, digits, '.', '-' and '_' only")
    return f"spiffe://{trust_domain}/ns/{service.namespace}/sa/{service.service_account}"


def service_dns_names(service: MeshService, cluster_domain: str = "cluster.local") -> tuple[str, str]:
    """``(<svc>.<ns>.svc.<cluster_domain>, <svc>.<ns>.svc)``: the names clients dial."""
    short = f"{service.name}.{service.namespace}.svc"
    return (f"{short}.{cluster_domain}", short)


def cluster_spiffe_id_name(service: MeshService) -> str:
    """``meshbridge-<namespace>-<service>`` (cluster-scoped, so the namespace is part of the name)."""
    return f"meshbridge-{service.namespace}-{service.name}"


def _spire_resource(
    kind: str, name: str, spec: dict[str, object], class_name: str | None
) -> dict[str, object]:
    """A spire-controller-manager resource; ``className`` (last in ``spec``) names the controller class
    that owns it."""
    if class_name is not None:
        spec["className"] = class_name
    return {"apiVersion": SPIRE_API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def _istio_id_spec(namespace: str, pod_labels: Labels) -> dict[str, object]:
    """A ``ClusterSPIFFEID`` spec giving the pods with ``pod_labels`` their Istio SPIFFE ID.

    ``namespaceSelector`` pins the namespace (``kubernetes.io/metadata.name``, set by Kubernetes on
    every namespace) so that pods with the same labels elsewhere do not match.
    """
    return {
        "spiffeIDTemplate": ISTIO_SPIFFE_ID_TEMPLATE,
        "podSelector": {"matchLabels": dict(pod_labels)},
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
    }


def render_cluster_spiffe_id(params: ClusterSpiffeIdParams) -> dict[str, object]:
    """The ``ClusterSPIFFEID`` giving the service's pods their Istio SPIFFE ID (and DNS SANs if asked)."""
    svc = params.service
    problems: list[str] = []
    check_service(problems, svc)
    for i, td in enumerate(params.federates_with):
        if not TRUST_DOMAIN.match(td):
            problems.append(f"federates_with[{i}]: {td!r}: a trust domain name")
    if not DNS1123_SUBDOMAIN.match(params.cluster_domain):
        problems.append(f"cluster_domain: {params.cluster_domain!r}: a DNS domain such as 'cluster.local'")
    if len(cluster_spiffe_id_name(svc)) > 253:
        problems.append(f"service: {cluster_spiffe_id_name(svc)!r}: the ClusterSPIFFEID name exceeds 253")
    raise_problems(problems)
    spec = _istio_id_spec(svc.namespace, svc.pod_labels)
    if params.dns_names:
        spec["dnsNameTemplates"] = list(service_dns_names(svc, params.cluster_domain))
    if params.federates_with:
        spec["federatesWith"] = sorted(set(params.federates_with))
    if params.ttl is not None:
        spec["ttl"] = params.ttl
    return _spire_resource("ClusterSPIFFEID", cluster_spiffe_id_name(svc), spec, params.class_name)


def render_gateway_cluster_spiffe_id(
    gateway: Gateway, root_namespace: str = DEFAULT_ROOT_NAMESPACE, class_name: str | None = None
) -> dict[str, object]:
    """The ``ClusterSPIFFEID`` of a gateway put on SPIRE by the overlay (Istio's SPIRE guide: gateways
    without a matching entry never become Ready). Same Istio ID template; the gateway's pod labels in
    its namespace (``gateway.namespace`` or the Istio root namespace)."""
    namespace = gateway.namespace if gateway.namespace is not None else root_namespace
    problems: list[str] = []
    check_service(problems, MeshService("gateway", namespace, "gateway", 1, gateway.labels), path="gateway")
    name = f"meshbridge-gateway-{namespace}-{gateway.name}"
    if not is_subdomain(name):
        problems.append(f"gateway.name: {gateway.name!r}: gives the invalid ClusterSPIFFEID name {name!r}")
    raise_problems(problems)
    return _spire_resource("ClusterSPIFFEID", name, _istio_id_spec(namespace, gateway.labels), class_name)


def render_cluster_federated_trust_domain(params: FederatedTrustDomainParams) -> dict[str, object]:
    """The ``ClusterFederatedTrustDomain`` through which the mesh's SPIRE server fetches ``peer``'s
    bundle from its bundle endpoint (spire-controller-manager ``spire.spiffe.io/v1alpha1``; the
    ``https_spiffe`` profile needs the endpoint's SPIFFE ID, ``https_web`` authenticates it by Web PKI).

    Federating a trust domain only makes its bundle *available*: SPIRE hands it to the pods whose
    entries name it in ``federatesWith``, nobody else.
    """
    peer = params.peer
    problems: list[str] = []
    if not TRUST_DOMAIN.match(peer.trust_domain) or len(peer.trust_domain) > 255:
        problems.append(f"peer.trust_domain: {peer.trust_domain!r}: a trust domain name")
    url = peer.bundle_endpoint_url
    authority = url.removeprefix("https://").split("/", 1)[0]
    if not url.startswith("https://") or not authority or "@" in authority or any(c.isspace() for c in url):
        problems.append(f"peer.bundle_endpoint_url: {url!r}: an https:// URL without user info")
    if peer.profile not in ("https_spiffe", "https_web"):
        problems.append(f"peer.profile: {peer.profile!r}: 'https_spiffe' or 'https_web'")
    if peer.profile == "https_spiffe" and (
        peer.endpoint_spiffe_id is None or not SPIFFE_ID.match(peer.endpoint_spiffe_id)
    ):
        problems.append(
            f"peer.endpoint_spiffe_id: {peer.endpoint_spiffe_id!r}: the bundle endpoint's SPIFFE ID "
            "(required by the https_spiffe profile)"
        )
    name = params.name if params.name is not None else peer.trust_domain.replace("_", "-")
    if not is_subdomain(name):
        problems.append(f"name: {name!r}: a DNS-1123 subdomain")
    raise_problems(problems)
    profile: dict[str, object] = {"type": peer.profile}
    if peer.profile == "https_spiffe":
        profile["endpointSPIFFEID"] = peer.endpoint_spiffe_id
    spec: dict[str, object] = {
        "trustDomain": peer.trust_domain,
        "bundleEndpointURL": url,
        "bundleEndpointProfile": profile,
    }
    return _spire_resource("ClusterFederatedTrustDomain", name, spec, params.class_name)


def entry_selectors(
    entry: ExternalAppEntry, plugin: SvidStorePluginName, session_hash: str | None
) -> tuple[Selector, ...]:
    """The entry's selectors: its own, then the SVIDStore ones when its SVID goes to CAS.

    ``session_hash`` ``None`` renders the hash selector's value as an empty string: only the script
    renderer does that, to splice the run-time hash in.
    """
    if entry.cas_session is None:
        return entry.selectors
    value = session_hash if session_hash is not None else ""
    store: tuple[Selector, ...]
    if plugin == "sconecas_sessionmanager":
        store = (
            Selector("sconecas_sessionmanager", f"session_name:{entry.cas_session}"),
            Selector("sconecas_sessionmanager", f"session_hash:{value}"),
        )
    else:
        store = (
            Selector("svidstore", "type:scone_cas_secretsmanager"),
            Selector("cas_session_name", entry.cas_session),
            Selector("cas_session_hash", value),
        )
    return (*entry.selectors, *store)


def _trust_domain_id(trust_domain: str) -> str:
    """``other.org`` -> ``spiffe://other.org``: the form ``-federatesWith`` and ``federates_with`` document
    ("SPIFFE ID of a trust domain to federate with")."""
    return f"spiffe://{trust_domain}"


def _check_entries(params: EntriesParams) -> None:
    problems: list[str] = []
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", params.spire_server):
        problems.append(f"spire_server: {params.spire_server!r}: a command name or path ([A-Za-z0-9_./-])")
    seen: dict[str, int] = {}
    for i, e in enumerate(params.entries):
        where = f"entries[{i}]"
        if not SPIFFE_ID.match(e.spiffe_id):
            problems.append(f"{where}.spiffe_id: {e.spiffe_id!r}: a SPIFFE ID 'spiffe://<td>/<path>'")
        if not SPIFFE_ID.match(e.parent_id):
            problems.append(f"{where}.parent_id: {e.parent_id!r}: a SPIFFE ID 'spiffe://<td>/<path>'")
        if e.cas_session is None and not e.selectors:
            problems.append(f"{where}.selectors: (): a Workload API entry needs at least one selector")
        elif e.cas_session is not None:
            if not _SESSION.match(e.cas_session):
                problems.append(
                    f"{where}.cas_session: {e.cas_session!r}: a CAS session name '<namespace>/<name>'"
                )
            if e.cas_session in seen:
                problems.append(
                    f"{where}.cas_session: {e.cas_session!r}: already used by entries[{seen[e.cas_session]}]"
                )
            seen.setdefault(e.cas_session, i)
        for j, sel in enumerate(e.selectors):
            if not sel.type or ":" in sel.type or not sel.value or any(c.isspace() for c in str(sel)):
                problems.append(f"{where}.selectors[{j}]: {str(sel)!r}: 'type:value' without spaces")
        if e.x509_svid_ttl is not None and e.x509_svid_ttl <= 0:
            problems.append(f"{where}.x509_svid_ttl: {e.x509_svid_ttl!r}: a positive number of seconds")
        for j, td in enumerate(e.federates_with):
            if not TRUST_DOMAIN.match(td):
                problems.append(f"{where}.federates_with[{j}]: {td!r}: a trust domain name")
        for j, dns in enumerate(e.dns_names):
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", dns):
                problems.append(f"{where}.dns_names[{j}]: {dns!r}: a DNS name")
    raise_problems(problems)


def render_entries_json(params: EntriesParams, session_hashes: Mapping[str, str]) -> dict[str, object]:
    """``{"entries": [...]}`` for ``spire-server entry create -data FILE``.

    ``session_hashes`` maps each CAS session name to the hash ``scone session create`` returned; every
    entry whose SVID goes to CAS needs one (the plugin refuses entries without it).
    """
    _check_entries(params)
    problems: list[str] = []
    entries: list[dict[str, object]] = []
    for i, e in enumerate(params.entries):
        session_hash: str | None = None
        if e.cas_session is not None:
            session_hash = session_hashes.get(e.cas_session)
            if session_hash is None:
                problems.append(
                    f"entries[{i}].cas_session: {e.cas_session!r}: no session hash given; post the session "
                    "with 'scone session create' first and pass the hash it prints"
                )
                continue
            if not _HASH.match(session_hash):
                problems.append(
                    f"session_hashes[{e.cas_session!r}]: {session_hash!r}: 64 lowercase hex digits"
                )
                continue
        out: dict[str, object] = {
            "spiffe_id": e.spiffe_id,
            "parent_id": e.parent_id,
            "selectors": [
                {"type": s.type, "value": s.value} for s in entry_selectors(e, params.plugin, session_hash)
            ],
        }
        if e.x509_svid_ttl is not None:
            out["x509_svid_ttl"] = e.x509_svid_ttl
        if e.dns_names:
            out["dns_names"] = list(e.dns_names)
        if e.federates_with:
            out["federates_with"] = [_trust_domain_id(td) for td in e.federates_with]
        if e.hint is not None:
            out["hint"] = e.hint
        if e.cas_session is not None and params.plugin == "sconecas_sessionmanager":
            out["store_svid"] = True
        entries.append(out)
    raise_problems(problems)
    return {"entries": entries}


_SCRIPT_HEAD = r"""#!/usr/bin/env bash
# SPIRE registration entries for the external apps, generated by meshbridge.
#
# Usage: %(prog)s SESSION=HASH | SESSION=@FILE | SESSION=- ...
#   SESSION  the app's CAS session name (<namespace>/<name>)
#   HASH     the session hash 'scone session create' printed when the session was posted
#   @FILE    read the hash from a file holding 'scone session create' output
#   -        read the hash from standard input, e.g.
#            scone session create app.yaml | %(prog)s %(example)s=-
# Every entry whose SVID goes to CAS needs its session's hash: the SVIDStore plugin only exports the
# SVID to the session with that hash. Without one the script creates nothing and exits 2.
# SPIRE_SERVER overrides the spire-server command.
set -euo pipefail

SPIRE_SERVER="${SPIRE_SERVER:-%(server)s}"
session_names=()
session_hashes=()

die() { printf 'error: %%s\n' "$*" >&2; exit 2; }

hash_from_output() {  # the last 64-hex-digit word of 'scone session create' output
  grep -oE '[0-9a-f]{64}' | tail -n 1 || true
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,${/^#/!q;s/^# \{0,1\}//;p;}' "$0"; exit 0 ;;
    *=*) name="${arg%%%%=*}"; value="${arg#*=}" ;;
    *) die "argument '$arg': expected SESSION=HASH, SESSION=@FILE or SESSION=- (see --help)" ;;
  esac
  case "$value" in
    @*) [[ -r "${value#@}" ]] || die "$name: cannot read '${value#@}'"
        value="$(hash_from_output < "${value#@}")" ;;
    -) value="$(hash_from_output)" ;;
  esac
  [[ "$value" =~ ^[0-9a-f]{64}$ ]] || die "$name: '$value': a session hash is 64 lowercase hex digits"
  session_names+=("$name")
  session_hashes+=("$value")
done

session_hash() {  # session_hash NAME: the hash given for NAME, or refuse to go on
  local i
  for i in "${!session_names[@]}"; do
    if [[ "${session_names[$i]}" == "$1" ]]; then printf '%%s' "${session_hashes[$i]}"; return 0; fi
  done
  die "no session hash for CAS session '$1': post it with 'scone session create'" \
      "and pass $1=<hash> (see --help)"
}

# Idempotent registration. `spire-server entry show` prints one block per entry ("Entry ID         : ID",
# then one "Selector         : type:value" line per selector; spire cmd/spire-server/cli/entry/util.go
# printEntry); its -selector filter matches entries holding *at least* the given selectors.
ids_in() {  # ids_in SHOW-OUTPUT [SELECTOR]: Entry IDs listed (those holding SELECTOR, if given)
  printf '%%s\n' "$1" | awk -v want="${2-}" '
    /^Entry ID *:/ {id = $NF; if (want == "") print id}
    /^Selector *:/ {sub(/^Selector *: */, ""); if (want != "" && $0 == want) print id}'
}

ensure_entry() {  # ensure_entry SPIFFE_ID KEY_SELECTOR PIN_SELECTOR SOCKET-FLAGS... -- ENTRY-FLAGS...
  # One entry per (SPIFFE ID, KEY_SELECTOR): the app's CAS session name, or a Workload API entry's
  # selectors. PIN_SELECTOR (the session hash selector, or "") already there: nothing to do. Otherwise
  # the existing entry is updated in place (a new session hash replaces the old one, so only one entry
  # ever posts to the app's SVID session) and any duplicate is deleted; no entry: create one.
  local spiffe_id="$1" key="$2" pin="$3"; shift 3
  local -a socket=()
  while [[ "$1" != "--" ]]; do socket+=("$1"); shift; done
  shift
  local shown
  shown="$("$SPIRE_SERVER" entry show "${socket[@]}" -spiffeID "$spiffe_id" -selector "$key")"
  local -a ids=() keep=()
  mapfile -t ids < <(ids_in "$shown")
  if [[ -n "$pin" ]]; then
    mapfile -t keep < <(ids_in "$shown" "$pin")
  elif (( ${#ids[@]} > 0 )); then
    keep=("${ids[0]}")
  fi
  local id
  if (( ${#ids[@]} == 0 )); then
    "$SPIRE_SERVER" entry create "${socket[@]}" "$@"
    printf 'created: %%s (%%s)\n' "$spiffe_id" "$key"
    return 0
  fi
  if (( ${#keep[@]} > 0 )); then
    printf 'unchanged: %%s (%%s), entry %%s\n' "$spiffe_id" "$key" "${keep[0]}"
  else
    keep=("${ids[0]}")
    "$SPIRE_SERVER" entry update "${socket[@]}" -entryID "${keep[0]}" "$@"
    printf 'updated: %%s (%%s), entry %%s\n' "$spiffe_id" "$key" "${keep[0]}"
  fi
  for id in "${ids[@]}"; do
    if [[ "$id" != "${keep[0]}" ]]; then
      "$SPIRE_SERVER" entry delete "${socket[@]}" -entryID "$id"
      printf 'deleted duplicate: entry %%s\n' "$id"
    fi
  done
}

"""


def render_entries_script(params: EntriesParams, *, prog: str = "spire-entries.sh") -> str:
    """A bash script registering every entry with ``spire-server``, idempotently.

    It checks that every needed session hash was given *before* touching any entry. Each entry is keyed
    by its SPIFFE ID and its CAS session-name selector (Workload API entries: their selectors): run
    twice with the same hash it changes nothing; with a new hash for one session it updates that app's
    entry in place (``entry update``), so two entries never post to the same SVID session. ``-storeSVID``
    is written ``-storeSVID=true``: it is a Go bool flag, and ``-storeSVID true`` would end flag parsing
    at ``true`` and silently drop every flag after it.
    """
    _check_entries(params)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", prog):
        raise IstioError(f"prog: {prog!r}: a file name ([A-Za-z0-9_.-])")
    sessions = [e.cas_session for e in params.entries if e.cas_session is not None]
    example = sessions[0] if sessions else "ns/app"
    head = _SCRIPT_HEAD % {"prog": prog, "server": params.spire_server, "example": example}
    hash_var = {session: f"hash_{i}" for i, session in enumerate(sessions)}  # sessions are unique (checked)
    lines = [head.rstrip("\n"), ""]
    lines += [f'{var}="$(session_hash {shlex.quote(session)})"' for session, var in hash_var.items()]
    lines.append("")
    socket: list[str] = []
    if params.server_socket_path is not None:
        socket = [f"-socketPath {shlex.quote(params.server_socket_path)}"]
    for e in params.entries:
        selectors = entry_selectors(e, params.plugin, None)
        quoted = [shlex.quote(str(sel)) for sel in selectors]
        pin = '""'
        if e.cas_session is not None:
            # The hash selector (always last): its value is spliced in at run time. Everything
            # before it is [A-Za-z0-9_:/-] (checked), so double quotes are enough.
            pin = quoted[-1] = f'"{selectors[-1]}${{{hash_var[e.cas_session]}}}"'
        flags = [f"-parentID {shlex.quote(e.parent_id)}", f"-spiffeID {shlex.quote(e.spiffe_id)}"]
        flags += [f"-selector {q}" for q in quoted]
        flags += [f"-dns {shlex.quote(dns)}" for dns in e.dns_names]
        flags += [f"-federatesWith {shlex.quote(_trust_domain_id(td))}" for td in e.federates_with]
        if e.x509_svid_ttl is not None:
            flags.append(f"-x509SVIDTTL {e.x509_svid_ttl}")
        if e.hint is not None:
            flags.append(f"-hint {shlex.quote(e.hint)}")
        if e.cas_session is not None and params.plugin == "sconecas_sessionmanager":
            flags.append("-storeSVID=true")
        # the key: the session-name selector (store entries) or the first selector (Workload API ones)
        key = quoted[-2] if e.cas_session is not None else quoted[0]
        head_args = [shlex.quote(e.spiffe_id), key, pin, *socket, "--"]
        lines.append(" \\\n    ".join(["ensure_entry " + " ".join(head_args), *flags]))
    lines.append("")
    return "\n".join(lines)
