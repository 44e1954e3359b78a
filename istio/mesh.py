"""The ``IstioOperator`` overlay that puts the mesh on SPIRE through meshbridge's SDS server.

Sources: istio.io "ops/integrations/spire" and istio/istio ``samples/security/spire/istio-spire-config.yaml``
(the documented overlay: ``meshConfig.trustDomain``, a ``spire`` injection template, gateway
``k8s.overlays``); istio-agent uses an external SDS server when a socket exists at
``/run/secrets/workload-spiffe-uds/socket`` when it starts (``security.WorkloadIdentitySocketPath``).

Shape we render (differs from the docs on purpose):

* the pod keeps Istio's own ``workload-socket`` *emptyDir* and mounts it at
  ``/run/secrets/workload-spiffe-uds`` in istio-proxy **and** in an extra ``meshbridge-sds`` container,
  which serves SDS on ``…/socket`` (owner UID 1337, istio-proxy's) from the SPIRE agent's Workload API
  socket, mounted by the SPIFFE CSI driver (``csi.spiffe.io``) into that container only;
* ``meshbridge-sds`` is a Kubernetes *native sidecar* (an init container with ``restartPolicy: Always``,
  Kubernetes >= 1.29) with a startup probe on the socket, so the socket exists before istio-proxy
  starts — otherwise istio-agent would start its own (Citadel) SDS server on that path instead. That
  ordering needs istio-proxy to be a regular container. The pods that use the template say so
  themselves with Istio's per-pod annotation ``sidecar.istio.io/nativeSidecar: "false"`` (Istio >= 1.24;
  it takes precedence over istiod's ``ENABLE_NATIVE_SIDECARS``), so the rest of the mesh keeps
  whatever istiod decides; ``OverlayParams.pin_classic_sidecars`` still sets the mesh-wide env for
  older Istio;
* gateways are not injected: their Deployment gets both volumes and the native sidecar through
  ``k8s.overlays`` patches. ``k8s.volumes`` is *not* used: istioctl applies only a fixed list of
  ``k8s`` fields (``operator/pkg/render/postprocess.go``: affinity, env, hpaSpec, imagePullPolicy,
  nodeSelector, podDisruptionBudget, podAnnotations, priorityClassName, readinessProbe, replicaCount,
  resources, strategy, tolerations, serviceAnnotations, service, securityContext) and silently drops
  the rest, which left the SDS container mounting a volume that did not exist;
* apps in a federated trust domain (``OverlayParams.peer_trust_domains``) are admitted by Istio's own
  SAN check through ``meshConfig.caCertificates[].trustDomains`` (istio/istio#43536): the inbound
  ``DownstreamTlsContext`` then requires a URI SAN with prefix ``spiffe://<td>/`` for the mesh trust
  domain, its ``trustDomainAliases`` and those trust domains (``ApplyToCommonTLSContext``,
  ``pilot/pkg/security``). Not ``trustDomainAliases``: an alias also makes AuthorizationPolicy
  principals of the mesh trust domain match the same path in the alias, so an app's trust domain could
  mint ``spiffe://<apps td>/ns/<ns>/sa/<sa>`` and pass as that mesh workload. Not
  ``PILOT_SKIP_VALIDATE_TRUST_DOMAIN``: it accepts every trust domain mesh-wide. Which bundles a pod
  actually trusts is still decided per pod by its ``ROOTCA`` (our SDS server, ``--rootca-all-bundles``
  only where the pod's SPIRE entry federates).

Workloads opt in with the pod annotations of :func:`injection_annotation`.
"""

from __future__ import annotations

import re

import yaml

from istio._checks import DNS1123_LABEL, TRUST_DOMAIN, is_label
from istio.errors import raise_problems
from istio.model import DEFAULT_ROOT_NAMESPACE, Gateway, OverlayParams, PeerTrustDomain

__all__ = [
    "INSTALL_API_VERSION",
    "NATIVE_SIDECAR_ANNOTATION",
    "SDS_CONTAINER_NAME",
    "WORKLOAD_API_VOLUME",
    "WORKLOAD_SOCKET_VOLUME",
    "injection_annotation",
    "render_istio_operator",
    "sds_container",
]

INSTALL_API_VERSION = "install.istio.io/v1alpha1"
SDS_CONTAINER_NAME = "meshbridge-sds"
WORKLOAD_SOCKET_VOLUME = "workload-socket"  # Istio's own emptyDir name in the sidecar template and gateways
WORKLOAD_API_VOLUME = "spiffe-workload-api"


