"""Real ``istioctl``, offline: ``manifest generate`` of a rendered overlay, ``kube-inject`` with its output.

No cluster is contacted: ``KUBECONFIG`` points at a file that does not exist and ``HOME`` at the work
directory, so istioctl reads no operator's settings and writes nothing outside it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridge.render import render
from bridge.spec import load_spec
from bridge.writer import write_tree

TIMEOUT = 120


@dataclass(frozen=True)
class Manifest:
    """What ``istioctl manifest generate -f <overlay>`` printed: documents and stderr."""

    documents: tuple[dict[str, Any], ...]
    stderr: str

    def find(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.documents if d.get("kind") == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} in the manifest"
        return found[0]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d.get("kind") == kind]


def render_spec(spec: Path, out: Path) -> Path:
    """``meshbridge render`` of ``spec`` into ``out`` (the overlay is ``out/istio/istio-operator.yaml``)."""
    write_tree(out, render(load_spec(spec)))
    return out


def _env(workdir: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "KUBECONFIG": str(workdir / "no-kubeconfig"),
    }


def run_istioctl(istioctl: Path, args: Sequence[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(istioctl), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=_env(workdir),
        cwd=workdir,
    )


def load_all(text: str) -> tuple[dict[str, Any], ...]:
    return tuple(d for d in yaml.safe_load_all(text) if d)


def manifest_generate(istioctl: Path, overlay: Path, workdir: Path) -> Manifest:
    result = run_istioctl(istioctl, ["manifest", "generate", "-f", str(overlay)], workdir)
    assert result.returncode == 0, f"istioctl manifest generate failed:\n{result.stderr}"
    return Manifest(load_all(result.stdout), result.stderr)


def inject_inputs(manifest: Manifest, workdir: Path) -> list[str]:
    """Write the injector config, mesh config and values from ``manifest``; the kube-inject flags for them."""
    injector = manifest.find("ConfigMap", "istio-sidecar-injector")
    mesh = manifest.find("ConfigMap", "istio")
    files = {
        "inject-config.yaml": injector["data"]["config"],
        "inject-values.json": injector["data"]["values"],
        "mesh.yaml": mesh["data"]["mesh"],
    }
    for name, text in files.items():
        (workdir / name).write_text(text)
    return [
        "--injectConfigFile",
        str(workdir / "inject-config.yaml"),
        "--valuesFile",
        str(workdir / "inject-values.json"),
        "--meshConfigFile",
        str(workdir / "mesh.yaml"),
    ]


def kube_inject(
    istioctl: Path, manifest: Manifest, workload: Path, workdir: Path
) -> tuple[dict[str, Any], ...]:
    flags = inject_inputs(manifest, workdir)
    # --revision: without it istioctl asks a cluster for the default revision and waits for one forever
    # (istioctl/pkg/cli/context.go, RevisionOrDefault), even with every config given as a file
    args = ["kube-inject", "--revision", "default", *flags, "-f", str(workload)]
    result = run_istioctl(istioctl, args, workdir)
    assert result.returncode == 0, f"istioctl kube-inject failed:\n{result.stderr}"
    return load_all(result.stdout)
