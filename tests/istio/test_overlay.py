"""The IstioOperator overlay: strict-schema valid; its injection template does what istio-agent needs."""

from __future__ import annotations

import copy
from dataclasses import replace

import jsonschema
import pytest
import yaml

from istio import Gateway, IstioError, OverlayParams, injection_annotation, render_istio_operator
from tests.support.schemas import problems, validate

PARAMS = OverlayParams(trust_domain="example.org", sds_image="registry.example/meshbridge:0.1.0")
SDS_COMMAND = [
    "meshbridge",
    "sds",
    "serve",
    "--workload-api",
    "unix:///spiffe-workload-api/spire-agent.sock",
    "--listen",
    "/run/secrets/workload-spiffe-uds/socket",
    "--socket-owner",
    "1337",
]


def _template(doc: dict[str, object], name: str = "spire") -> dict[str, object]:
    spec = doc["spec"]
    assert isinstance(spec, dict)
    text = spec["values"]["sidecarInjectorWebhook"]["templates"][name]
    assert isinstance(text, str)
    assert "{{" not in text  # a Go template: our literal values must not open an action
    pod = yaml.safe_load(text)
    assert isinstance(pod, dict)
    return pod


def test_default_overlay_is_valid_in_strict_mode() -> None:
    doc = render_istio_operator(PARAMS)
    assert problems(doc) == []
    assert doc["apiVersion"] == "install.istio.io/v1alpha1"
    assert doc["metadata"] == {"name": "meshbridge-spire", "namespace": "istio-system"}
    spec = doc["spec"]
    assert isinstance(spec, dict)
    assert spec["meshConfig"] == {"trustDomain": "example.org"}
    assert "revision" not in spec
    # istio-proxy stays a regular container, started after our native-sidecar SDS server
    # ... by the per-pod annotation (Istio >= 1.24), not istiod's mesh-wide ENABLE_NATIVE_SIDECARS
    assert "pilot" not in spec["values"]
    assert injection_annotation(PARAMS)["sidecar.istio.io/nativeSidecar"] == "false"
    pinned = render_istio_operator(replace(PARAMS, pin_classic_sidecars=True))["spec"]["values"]  # type: ignore[index]
    assert pinned["pilot"] == {"env": {"ENABLE_NATIVE_SIDECARS": "false"}}


