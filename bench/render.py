"""Render a generated 1,000-service, 200-app bridge spec; print the time per stage and the YAML share.

Goal (issue 7 §4): the whole ``meshbridge render`` path — load + validate, render, serialise, write — in
<= 2 s. Baseline measured in the same run: serialising the same documents with ``json.dumps`` (what the
YAML dumping costs over the cheapest serialisation). Bounded: one spec, ``--repeat`` runs (default 3),
best run reported.

    .venv/bin/python bench/render.py [--services 1000] [--apps 200] [--targets 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.render import render
from bridge.spec import load_spec
from bridge.writer import serialize, write_tree

GOAL_S = 2.0


def generate(services: int, apps: int, targets: int) -> str:
    svcs = [
        {
            "name": f"svc-{i}",
            "namespace": f"team-{i % 20}",
            "serviceAccount": f"sa-{i}",
            "port": 8000 + i % 50,
            "labels": {"app": f"svc-{i}", "tier": "backend"},
            "meshCallers": {"namespaces": ["istio-system"]},
        }
        for i in range(services)
    ]
    app_list = []
    for a in range(apps):
        picked = [(a * 7 + k * 13) % services for k in range(targets)]
        mode = "ghostunnel" if a % 2 else "network-shield"
        app: dict[str, object] = {
            "name": f"app-{a}",
            "mode": mode,
            "scone": {
                "casNamespace": f"ns{a % 10}",
                "mrenclaves": [f"{a:064x}"],
                "tolerations": ["hyperthreading"],
            },
        }
        if mode == "ghostunnel":
            app["targets"] = [
                {"service": f"team-{j % 20}/svc-{j}", "listenPort": 10000 + k} for k, j in enumerate(picked)
            ]
            app["ghostunnel"] = {"certSource": "files", "statusPort": 20000}
        else:
            app["targets"] = [f"team-{j % 20}/svc-{j}" for j in picked]
            app["scone"]["command"] = "python3 /app/client.py"  # type: ignore[index]
        app_list.append(app)
    doc = {
        "apiVersion": "meshbridge.io/v1alpha1",
        "kind": "Bridge",
        "trustDomain": "example.org",
        "meshServices": svcs,
        "externalApps": app_list,
        "spire": {
            "parentId": "spiffe://example.org/spire/agent/x509pop/n1",
            "casConnection": "https://cas:8081",
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def run_once(text: str, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    bridge = load_spec(text)
    t1 = time.perf_counter()
    rendering = render(bridge)
    t2 = time.perf_counter()
    texts = {p: serialize(p, d) for p, d in rendering.items()}
    t3 = time.perf_counter()
    write_tree(out, rendering)  # serialises again, then writes: the real CLI path
    t4 = time.perf_counter()
    baseline = {p: json.dumps(d) for p, d in rendering.items() if not isinstance(d, str)}
    t5 = time.perf_counter()
    assert len(texts) == len(rendering)
    assert baseline
    return {
        "load": t1 - t0,
        "render": t2 - t1,
        "serialise": t3 - t2,
        "write": t4 - t3,
        "json_baseline": t5 - t4,
        "files": float(len(rendering)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--apps", type=int, default=200)
    ap.add_argument("--targets", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3, choices=range(1, 11))
    args = ap.parse_args()
    text = generate(args.services, args.apps, args.targets)
    tmp = Path(tempfile.mkdtemp(prefix="mb-bench-"))
    try:
        runs = [run_once(text, tmp / "out") for _ in range(args.repeat)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = min(runs, key=lambda r: r["load"] + r["render"] + r["write"])
    # the CLI path: load + render + write (write_tree serialises inside)
    total = best["load"] + best["render"] + best["write"]
    print(
        f"spec: {args.services} services, {args.apps} apps x {args.targets} targets, "
        f"{len(text):,} bytes YAML; {int(best['files'])} files rendered; best of {args.repeat}"
    )
    for stage in ("load", "render", "serialise", "write"):
        print(f"  {stage:<10} {best[stage] * 1000:8.1f} ms")
    print(f"  {'json base':<10} {best['json_baseline'] * 1000:8.1f} ms  (json.dumps of the same documents)")
    share = best["serialise"] / total
    verdict = "met" if total <= GOAL_S else "NOT met"
    print(f"total (load + render + write): {total:.2f} s  (goal <= {GOAL_S:.1f} s: {verdict})")
    ratio = best["serialise"] / best["json_baseline"]
    print(f"YAML/JSON dumping: {share:.0%} of the total; {ratio:.1f}x json.dumps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