def _check(params: OverlayParams) -> None:
    problems: list[str] = []
    if not TRUST_DOMAIN.match(params.trust_domain):
        problems.append(
            f"trust_domain: {params.trust_domain!r}: lowercase letters, digits, '.', '-' and '_' only"
        )
    if not params.sds_image.strip() or any(c.isspace() for c in params.sds_image) or "{{" in params.sds_image:
        problems.append(f"sds_image: {params.sds_image!r}: an image reference without spaces or '{{{{'")
    if params.revision is not None and not is_label(params.revision):
        problems.append(f"revision: {params.revision!r}: a DNS-1123 label (istioctl validateRevision)")
    if not DNS1123_LABEL.match(params.template_name):
        problems.append(f"template_name: {params.template_name!r}: a DNS-1123 label")
    if not DNS1123_LABEL.match(params.root_namespace):
        problems.append(f"root_namespace: {params.root_namespace!r}: a DNS-1123 label")
    if not 0 <= params.proxy_uid <= 2**31 - 1:
        problems.append(f"proxy_uid: {params.proxy_uid!r}: a UID between 0 and 2147483647")
    for path_field in ("workload_api_mount", "sds_socket_dir"):
        value = getattr(params, path_field)
        if not value.startswith("/") or value.endswith("/") or any(c.isspace() for c in value):
            problems.append(f"{path_field}: {value!r}: an absolute directory path without trailing '/'")
    if "/" in params.workload_api_socket_name or not params.workload_api_socket_name:
        problems.append(f"workload_api_socket_name: {params.workload_api_socket_name!r}: a file name")
    for i, peer in enumerate(params.peer_trust_domains):
        if not TRUST_DOMAIN.match(peer.trust_domain) or peer.trust_domain == params.trust_domain:
            problems.append(
                f"peer_trust_domains[{i}].trust_domain: {peer.trust_domain!r}: "
                "a trust domain other than the mesh's"
            )
    names = [g.name for g in params.gateways]
    for i, gateway in enumerate(params.gateways):
        if not re.fullmatch(r"[a-z0-9.-]{1,254}", gateway.name):
            problems.append(f"gateways[{i}].name: {gateway.name!r}: [a-z0-9.-]{{1,254}}")
        elif names.count(gateway.name) > 1:
            problems.append(f"gateways[{i}].name: {gateway.name!r}: gateway names must be unique")
    raise_problems(problems)


NATIVE_SIDECAR_ANNOTATION = "sidecar.istio.io/nativeSidecar"


def injection_annotation(params: OverlayParams) -> dict[str, str]:
    """The pod annotations a workload needs to get the SPIRE-backed sidecar: the template, and
    istio-proxy as a regular container (so our native-sidecar SDS container starts first)."""
    return {
        "inject.istio.io/templates": f"sidecar,{params.template_name}",
        NATIVE_SIDECAR_ANNOTATION: "false",
    }


def sds_container(params: OverlayParams) -> dict[str, object]:
    """The ``meshbridge-sds`` native sidecar (a pod ``initContainers[]`` item).

    ``--socket-owner`` lets istio-proxy (UID ``proxy_uid``) connect to the 0600 SDS socket. The startup
    probe is ``meshbridge sds probe`` (a gRPC health check on the socket): the image (``make image``)
    has no shell or coreutils, so ``test -S`` cannot run there.
    """
    socket = f"{params.sds_socket_dir}/socket"
    workload_api = f"unix://{params.workload_api_mount}/{params.workload_api_socket_name}"
    return {
        "name": SDS_CONTAINER_NAME,
        "image": params.sds_image,
        "imagePullPolicy": params.image_pull_policy,
        # Native sidecar (KEP-753): started before the regular containers, kept running, and
        # istio-proxy is started only once the startup probe has seen the socket.
        "restartPolicy": "Always",
        "command": [
            "meshbridge",
            "sds",
            "serve",
            "--workload-api",
            workload_api,
            "--listen",
            socket,
            "--socket-owner",
            str(params.proxy_uid),
            # Federation: ROOTCA carries every bundle the Workload API gives this pod as a SPIFFE
            # validator (each trust domain checked against its own bundle). SPIRE gives a pod the
            # bundles of the trust domains its entry federates with, and only those, so a pod whose
            # ClusterSPIFFEID has no federatesWith keeps trusting the mesh's bundle alone.
            *(["--rootca-all-bundles"] if params.peer_trust_domains else []),
        ],
        "startupProbe": {
            "exec": {"command": ["meshbridge", "sds", "probe", "--listen", socket]},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        # Same UID as istio-proxy: the 0600 socket is then ours to hand over without CAP_CHOWN (all
        # capabilities are dropped), and `--socket-owner` is a no-op chown to ourselves.
        "securityContext": {
            "runAsUser": params.proxy_uid,
            "runAsGroup": params.proxy_uid,
            "runAsNonRoot": params.proxy_uid != 0,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            _socket_mount(params),
            {"name": WORKLOAD_API_VOLUME, "mountPath": params.workload_api_mount, "readOnly": True},
        ],
    }


def _socket_volume() -> dict[str, object]:
    return {"name": WORKLOAD_SOCKET_VOLUME, "emptyDir": {}}


def _socket_mount(params: OverlayParams) -> dict[str, object]:
    return {"name": WORKLOAD_SOCKET_VOLUME, "mountPath": params.sds_socket_dir}


def _workload_api_volume(params: OverlayParams) -> dict[str, object]:
    return {"name": WORKLOAD_API_VOLUME, "csi": {"driver": params.csi_driver, "readOnly": True}}


def _injection_template(params: OverlayParams) -> str:
    """The named sidecar injection template, merged over Istio's ``sidecar`` template.

    Istio merges templates with a strategic merge patch of the pod: containers and volumes by name.
    The template text is a Go template; the values in it are literal (checked to hold no ``{{``).
    """
    pod = {
        "spec": {
            "initContainers": [sds_container(params)],
            "containers": [{"name": "istio-proxy", "volumeMounts": [_socket_mount(params)]}],
            "volumes": [_socket_volume(), _workload_api_volume(params)],
        }
    }
    return yaml.safe_dump(pod, sort_keys=False, default_flow_style=False)


def _gateway_component(params: OverlayParams, gateway: Gateway) -> dict[str, object]:
    # Gateways are not injected: their Deployment comes from the gateway chart, which already has the
    # `workload-socket` emptyDir mounted in istio-proxy. Add the CSI volume and our native sidecar with
    # overlay patches (istioctl ignores `k8s.volumes`: postprocess.go patches a fixed list of fields).
    component: dict[str, object] = {
        "name": gateway.name,
        "enabled": True,
        "label": dict(gateway.labels),
        "k8s": {
            "overlays": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": gateway.name,
                    "patches": [
                        {
                            "path": f"spec.template.spec.volumes.[name:{WORKLOAD_SOCKET_VOLUME}]",
                            "value": _socket_volume(),
                        },
                        {
                            # Appended ("[-1]"): the chart has no such volume, and a `[name:…]` path that
                            # matches nothing is dropped silently (postprocess.go applyPatches collects the
                            # error and never returns it), leaving the sidecar mounting a missing volume.
                            "path": "spec.template.spec.volumes[-1]",
                            "value": _workload_api_volume(params),
                        },
                        {
                            "path": (
                                "spec.template.spec.containers.[name:istio-proxy]"
                                f".volumeMounts.[name:{WORKLOAD_SOCKET_VOLUME}]"
                            ),
                            "value": _socket_mount(params),
                        },
                        {"path": "spec.template.spec.initContainers", "value": [sds_container(params)]},
                    ],
                }
            ],
        },
    }
    if gateway.namespace is not None:
        component["namespace"] = gateway.namespace
    return component


