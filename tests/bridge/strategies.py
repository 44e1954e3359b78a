"""Hypothesis strategies: random *valid* bridge specs (as raw YAML-ready dicts) and mutations of them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import get_args

from hypothesis import strategies as st

from scone.model import Toleration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "httpbin" / "bridge.yaml"

_NAME = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True)
_NAMESPACES = st.sampled_from(["default", "prod", "team-a"])  # not the root namespace: refused
_HEX64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
_TOLERATIONS = list(get_args(Toleration))


@st.composite
def services(draw: st.DrawFn) -> list[dict[str, object]]:
    count = draw(st.integers(1, 4))
    out: list[dict[str, object]] = []
    keys: set[tuple[str, str]] = set()
    for _ in range(count):
        name = draw(_NAME)
        namespace = draw(_NAMESPACES)
        if (namespace, name) in keys:
            continue
        keys.add((namespace, name))
        svc: dict[str, object] = {"name": name, "namespace": namespace, "port": draw(st.integers(1, 65535))}
        if draw(st.booleans()):
            svc["serviceAccount"] = draw(st.sampled_from([name, f"{name}-sa", "shared"]))
        if draw(st.booleans()):
            svc["protocol"] = draw(st.sampled_from(["http", "http2", "grpc", "tcp", "tls"]))
        if draw(st.booleans()):
            svc["labels"] = {"app": name, "version": draw(st.sampled_from(["v1", "v2"]))}
        if draw(st.booleans()):
            svc["meshCallers"] = {"namespaces": ["istio-system"]}
        if draw(st.booleans()):
            svc["svidDnsNames"] = True
        out.append(svc)
    return out


@st.composite
def meshes(draw: st.DrawFn) -> dict[str, object]:
    mesh: dict[str, object] = {"istioNamespace": draw(st.sampled_from(["istio-system", "mesh-root"]))}
    if draw(st.booleans()):
        mesh["revision"] = draw(st.sampled_from(["1-24", "canary"]))
    if draw(st.booleans()):
        mesh["clusterDomain"] = draw(st.sampled_from(["cluster.local", "corp.internal"]))
    if draw(st.booleans()):
        mesh["sds"] = {"image": "registry.example/sds:1.2", "workloadApiSocket": "/run/spire/agent.sock"}
    if draw(st.booleans()):
        mesh["gateways"] = draw(
            st.sampled_from(
                [
                    [],
                    [{"name": "istio-ingressgateway"}, {"name": "istio-egressgateway", "kind": "egress"}],
                    [{"name": "gw-a", "labels": {"gw": "a"}, "namespace": "gateways"}],
                ]
            )
        )
    return mesh


@st.composite
def bridge_specs(draw: st.DrawFn) -> dict[str, object]:
    """A random spec that must load and render."""
    td = draw(st.sampled_from(["example.org", "mesh.test", "td-1.example", "corp_x.internal"]))
    svcs = draw(services())
    apps: list[dict[str, object]] = []
    sessions: set[str] = set()
    for i in range(draw(st.integers(1, 4))):
        name = f"{draw(_NAME)}-{i}"
        mode = draw(st.sampled_from(["network-shield", "ghostunnel"]))
        picked = draw(
            st.lists(st.sampled_from(range(len(svcs))), min_size=1, max_size=len(svcs), unique=True)
        )
        if mode == "ghostunnel":  # one CAS service per (service name, port)
            seen: set[tuple[object, object]] = set()
            picked = [
                j
                for j in picked
                if (svcs[j]["name"], svcs[j]["port"]) not in seen
                and not seen.add((svcs[j]["name"], svcs[j]["port"]))
            ]  # type: ignore[func-returns-value]
        targets: list[object] = []
        for k, j in enumerate(picked):
            ref = f"{svcs[j]['namespace']}/{svcs[j]['name']}"
            if mode == "ghostunnel":
                targets.append({"service": ref, "listenPort": 10000 + k})
            else:
                targets.append(ref if draw(st.booleans()) else {"service": ref})
        cas_ns = draw(st.sampled_from(["meshbridge", "apps", "team_x"]))
        session = draw(st.sampled_from([name, f"{name}-session"]))
        if f"{cas_ns}/{session}" in sessions:
            continue
        sessions.add(f"{cas_ns}/{session}")
        scone: dict[str, object] = {
            "casNamespace": cas_ns,
            "sessionName": session,
            "mrenclaves": draw(st.lists(_HEX64, min_size=1, max_size=2, unique=True)),
            "tolerations": draw(st.lists(st.sampled_from(_TOLERATIONS), unique=True, max_size=3)),
        }
        app: dict[str, object] = {"name": name, "mode": mode, "targets": targets, "scone": scone}
        if draw(st.booleans()):
            app["spiffeId"] = f"spiffe://{td}/scone/{cas_ns}/{name}"
        if mode == "network-shield":
            scone["command"] = draw(st.sampled_from(["python3 /app/client.py", "/usr/bin/curl -s https://x"]))
            if draw(st.booleans()):
                app["serverAuth"] = draw(st.booleans())
        else:
            source = draw(st.sampled_from(["files", "workload-api"]))
            gt: dict[str, object] = {"certSource": source, "statusPort": 20000}
            if source == "workload-api":
                gt["workloadApiSelectors"] = ["unix:uid:1000"]
            else:
                gt["timedReload"] = draw(st.sampled_from(["30s", "1m", "1h30m"]))
            app["ghostunnel"] = gt
        apps.append(app)
    return {
        "apiVersion": "meshbridge.io/v1alpha1",
        "kind": "Bridge",
        "trustDomain": td,
        "mesh": draw(meshes()),
        "meshServices": svcs,
        "externalApps": apps,
        "spire": {
            "svidstorePlugin": draw(st.sampled_from(["sconecas_sessionmanager", "scone_cas_secretsmanager"])),
            "parentId": f"spiffe://{td}/spire/agent/x509pop/node-1",
            "casConnection": "https://cas.example.org:8081",
        },
    }


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 70000),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["spiffe://", "Bad_Name", "-x", "a" * 300, "1h", "ns//x", "$$SCONE::x$$", "é"]),
)


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_specs(draw: st.DrawFn) -> object:
    """A valid spec with one to three random edits: junk values, deleted keys, unknown keys."""
    doc: object = copy.deepcopy(draw(bridge_specs()))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            doc = draw(_JUNK) if action == "replace" else doc
            continue
        parent: object = doc
        for part in path[:-1]:
            parent = parent[part]  # type: ignore[index]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(_JUNK)  # type: ignore[index]
        elif action == "delete":
            del parent[last]  # type: ignore[attr-defined]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(_JUNK)
    return doc
