"""Property tests: for any valid input the SCONE renderers give strict-schema-valid sessions whose
destinations, SPIFFE IDs and imports agree with their inputs and with the SVIDStore templates; for any input
they either render or raise SconeError — never another exception."""

from __future__ import annotations

from typing import get_args

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scone import (
    Attestation,
    GhostunnelApp,
    GhostunnelTunnel,
    MeshTarget,
    NetworkShieldApp,
    SconeError,
    SvidStoreSessions,
    Toleration,
    fill_template,
    ghostunnel_args,
    render_bundle_session_template,
    render_ghostunnel_session,
    render_network_shield_session,
    render_svid_session_template,
)
from tests.support.pki import MiniCa
from tests.support.schemas import scone_problems

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
label = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
part = st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True)
session_name = st.lists(part, min_size=1, max_size=3).map("/".join)
mrenclave = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
targets = st.builds(
    MeshTarget,
    name=label,
    namespace=label,
    port=st.integers(1, 65535),
    spiffe_id=st.tuples(label, label).map(lambda t: f"spiffe://example.org/ns/{t[0]}/sa/{t[1]}"),
    destination_ip=st.just("*") | ipv4,
)
tolerations = st.lists(st.sampled_from(get_args(Toleration)), unique=True, max_size=6).map(tuple)
svidstores = st.builds(
    SvidStoreSessions,
    plugin=st.sampled_from(["sconecas_sessionmanager", "scone_cas_secretsmanager"]),
    svid_session_prefix=st.sampled_from(["spire-svid-", "svids/", "spire/svid-"]),
    bundle_session=st.from_regex(r"[a-z][a-z0-9-]{0,8}(/[a-z][a-z0-9-]{0,8})?", fullmatch=True),
    federated_bundles_session=st.just("spire_fed"),  # "_" never in bundle_session
)


def _template_name(template: str) -> str:
    """The session name on a template's first line (``name: …``)."""
    return template.splitlines()[0].removeprefix("name: ")


@PROPS
@given(
    name=session_name,
    ts=st.lists(targets, min_size=1, max_size=5, unique_by=lambda t: (t.dns_name, t.port)),
    server_auth=st.booleans(),
    tolerate=tolerations,
    store=svidstores,
    mres=st.lists(mrenclave, min_size=1, max_size=3),
)
def test_network_shield_sessions(
    name: str,
    ts: list[MeshTarget],
    server_auth: bool,
    tolerate: tuple[str, ...],
    store: SvidStoreSessions,
    mres: list[str],
) -> None:
    app = NetworkShieldApp(
        name,
        "app",
        "/usr/bin/app --flag",
        tuple(mres),
        tuple(ts),
        server_auth=server_auth,
        attestation=Attestation(tolerate=tolerate),
        svidstore=store,
    )  # type: ignore[arg-type]
    rendered = render_network_shield_session(app)
    assert scone_problems(rendered.session) == []
    env = rendered.session["services"][0]["environment"]  # type: ignore[index]
    clients = sorted(k for k in env if k.count("_") == 4 and k.startswith("SCONE_NETWORK_SHIELD_CLIENT_"))
    assert len(clients) == len(ts)
    for n, t in enumerate(ts, start=1):
        assert (
            env[f"SCONE_NETWORK_SHIELD_CLIENT_{n}_DESTINATION"]
            == f"TCP:{t.name}.{t.namespace}.svc.cluster.local:{t.port}"
        )
        assert (env[f"SCONE_NETWORK_SHIELD_CLIENT_{n}_SERVER_AUTH"] == "disabled") is (not server_auth)
    imports = {s["name"]: s["import"]["session"] for s in rendered.session["secrets"]}  # type: ignore[attr-defined]
    # the SVID import names the session the SVIDStore template produces for this app
    svid_session = _template_name(render_svid_session_template(store))
    assert imports["svid"] == svid_session.replace("<\\session-name-selector>", name)
    assert ("spire-ca" in imports) is server_auth
    if server_auth:
        assert imports["spire-ca"] == _template_name(render_bundle_session_template(store))
    assert any(w.path == "server_auth" for w in rendered.warnings) is (not server_auth)
    assert any(w.value == "debug-mode" for w in rendered.warnings) is ("debug-mode" in tolerate)