def _ca_certificate(peer: PeerTrustDomain) -> dict[str, object]:
    """A ``meshConfig.caCertificates`` entry naming ``peer``'s trust domain for Istio's SAN check.

    istiod fetches ``spiffeBundleUrl`` with Web PKI only, so the URL is given only for an ``https_web``
    bundle endpoint; an ``https_spiffe`` endpoint gets the trust domain alone (the bundle reaches the
    pods that federate through SPIRE and our SDS server's ``ROOTCA``, never through istiod).
    """
    entry: dict[str, object] = {"trustDomains": [peer.trust_domain]}
    if peer.profile == "https_web":
        entry["spiffeBundleUrl"] = peer.bundle_endpoint_url
    return entry


def render_istio_operator(params: OverlayParams) -> dict[str, object]:
    """The ``IstioOperator`` for ``istioctl install -f``: trust domain, injection template, gateways."""
    _check(params)
    values: dict[str, object] = {
        "sidecarInjectorWebhook": {"templates": {params.template_name: _injection_template(params)}},
    }
    if params.pin_classic_sidecars:
        values["pilot"] = {"env": {"ENABLE_NATIVE_SIDECARS": "false"}}
    if params.root_namespace != DEFAULT_ROOT_NAMESPACE:
        # istioctl places istiod (and so meshConfig.rootNamespace, where the mesh-wide STRICT
        # PeerAuthentication must live) by values.global.istioNamespace; the IstioOperator's own
        # metadata.namespace and spec.namespace do not move it (proven with the real istioctl:
        # tests/istio/test_istioctl_manifest.py)
        values["global"] = {"istioNamespace": params.root_namespace}
    mesh_config: dict[str, object] = {"trustDomain": params.trust_domain}
    if params.peer_trust_domains:
        mesh_config["caCertificates"] = [_ca_certificate(peer) for peer in params.peer_trust_domains]
    spec: dict[str, object] = {
        "profile": params.profile,
        "meshConfig": mesh_config,
        "values": values,
    }
    if params.revision is not None:
        spec["revision"] = params.revision
    components: dict[str, object] = {}
    for kind in ("ingress", "egress"):
        gateways = [_gateway_component(params, g) for g in params.gateways if g.kind == kind]
        if gateways:
            components[f"{kind}Gateways"] = gateways
    if components:
        spec["components"] = components
    name = "meshbridge-spire" if params.revision is None else f"meshbridge-spire-{params.revision}"
    return {
        "apiVersion": INSTALL_API_VERSION,
        "kind": "IstioOperator",
        "metadata": {"name": name, "namespace": params.root_namespace},
        "spec": spec,
    }
