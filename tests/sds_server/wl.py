"""Identities from the real embedded Workload API, fetched with real py-spiffe (shared by SDS tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from spiffe import WorkloadApiClient

MESH_ID = "spiffe://example.org/ns/default/sa/httpbin"
CLIENT_ID = "spiffe://example.org/external/scone-app"


def mesh_config(trust_domain: str = "example.org", **extra: Any) -> dict[str, Any]:
    """Two entries for this test process: the mesh service on socket ``mesh``, the external app on ``ext``."""
    uid = os.getuid()
    return {
        "trust_domain": trust_domain,
        "svid_ttl": "1h",
        "entries": [
            {
                "spiffe_id": f"spiffe://{trust_domain}/ns/default/sa/httpbin",
                "selectors": [f"unix:uid:{uid}", "socket:mesh"],
            },
            {
                "spiffe_id": f"spiffe://{trust_domain}/external/scone-app",
                "selectors": [f"unix:uid:{uid}", "socket:ext"],
            },
        ],
        **extra,
    }


@dataclass(frozen=True)
class Identity:
    spiffe_id: str
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    bundle_pem: bytes
    serial: int
    bundles: dict[str, bytes]


def fetch_identity(address: str) -> Identity:
    """The default X509-SVID + bundles the Workload API at ``address`` gives this process (py-spiffe)."""
    with WorkloadApiClient(address, default_timeout=10) as client:
        ctx = client.fetch_x509_context()
    svid = ctx.default_svid
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundles = {
        b.trust_domain.name: b"".join(a.public_bytes(serialization.Encoding.PEM) for a in b.x509_authorities)
        for b in ctx.x509_bundle_set.bundles
    }
    return Identity(
        str(svid.spiffe_id),
        chain,
        key,
        bundles[svid.spiffe_id.trust_domain.name],
        svid.leaf.serial_number,
        bundles,
    )
