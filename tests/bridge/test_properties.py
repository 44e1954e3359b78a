"""Properties over random specs: valid ones render consistently; broken ones give SpecError, nothing else."""

from __future__ import annotations

import contextlib
import io
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import structlog
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import cli, names
from bridge import render as layout
from bridge.check import consistency_problems
from bridge.errors import SpecError
from bridge.model import Bridge
from bridge.render import render
from bridge.rendering import Rendering
from bridge.spec import load_spec, parse_document
from bridge.writer import serialize
from sds_server.spiffe_id import SpiffeId
from tests.bridge.strategies import bridge_specs, mutated_specs
from tests.support.schemas import problems, scone_problems

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _principals(
    rendering: Rendering, namespace: str, labels: dict[str, str], action: str = "ALLOW"
) -> set[str]:
    out: set[str] = set()
    for doc in rendering.yaml_documents(layout.AUTHORIZATION_POLICIES):
        spec = doc["spec"]
        assert isinstance(spec, dict)
        if doc["metadata"]["namespace"] != namespace:  # type: ignore[index]
            continue
        selector = spec["selector"]["matchLabels"]
        if spec["action"] == action and all(labels.get(k) == v for k, v in selector.items()):
            for rule in spec["rules"]:
                for src in rule["from"]:
                    out.update(src["source"].get("principals", []))
    return out


def _assert_flag_forms(line: str) -> None:
    """Ghostunnel's ``--help`` run does not parse values: check their forms here."""
    flags = dict(w[2:].split("=", 1) for w in shlex.split(line)[2:] if "=" in w)
    for name in ("listen", "target", "status"):
        if name in flags:
            host, _, port = flags[name].rpartition(":")
            assert host
            assert 1 <= int(port) <= 65535
    assert str(SpiffeId.parse(flags["verify-uri"])) == flags["verify-uri"]
    if "timed-reload" in flags:
        assert names.duration(flags["timed-reload"]) is None
    if "use-workload-api-addr" in flags:
        assert names.unix_address(flags["use-workload-api-addr"]) is None
    for name in ("cert", "key", "cacert"):
        if name in flags:
            assert names.absolute_path(flags[name]) is None