tunnels = st.builds(
    GhostunnelTunnel,
    target=targets,
    listen_port=st.integers(1024, 30000),
    cert_source=st.sampled_from(["files", "workload-api"]),
    status_port=st.none() | st.integers(30001, 40000),
    timed_reload=st.sampled_from(["5m", "30s", "1h30m", "250ms"]),
    connect_to=st.none() | st.integers(1, 65535).map(lambda p: f"127.0.0.1:{p}"),
)


@PROPS
@given(
    name=session_name,
    ts=st.lists(tunnels, min_size=1, max_size=4, unique_by=lambda t: (t.target.name, t.target.port)),
    mres=st.lists(mrenclave, min_size=1, max_size=2),
)
def test_ghostunnel_sessions(name: str, ts: list[GhostunnelTunnel], mres: list[str]) -> None:
    listens = [t.listen_port for t in ts]
    statuses = [t.status_port for t in ts if t.status_port is not None]
    app = GhostunnelApp(name, tuple(mres), tuple(ts))
    if len(set(listens)) != len(listens) or len(set(statuses)) != len(statuses):
        try:
            render_ghostunnel_session(app)
        except SconeError:
            return
        raise AssertionError("clashing ports accepted")
    rendered = render_ghostunnel_session(app)
    assert scone_problems(rendered.session) == []
    for service, t in zip(rendered.session["services"], ts, strict=True):  # type: ignore[call-overload]
        argv = service["command"].split(" ")
        assert argv[1:] == ghostunnel_args(t)
        flags = dict(a[2:].partition("=")[::2] for a in argv[2:] if "=" in a)
        assert flags["verify-uri"] == t.target.spiffe_id
        assert flags["listen"] == f"127.0.0.1:{t.listen_port}"
        if t.connect_to is None:
            assert flags["target"] == f"{t.target.dns_name}:{t.target.port}"
        else:
            assert flags["target"] == t.connect_to
            assert flags["override-server-name"] == t.target.dns_name
        assert ("cert" in flags) is (t.cert_source == "files")
        assert "disable-authentication" not in flags
    assert ("secrets" in rendered.session) is any(t.cert_source == "files" for t in ts)


_CA = MiniCa.create()
_SVID = _CA.issue("spiffe://example.org/external/x")


@PROPS
@given(
    store=svidstores,
    app=session_name,
    h=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    pred=st.just("~") | st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
)
def test_filled_templates_are_valid_sessions(store: SvidStoreSessions, app: str, h: str, pred: str) -> None:
    svid = yaml.safe_load(
        fill_template(
            render_svid_session_template(store),
            {
                "svid": _SVID.cert_text,
                "svid-key": _SVID.key_text,
                "session-name-selector": app,
                "session-hash-selector": h,
                "predecessor": pred,
            },
        )
    )
    assert scone_problems(svid) == []
    assert svid["name"] == store.svid_session(app)
    assert all(s["export"] == [{"session": app, "session_hash": h}] for s in svid["secrets"])


@PROPS
@given(
    name=st.text(max_size=12),
    cmd=st.text(max_size=12),
    mre=st.text(max_size=66),
    host=st.text(max_size=10),
    ip=st.text(max_size=8),
    reload=st.text(max_size=6),
    env_key=st.text(max_size=8),
    adv=st.text(max_size=14),
)
def test_any_input_renders_or_raises_scone_error(
    name: str, cmd: str, mre: str, host: str, ip: str, reload: str, env_key: str, adv: str
) -> None:
    target = MeshTarget(host, host, 80, f"spiffe://example.org/{host}", destination_ip=ip)
    messages: list[str] = []
    for render in (
        lambda: (
            render_network_shield_session(
                NetworkShieldApp(
                    name,
                    name,
                    cmd,
                    (mre,),
                    (target,),
                    environment=((env_key, "v"),),
                    attestation=Attestation(ignore_advisories=(adv,)),
                )
            ).session
        ),
        lambda: (
            render_ghostunnel_session(
                GhostunnelApp(
                    name, (mre,), (GhostunnelTunnel(target, 8000, timed_reload=reload, listen_host=host),)
                )
            ).session
        ),
    ):
        try:
            session = render()
        except SconeError as exc:
            messages.append(str(exc))
        else:  # whatever renders is valid
            assert scone_problems(session) == []
    assert all(messages)  # and whatever does not says why
