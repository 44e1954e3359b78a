"""Fallback when no Ghostunnel binary exists: real Envoy as the client tunnel, built from the same command.

The rendered Ghostunnel flags map one to one: ``--listen`` → a plain loopback listener, ``--target`` (+
``--override-server-name``) → an upstream cluster with that SNI, ``--cert``/``--key``/``--cacert`` → the
materialised files, ``--verify-uri`` → an exact URI-SAN match on the server certificate. Envoy reads the
files once (inline ``filename`` sources; ``watched_directory`` only works for file-based SDS), so a
rotated SVID needs a restart here (said in the output). Unlike Ghostunnel fed from files, Envoy cannot
AND a host-name check with the URI-SAN match, so only the SPIFFE ID is verified.
"""

from __future__ import annotations

from pathlib import Path

from bridge.demo.errors import DemoError
from bridge.demo.plan import AppPlan
from bridge.demo.setup import Tunnel, start_envoy
from bridge.demo.supervisor import Supervisor
from bridge.demo.tunnel import GhostunnelCommand, LocalTunnel, localize, split_host_port
from bridge.envoy.bootstrap import static_cluster, tcp_proxy_listener, tls_socket
from bridge.processes import free_port

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def envoy_tunnel_bootstrap(cmd: GhostunnelCommand, *, node_id: str) -> dict[str, object]:
    """Envoy static config equivalent to a (localized) ``ghostunnel client`` command with files."""
    listen, target = cmd.get("listen"), cmd.get("target")
    cert, key, cacert = cmd.get("cert"), cmd.get("key"), cmd.get("cacert")
    if not (listen and target and cert and key and cacert):
        raise DemoError(f"{node_id}: the Envoy fallback needs --listen, --target, --cert, --key and --cacert")
    lhost, lport = split_host_port(listen, what="--listen")
    thost, tport = split_host_port(target, what="--target")
    sni = cmd.get("override-server-name") or thost
    matchers = [{"san_type": "URI", "matcher": {"exact": uri}} for uri in cmd.all("verify-uri")]
    tls: dict[str, object] = {
        "@type": _TLS + "UpstreamTlsContext",
        "sni": sni,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
            "validation_context": {
                "trusted_ca": {"filename": cacert},
                "match_typed_subject_alt_names": matchers,
            },
        },
    }
    return {
        "node": {"id": node_id, "cluster": "ghostunnel-fallback"},
        "static_resources": {
            "listeners": [tcp_proxy_listener("tunnel", lhost, lport, cluster="target", stat_prefix="tunnel")],
            "clusters": [static_cluster("target", thost, tport, tls_socket(tls))],
        },
    }


def start_envoy_tunnel(
    sup: Supervisor,
    envoy_bin: Path,
    app: AppPlan,
    cmd: GhostunnelCommand,
    *,
    sidecar_port: int,
    files: dict[str, Path],
    files_dir: Path | None,
    label: str,
) -> Tunnel:
    local = LocalTunnel(
        sidecar_port=sidecar_port, listen_port=free_port(), status_port=free_port(), files=files
    )
    localized = localize(cmd, local, what=app.session_path)
    envoy = start_envoy(
        sup,
        envoy_bin,
        f"tunnel-{app.name}",
        envoy_tunnel_bootstrap(localized, node_id=app.name),
        timeout=10.0,
    )
    detail = f"Envoy client tunnel from: {' '.join(localized.argv('ghostunnel')[1:])}"
    port = envoy.listeners["tunnel"]
    return Tunnel(app, label, "envoy-fallback", port, envoy.child, detail, files_dir, localized, envoy)