def _assert_consistent(bridge: Bridge, rendering: Rendering) -> None:
    assert consistency_problems(bridge, rendering) == []
    script = rendering.text(layout.ENTRIES_SCRIPT)
    crds = {d["metadata"]["name"]: d for d in rendering.yaml_documents(layout.CLUSTER_SPIFFEIDS)}  # type: ignore[index]
    # one per mesh service and one per gateway the overlay puts on SPIRE (else it never becomes Ready)
    assert len(crds) == len(bridge.services) + len(bridge.mesh.gateways)
    for gw in bridge.mesh.gateways:
        gw_ns = gw.namespace or bridge.mesh.istio_namespace
        gw_crd = crds[f"meshbridge-gateway-{gw_ns}-{gw.name}"]
        assert gw_crd["spec"]["podSelector"]["matchLabels"] == dict(gw.labels)  # type: ignore[index]
        assert gw_crd["spec"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": gw_ns}  # type: ignore[index]
    for svc in bridge.services:
        (crd,) = [
            c
            for c in crds.values()
            if c["spec"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == svc.namespace  # type: ignore[index]
            and c["spec"]["podSelector"]["matchLabels"] == svc.label_map  # type: ignore[index]
        ] or [None]
        assert crd is not None
        # Istio's template makes exactly the service's SPIFFE ID from namespace + service account
        assert svc.spiffe_id == f"spiffe://{bridge.trust_domain}/ns/{svc.namespace}/sa/{svc.service_account}"
        dns = crd["spec"].get("dnsNameTemplates")  # type: ignore[union-attr]
        if bridge.carries_dns_names(svc):
            assert dns == list(svc.dns_names)
        else:
            assert dns is None
    for app in bridge.apps:
        principal = app.spiffe_id.removeprefix("spiffe://")
        assert f"-spiffeID {shlex.quote(app.spiffe_id)}" in script
        session = rendering.yaml_documents(layout.session_path(app.name))[0]
        assert session["name"] == app.scone.qualified_session_name
        assert scone_problems(session) == []
        for t in app.targets:
            svc = t.service
            if svc.mesh_principals or svc.mesh_namespaces:  # in-mesh callers listed: the ALLOW shape
                assert principal in _principals(rendering, svc.namespace, svc.label_map)
            else:  # none listed: a DENY policy that never names a target's own apps, no ALLOW at all
                assert principal not in _principals(rendering, svc.namespace, svc.label_map, "DENY")
                assert not _principals(rendering, svc.namespace, svc.label_map)
        if app.mode == "network-shield":
            env = session["services"][0]["environment"]  # type: ignore[index]
            dests = sorted(v for k, v in env.items() if k.endswith("_DESTINATION"))
            assert dests == sorted(f"TCP:{t.service.fqdn}:{t.service.port}" for t in app.targets)
            auth = {v for k, v in env.items() if k.endswith("_SERVER_AUTH")}
            assert (auth == {"disabled"}) is (not app.server_auth)
        else:
            lines = rendering.text(layout.ghostunnel_command_path(app.name)).splitlines()
            assert len(lines) == len(app.targets)
            for line, t in zip(lines, app.targets, strict=True):
                assert f"--verify-uri={t.service.spiffe_id}" in line.split()
                assert f"--target={t.service.fqdn}:{t.service.port}" in line.split()
                assert f"--listen=127.0.0.1:{t.listen_port}" in line.split()
                _assert_flag_forms(line)


@SETTINGS
@given(bridge_specs())
def test_valid_specs_render_consistently(raw: dict[str, object]) -> None:
    bridge = parse_document(raw)
    rendering = render(bridge)
    _assert_consistent(bridge, rendering)
    for path in (
        layout.ISTIO_OPERATOR,
        layout.PEER_AUTHENTICATION,
        layout.AUTHORIZATION_POLICIES,
        layout.CLUSTER_SPIFFEIDS,
    ):
        for doc in yaml.safe_load_all(serialize(path, rendering[path])):
            assert problems(doc) == [], path


@SETTINGS
@given(bridge_specs())
def test_yaml_round_trip_and_entries_json(raw: dict[str, object]) -> None:
    bridge = load_spec(yaml.safe_dump(raw))
    assert bridge == parse_document(raw)
    hashes = {a.scone.qualified_session_name: f"{i:064x}" for i, a in enumerate(bridge.apps)}
    rendering = render(bridge, session_hashes=hashes)
    entries = rendering[layout.ENTRIES_JSON]
    assert isinstance(entries, dict)
    assert [e["spiffe_id"] for e in entries["entries"]] == [a.spiffe_id for a in bridge.apps]  # type: ignore[index, union-attr]
    for path, doc in rendering.items():
        if isinstance(doc, (dict, list)) and path.endswith(".yaml"):
            back = list(yaml.safe_load_all(serialize(path, doc)))
            assert back == (doc if isinstance(doc, list) else [doc])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_broken_specs_give_spec_error_only(raw: object) -> None:
    try:
        bridge = parse_document(raw)
    except SpecError as exc:
        found = exc.problems
    else:
        # a mutation that kept the spec valid must still render (or fail as SpecError)
        with contextlib.suppress(SpecError):
            render(bridge)
        return
    assert found
    assert all(isinstance(p, str) and p and "\n" not in p for p in found)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_spec_error(text: str) -> None:
    with pytest.raises(SpecError):
        load_spec(text + "\n")


def _render_cli(spec_text: str, out: Path) -> tuple[int, str]:
    spec = out.parent / "bridge.yaml"
    spec.write_text(spec_text)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["render", "-f", str(spec), "-o", str(out)])
    finally:
        structlog.reset_defaults()  # cli.main configured logging to the redirected stream
        spec.unlink()
    return code, err.getvalue()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_render_command_on_broken_specs_leaves_nothing(raw: object) -> None:
    """In-process ``meshbridge render``: exit 2 with only ``error:`` lines and no output, or a full tree."""
    with tempfile.TemporaryDirectory(prefix="mb-fuzz-") as tmp:
        base = Path(tmp)
        code, stderr = _render_cli(yaml.safe_dump(raw), base / "out")
        if code == 0:
            assert (base / "out" / "README.md").is_file()
            return
        assert code == 2
        lines = stderr.splitlines()
        assert lines
        assert all(line.startswith("error: ") for line in lines), stderr
        assert list(base.iterdir()) == []


def _is_invalid(raw: object) -> bool:
    try:
        render(parse_document(raw))
    except SpecError:
        return True
    return False


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs().filter(_is_invalid))
def test_render_subprocess_on_broken_specs_leaves_nothing(raw: object) -> None:
    """The real ``meshbridge`` process: exit 2, ``error:`` lines, no traceback, no output directory."""
    with tempfile.TemporaryDirectory(prefix="mb-fuzz-") as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "render", "-f", "-", "-o", f"{tmp}/out"],
            input=yaml.safe_dump(raw),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert all(line.startswith("error: ") for line in result.stderr.splitlines()), result.stderr
        assert list(Path(tmp).iterdir()) == []


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bridge_specs())
def test_ghostunnel_lines_parse_with_the_real_binary(ghostunnel_bin: Path, raw: dict[str, object]) -> None:
    bridge = parse_document(raw)
    rendering = render(bridge)
    for app in bridge.apps:
        if app.mode != "ghostunnel":
            continue
        for line in rendering.text(layout.ghostunnel_command_path(app.name)).splitlines():
            argv = shlex.split(line)
            result = subprocess.run(
                [str(ghostunnel_bin), *argv[1:], "--help"], capture_output=True, timeout=30, check=False
            )
            assert result.returncode == 0, (line, result.stderr)