def test_strict_validation_catches_a_typo_in_the_overlay() -> None:
    # Negative control: proves the validator is strict where istioctl would silently ignore the key.
    doc = copy.deepcopy(render_istio_operator(PARAMS))
    doc["spec"]["meshConfig"]["trustdomain"] = "example.org"  # type: ignore[index]
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def test_injection_template_runs_the_sds_server_before_istio_proxy() -> None:
    pod = _template(render_istio_operator(PARAMS))["spec"]
    (sds,) = pod["initContainers"]
    assert sds["name"] == "meshbridge-sds"
    assert sds["image"] == PARAMS.sds_image
    assert sds["command"] == SDS_COMMAND
    # native sidecar: keeps running, and istio-proxy starts only once the socket exists
    assert sds["restartPolicy"] == "Always"
    # runs as istio-proxy's UID with no capabilities: the socket is owned by 1337 without CAP_CHOWN
    assert sds["securityContext"]["runAsUser"] == 1337
    assert sds["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert sds["startupProbe"]["exec"]["command"] == [
        "meshbridge",
        "sds",
        "probe",
        "--listen",
        "/run/secrets/workload-spiffe-uds/socket",
    ]
    mounts = {m["name"]: m for m in sds["volumeMounts"]}
    assert mounts["workload-socket"]["mountPath"] == "/run/secrets/workload-spiffe-uds"
    assert mounts["spiffe-workload-api"] == {
        "name": "spiffe-workload-api",
        "mountPath": "/spiffe-workload-api",
        "readOnly": True,
    }
    (proxy,) = pod["containers"]
    assert proxy["name"] == "istio-proxy"
    assert proxy["volumeMounts"] == [
        {"name": "workload-socket", "mountPath": "/run/secrets/workload-spiffe-uds"}
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["workload-socket"] == {"name": "workload-socket", "emptyDir": {}}
    assert volumes["spiffe-workload-api"]["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}
    # the SPIRE agent socket is only mounted in our container, never in istio-proxy
    assert all(m["name"] != "spiffe-workload-api" for m in proxy["volumeMounts"])


def test_revision_template_name_and_annotation() -> None:
    params = replace(PARAMS, revision="spire-1", template_name="mbspire")
    doc = render_istio_operator(params)
    validate(doc)
    assert doc["spec"]["revision"] == "spire-1"  # type: ignore[index]
    assert doc["metadata"]["name"] == "meshbridge-spire-spire-1"  # type: ignore[index]
    assert _template(doc, "mbspire")["spec"]["initContainers"][0]["name"] == "meshbridge-sds"
    assert injection_annotation(params) == {
        "inject.istio.io/templates": "sidecar,mbspire",
        "sidecar.istio.io/nativeSidecar": "false",
    }


def test_gateways_get_the_csi_volume_and_the_sds_sidecar() -> None:
    params = replace(
        PARAMS,
        gateways=(
            Gateway(),
            Gateway(
                name="istio-egressgateway",
                labels=(("istio", "egressgateway"),),
                kind="egress",
                namespace="istio-egress",
            ),
        ),
    )
    doc = render_istio_operator(params)
    assert problems(doc) == []
    components = doc["spec"]["components"]  # type: ignore[index]
    (ingress,) = components["ingressGateways"]
    (egress,) = components["egressGateways"]
    assert ingress["name"] == "istio-ingressgateway"
    assert ingress["label"] == {"istio": "ingressgateway"}
    assert egress["namespace"] == "istio-egress"
    for gw in (ingress, egress):
        # istioctl drops k8s.volumes (operator/pkg/render/postprocess.go patches a fixed list of k8s
        # fields): the CSI volume comes with an overlay patch like everything else
        assert set(gw["k8s"]) == {"overlays"}
        (overlay,) = gw["k8s"]["overlays"]
        assert overlay["kind"] == "Deployment"
        assert overlay["name"] == gw["name"]
        patches = {p["path"]: p["value"] for p in overlay["patches"]}
        # The chart has no CSI volume: it is appended ([-1]); a [name:…] path matching nothing would be
        # dropped silently by istioctl (tests/istio/test_istioctl_manifest.py proves it with istioctl)
        assert patches["spec.template.spec.volumes[-1]"] == {
            "name": "spiffe-workload-api",
            "csi": {"driver": "csi.spiffe.io", "readOnly": True},
        }
        (sds,) = patches["spec.template.spec.initContainers"]
        mounts = {m["name"] for m in sds["volumeMounts"]}
        volumes = {v["name"] for p, v in patches.items() if p.startswith("spec.template.spec.volumes")}
        assert mounts <= volumes  # every volume the SDS container mounts exists in the Deployment
        assert sds["command"] == SDS_COMMAND
        assert (
            patches["spec.template.spec.containers.[name:istio-proxy].volumeMounts.[name:workload-socket]"][
                "mountPath"
            ]
            == "/run/secrets/workload-spiffe-uds"
        )


def test_no_gateways_means_no_components() -> None:
    doc = render_istio_operator(replace(PARAMS, gateways=()))
    validate(doc)
    assert "components" not in doc["spec"]  # type: ignore[operator]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"trust_domain": "Example.org"}, "trust_domain: 'Example.org': lowercase letters"),
        ({"sds_image": "img {{ .Values }}"}, "sds_image: 'img {{ .Values }}': an image reference"),
        ({"revision": "Spire"}, "revision: 'Spire': a DNS-1123 label"),
        ({"template_name": "sidecar_spire"}, "template_name: 'sidecar_spire': a DNS-1123 label"),
        ({"sds_socket_dir": "run/x"}, "sds_socket_dir: 'run/x': an absolute directory path"),
        (
            {"gateways": (Gateway(), Gateway())},
            "gateways[1].name: 'istio-ingressgateway': gateway names must be unique",
        ),
    ],
)
def test_bad_parameters_name_field_value_and_rule(change: dict[str, object], message: str) -> None:
    with pytest.raises(IstioError) as excinfo:
        render_istio_operator(replace(PARAMS, **change))  # type: ignore[arg-type]
    assert message in str(excinfo.value)
