"""``meshbridge render``, ``check``, ``apply``, ``diff`` and the single-purpose generators (``istio``, …).

Thin: each command takes its :mod:`bridge.params` object (``bridge.cli`` builds it from the flags; tests
build it directly), calls the same library functions the tests call (``load_spec``, ``render``,
``check``, :mod:`bridge.flags` over the :mod:`istio`/:mod:`scone` renderers), prints and returns the exit
code. Documents go to stdout (``-o yaml|json``; several Kubernetes objects in JSON are wrapped in a ``v1``
``List`` so that ``kubectl apply -f -`` takes them), warnings to stderr as ``warning: …``. Invalid input
raises :class:`~bridge.errors.BridgeError` subclasses, mapped once by ``bridge.cli.main``: one
``error: …`` line per problem, exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bridge import flags
from bridge.check import check
from bridge.render import render
from bridge.rendering import Document
from bridge.spec import load_spec
from bridge.writer import dumps, write_tree

if TYPE_CHECKING:
    from bridge import apply as applying
    from bridge.kube import Cluster
    from bridge.params import (
        ApplyParams,
        CheckParams,
        ClusterParams,
        DiffParams,
        Format,
        IstioOverlayParams,
        IstioPolicyParams,
        RenderParams,
        SconeGhostunnelParams,
        SconeNetworkShieldParams,
        SpecSource,
        SpireEntriesParams,
        SpireSvidstoreParams,
    )

__all__ = [
    "cmd_apply",
    "cmd_check",
    "cmd_diff",
    "cmd_istio_overlay",
    "cmd_istio_policy",
    "cmd_render",
    "cmd_scone_ghostunnel",
    "cmd_scone_network_shield",
    "cmd_spire_entries",
    "cmd_spire_svidstore",
]

EXIT_USAGE = 2


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _read_spec(source: SpecSource) -> str | Path:
    if source == "-":
        return sys.stdin.read()
    return Path(source)


def cmd_render(params: RenderParams) -> int:
    bridge = load_spec(_read_spec(params.file))
    rendering = render(bridge, session_hashes=dict(params.session_hashes))
    written = write_tree(Path(params.output), rendering)
    _warn(rendering.warnings)
    print(f"{params.output}: wrote {len(written)} files; next: read {Path(params.output) / 'README.md'}")
    return 0


def cmd_check(params: CheckParams) -> int:
    bridge = load_spec(_read_spec(params.file))
    report = check(bridge)
    _warn(report.warnings)
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.problems:
        return EXIT_USAGE
    print(
        f"ok: {len(bridge.services)} mesh service(s), {len(bridge.apps)} external app(s), "
        f"{report.documents} documents consistent"
    )
    return 0


def _load_plan(source: SpecSource) -> applying.Plan:
    """The spec's objects to apply; the spec's bytes are hashed into the ``meshbridge.io/spec-hash`` label."""
    from bridge import apply as applying  # noqa: PLC0415 - only apply/diff load the kubernetes client

    spec = _read_spec(source)
    bridge = load_spec(spec)
    raw = spec.read_bytes() if isinstance(spec, Path) else spec.encode()
    return applying.plan(render(bridge), trust_domain=bridge.trust_domain, source=raw)


def _connect(params: ClusterParams) -> Cluster:
    from bridge.kube import Cluster  # noqa: PLC0415 - only apply/diff load the kubernetes client

    return Cluster.connect(
        kubeconfig=params.kubeconfig, context=params.context, timeout=params.request_timeout
    )


def cmd_apply(params: ApplyParams) -> int:
    plan = _load_plan(params.file)
    for line in plan.not_applied:
        print(line)
    from bridge import apply as applying  # noqa: PLC0415 - only apply/diff load the kubernetes client

    with _connect(params) as cluster:
        changes = applying.apply(
            cluster, plan, dry_run=params.dry_run, prune=params.prune, force=params.force_conflicts
        )
    suffix = " (server dry run)" if params.dry_run else ""
    for change in changes:
        print(f"{change}{suffix}")
    return 0


def cmd_diff(params: DiffParams) -> int:
    """Exit 1 when ``apply`` would change something."""
    plan = _load_plan(params.file)
    from bridge import apply as applying  # noqa: PLC0415 - only apply/diff load the kubernetes client

    with _connect(params) as cluster:
        differences = applying.diff(cluster, plan, prune=params.prune)
    for difference in differences:
        sys.stdout.write(difference.text)
    return 1 if differences else 0


def _print(out: flags.Output, fmt: Format) -> int:
    _warn(out.warnings)
    if isinstance(out.documents, str):
        sys.stdout.write(out.documents)
        return 0
    docs = out.documents
    doc: Document = docs if len(docs) != 1 else docs[0]
    if fmt == "json" and len(docs) > 1:
        doc = {"apiVersion": "v1", "kind": "List", "items": list(docs)}
    sys.stdout.write(dumps(doc, fmt))
    return 0


def cmd_istio_overlay(params: IstioOverlayParams) -> int:
    return _print(flags.istio_overlay(params), params.output)


def cmd_istio_policy(params: IstioPolicyParams) -> int:
    return _print(flags.istio_policy(params), params.output)


def cmd_spire_entries(params: SpireEntriesParams) -> int:
    return _print(flags.spire_entries(params), params.output)


def cmd_spire_svidstore(params: SpireSvidstoreParams) -> int:
    return _print(flags.spire_svidstore(params), "yaml")  # HCL and templates are text


def cmd_scone_network_shield(params: SconeNetworkShieldParams) -> int:
    return _print(flags.scone_network_shield(params), params.app.output)


def cmd_scone_ghostunnel(params: SconeGhostunnelParams) -> int:
    return _print(flags.scone_ghostunnel(params), params.app.output)
