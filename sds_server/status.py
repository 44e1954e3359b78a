"""What the running SDS server tells about itself, on its own socket: status and probe.

* ``meshbridge.sds.v1.Admin/Status`` — a unary call answering JSON: the server (snapshot version,
  default SVID serial and expiry, ``rotation_overdue``, file credentials watched) and every open
  stream: node id, names, held names, versions, the last NACK with Envoy's message, and the serial and
  expiry of each certificate the stream holds. No key material, no PEM. It lives on the SDS socket, so
  the socket's mode/owner and ``--allow-uid`` govern who may read it — the same callers who may read
  the secrets themselves.
* :func:`probe` — a ``grpc.health.v1`` check over the socket; ``meshbridge sds probe`` replaces a
  ``test -S`` startup probe in an image without a shell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpclib.const
import grpclib.exceptions
from grpclib.client import Channel
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.server import Stream

from sds_server.codec import PassThroughProtoCodec

if TYPE_CHECKING:
    from sds_server.server import SdsServer

ADMIN_SERVICE = "meshbridge.sds.v1.Admin"
STATUS_METHOD = f"/{ADMIN_SERVICE}/Status"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"


class _RotationCheck:
    """Names the health service ``meshbridge.sds.v1.SvidRotation`` (grpclib derives it from this)."""

    def __mapping__(self) -> dict[str, Any]:
        return {"/meshbridge.sds.v1.SvidRotation/Check": None}


ROTATION_HEALTH_SERVICE = _RotationCheck()


class AdminService:
    """The ``Status`` RPC of one :class:`~sds_server.server.SdsServer`."""

    def __init__(self, server: SdsServer) -> None:
        self._server = server

    def report(self) -> dict[str, Any]:
        srv = self._server
        snap = srv.servicer.snapshot
        d = snap.default_svid if snap is not None else None
        return {
            "snapshot_version": None if snap is None else snap.version[:16],
            "default": None
            if d is None
            else {
                "spiffe_id": d.spiffe_id,
                "serial": format(d.serial, "x"),
                "not_after": d.not_after.isoformat(),
            },
            "pending": [] if snap is None else [s.spiffe_id for s in snap.pending],
            "rotation_overdue": srv.rotation_overdue,
            "serving": d is not None,
            "file_credentials_watched": srv.files.watched,
            "streams": srv.servicer.status(),
        }

    async def Status(self, stream: Stream[bytes, bytes]) -> None:
        await stream.recv_message()
        await stream.send_message(json.dumps(self.report(), sort_keys=True).encode())

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            STATUS_METHOD: grpclib.const.Handler(
                self.Status, grpclib.const.Cardinality.UNARY_UNARY, bytes, bytes
            )
        }


async def _unary(path: Path, method: str, request: Any, response_type: Any, deadline: float) -> Any:
    """One unary call to the server on ``path``: its response (``None`` if it sent none)."""
    channel = Channel(path=str(path), codec=PassThroughProtoCodec())
    try:
        async with channel.request(
            method, grpclib.const.Cardinality.UNARY_UNARY, type(request), response_type, timeout=deadline
        ) as stream:
            await stream.send_message(request, end=True)
            response = await stream.recv_message()
            await stream.recv_trailing_metadata()
    finally:
        channel.close()
    return response


async def fetch_status(path: Path, deadline: float = 5.0) -> dict[str, Any]:
    """The status JSON of the SDS server listening on ``path``."""
    data = await _unary(path, STATUS_METHOD, b"", bytes, deadline)
    report: dict[str, Any] = json.loads(data or b"{}")
    return report


async def probe(path: Path, service: str = "", deadline: float = 3.0) -> tuple[bool, str]:
    """(serving?, message) from the ``grpc.health.v1`` check of the server on ``path``."""
    try:
        resp = await _unary(
            path, HEALTH_METHOD, HealthCheckRequest(service=service), HealthCheckResponse, deadline
        )
    except (OSError, TimeoutError, grpclib.exceptions.GRPCError, grpclib.exceptions.ProtocolError) as exc:
        return False, f"{path}: health check failed: {type(exc).__name__}: {exc}"
    if resp is None:
        return False, f"{path}: health check returned nothing"
    name = HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == HealthCheckResponse.SERVING, f"{path}: {name}"


def render_text(report: dict[str, Any]) -> str:
    """A human-readable view of :func:`fetch_status`'s report."""
    d = report.get("default")
    streams = report.get("streams", [])
    lines = [
        f"snapshot {report.get('snapshot_version')}  default "
        + (f"{d['spiffe_id']} serial {d['serial']} expires {d['not_after']}" if d else "none")
        + ("  ROTATION OVERDUE" if report.get("rotation_overdue") else ""),
        f"{len(streams)} stream(s)",
    ]
    for st in streams:
        lines.append(f"- {st['api']} node={st['node'] or '?'} uid={st['uid']} responses={st['responses']}")
        for name in st["names"]:
            cert = st["certificates"].get(name)
            held = " HELD" if name in st["held"] else ""
            version = st["versions"].get(name, "-")
            extra = f" serial {cert['serial']} expires {cert['not_after']}" if cert else ""
            lines.append(f"    {name}  version {version}{held}{extra}")
        nack = st.get("last_nack")
        if nack:
            lines.append(f"    last NACK {nack['names']} version {nack['version']}: {nack['message']}")
    return "\n".join(lines)
