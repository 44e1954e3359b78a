"""Property tests: for any valid input the Istio/SPIRE renderers give schema-valid (strict) documents that
agree with each other on SPIFFE IDs, principals and DNS names; for any input they either render or raise
IstioError — never another exception."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from istio import (
    AuthorizationParams,
    ClusterSpiffeIdParams,
    EntriesParams,
    ExternalAppEntry,
    Gateway,
    IstioError,
    MeshService,
    OverlayParams,
    Selector,
    mesh_spiffe_id,
    render_authorization_policy,
    render_cluster_spiffe_id,
    render_entries_json,
    render_entries_script,
    render_gateway_cluster_spiffe_id,
    render_istio_operator,
    service_dns_names,
)
from tests.support.schemas import problems

label = st.from_regex(r"[a-z]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
trust_domain = st.lists(label, min_size=1, max_size=3).map(".".join)
segment = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
spiffe_path = st.lists(segment, min_size=1, max_size=4).map("/".join)
label_key = st.one_of(label, st.tuples(label, label).map(lambda p: f"{p[0]}.io/{p[1]}"))
label_value = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?", fullmatch=True)
pod_labels = st.dictionaries(label_key, label_value, min_size=1, max_size=4).map(
    lambda d: tuple(sorted(d.items()))
)
services = st.builds(
    MeshService,
    name=label,
    namespace=label,
    service_account=label,
    port=st.integers(1, 65535),
    pod_labels=pod_labels,
)
session_name = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True), min_size=1, max_size=3).map(
    "/".join
)
sha = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(
    td=trust_domain,
    revision=st.none() | label,
    template=label,
    image=st.from_regex(r"[a-z0-9]+(/[a-z0-9-]+){0,2}:[a-z0-9.]{1,8}", fullmatch=True),
    gateways=st.lists(
        st.tuples(label, st.sampled_from(["ingress", "egress"])), max_size=3, unique_by=lambda g: g[0]
    ),
)
def test_overlay_always_valid(
    td: str, revision: str | None, template: str, image: str, gateways: list[tuple[str, str]]
) -> None:
    params = OverlayParams(
        trust_domain=td,
        sds_image=image,
        revision=revision,
        template_name=template,
        gateways=tuple(Gateway(name=n, labels=(("istio", n),), kind=k) for n, k in gateways),  # type: ignore[arg-type]
    )
    doc = render_istio_operator(params)
    assert problems(doc) == []
    spec = doc["spec"]
    assert spec["meshConfig"]["trustDomain"] == td  # type: ignore[index]
    assert spec.get("revision") == revision  # type: ignore[attr-defined]
    assert image in spec["values"]["sidecarInjectorWebhook"]["templates"][template]  # type: ignore[index]
    for gateway in params.gateways:  # every gateway put on SPIRE gets a valid registration too
        assert problems(render_gateway_cluster_spiffe_id(gateway, params.root_namespace)) == []


@PROPS
@given(svc=services, td=trust_domain, ids=st.lists(spiffe_path, min_size=1, max_size=5))
def test_policy_and_registration_agree(svc: MeshService, td: str, ids: list[str]) -> None:
    external = tuple(f"spiffe://{td}/external/{p}" for p in ids)
    policy = render_authorization_policy(AuthorizationParams(svc, external))
    assert problems(policy) == []
    (rule,) = policy["spec"]["rules"]  # type: ignore[index]
    principals = rule["from"][0]["source"]["principals"]
    assert sorted(principals) == sorted({i.removeprefix("spiffe://") for i in external})
    assert policy["spec"]["selector"]["matchLabels"] == dict(svc.pod_labels)  # type: ignore[index]

    for dns in (False, True):
        csid = render_cluster_spiffe_id(ClusterSpiffeIdParams(svc, dns_names=dns))
        assert problems(csid) == []
        spec = csid["spec"]
        assert spec["podSelector"] == policy["spec"]["selector"]  # type: ignore[index]
        # evaluating the Go template for this service's pods gives the ID Istio (and the tunnels) expect
        evaluated = (
            spec["spiffeIDTemplate"]  # type: ignore[index]
            .replace("{{ .TrustDomain }}", td)
            .replace("{{ .PodMeta.Namespace }}", svc.namespace)
            .replace("{{ .PodSpec.ServiceAccountName }}", svc.service_account)
        )
        assert evaluated == mesh_spiffe_id(td, svc)
        assert spec.get("dnsNameTemplates") == (list(service_dns_names(svc)) if dns else None)  # type: ignore[attr-defined]


entries = st.lists(
    st.builds(
        ExternalAppEntry,
        spiffe_id=spiffe_path.map(lambda p: f"spiffe://example.org/{p}"),
        parent_id=st.just("spiffe://example.org/spire/agent/k8s_psat/c1/node"),
        cas_session=st.none() | session_name,
        selectors=st.lists(
            st.builds(
                Selector,
                type=st.sampled_from(["unix", "k8s", "docker"]),
                value=st.from_regex(r"[a-z]{1,5}:[a-z0-9]{1,5}", fullmatch=True),
            ),
            min_size=1,
            max_size=2,
        ).map(tuple),
        x509_svid_ttl=st.none() | st.integers(1, 86400),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda e: e.cas_session or e.spiffe_id,
)


@PROPS
@given(
    es=entries,
    plugin=st.sampled_from(["sconecas_sessionmanager", "scone_cas_secretsmanager"]),
    data=st.data(),
)
def test_entries_json_carries_each_hash(es: list[ExternalAppEntry], plugin: str, data: st.DataObject) -> None:
    hashes = {e.cas_session: data.draw(sha) for e in es if e.cas_session is not None}
    doc = render_entries_json(EntriesParams(tuple(es), plugin=plugin), hashes)  # type: ignore[arg-type]
    for entry, out in zip(es, doc["entries"], strict=True):  # type: ignore[call-overload]
        assert out["spiffe_id"] == entry.spiffe_id
        values = [f"{s['type']}:{s['value']}" for s in out["selectors"]]
        assert values[: len(entry.selectors)] == [str(s) for s in entry.selectors]
        if entry.cas_session is not None:
            h = hashes[entry.cas_session]
            assert any(v.endswith(f":{entry.cas_session}") for v in values)
            assert values[-1].endswith(f":{h}")
            assert out.get("store_svid") is (True if plugin == "sconecas_sessionmanager" else None)


@settings(max_examples=15, deadline=None)
@given(es=entries, data=st.data())
def test_entries_script_creates_exactly_what_the_json_says(
    es: list[ExternalAppEntry], data: st.DataObject
) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    hashes = {e.cas_session: data.draw(sha) for e in es if e.cas_session is not None}
    params = EntriesParams(tuple(es))
    expected = render_entries_json(params, hashes)["entries"]
    d = Path(tempfile.mkdtemp(prefix="mb-prop-", dir="/tmp"))
    try:
        log = d / "log"
        fake = d / "spire-server"
        fake.write_text(f"#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" '--' >> '{log}'\n")
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
        script = d / "s.sh"
        script.write_text(render_entries_script(params))
        env = {"PATH": f"{d}:{os.environ['PATH']}"}
        proc = subprocess.run(
            [bash, str(script), *(f"{k}={v}" for k, v in hashes.items())],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        # each entry is looked up (`entry show`, empty here) before it is created
        calls = [c for c in log.read_text().split("--\n")[:-1] if not c.startswith("entry\nshow\n")]
        assert len(calls) == len(expected)  # type: ignore[arg-type]
        for call, entry in zip(calls, expected, strict=True):  # type: ignore[call-overload]
            argv = call.splitlines()
            sels = [argv[i + 1] for i, a in enumerate(argv) if a == "-selector"]
            assert sels == [f"{s['type']}:{s['value']}" for s in entry["selectors"]]
            assert argv[argv.index("-spiffeID") + 1] == entry["spiffe_id"]
            assert ("-storeSVID=true" in argv) == bool(entry.get("store_svid"))
        if hashes:  # and without the hashes it creates nothing
            log.unlink()
            proc = subprocess.run(
                [bash, str(script)], capture_output=True, text=True, env=env, timeout=30, check=False
            )
            assert proc.returncode == 2
            assert "no session hash" in proc.stderr
            assert not log.exists()
    finally:
        shutil.rmtree(d)


@PROPS
@given(
    td=trust_domain | st.text(max_size=20),
    image=label | st.text(max_size=20),
    rev=st.none() | label | st.text(max_size=10),
    name=label | st.text(max_size=10),
    ns=label | st.text(max_size=10),
    ids=st.lists(spiffe_path.map(lambda p: f"spiffe://e.org/{p}") | st.text(max_size=20), max_size=3),
    key=label_key | st.text(max_size=8),
    value=label_value | st.text(max_size=8),
)
def test_any_input_renders_or_raises_istio_error(
    td: str, image: str, rev: str | None, name: str, ns: str, ids: list[str], key: str, value: str
) -> None:
    svc = MeshService(name, ns, name, 80, ((key, value),))
    messages: list[str] = []
    for render in (
        lambda: render_istio_operator(OverlayParams(trust_domain=td, sds_image=image, revision=rev)),
        lambda: render_authorization_policy(AuthorizationParams(svc, tuple(ids))),
        lambda: render_cluster_spiffe_id(ClusterSpiffeIdParams(svc, federates_with=(td,))),
    ):
        try:
            doc = render()
        except IstioError as exc:
            messages.append(str(exc))
        else:  # whatever renders is valid: no input slips an invalid document through
            assert problems(doc) == []
    try:
        render_entries_script(EntriesParams((ExternalAppEntry(td, td, cas_session=name or None),)))
    except IstioError as exc:
        messages.append(str(exc))
    assert all(messages)  # and whatever does not says why
