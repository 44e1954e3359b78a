"""Envoy ``Secret`` messages (xds-protos), built from SVID and bundle PEM bytes — nothing else.

Shapes follow Envoy's ``envoy.extensions.transport_sockets.tls.v3`` API:

* ``tls_certificate``: ``certificate_chain`` (leaf first, then intermediates) and ``private_key``
  (PKCS#8), both as ``inline_bytes`` PEM — SPIRE agent's SDS and Istio's agent send the same.
* ``validation_context.trusted_ca``: one trust domain's X.509 authorities, concatenated PEM.
* ``validation_context.custom_validator_config``: ``envoy.tls.cert_validator.spiffe`` with a
  ``SPIFFECertValidatorConfig`` holding one ``trust_domains`` entry per trust domain — how Envoy
  validates peers of several (federated) trust domains, each against its own bundle (SPIFFE
  Federation: a bundle is only valid for the trust domain it belongs to).

Every builder is pure; serialisation is deterministic so equal content gives equal bytes (the content
hash is the xDS ``version_info``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.transport_sockets.tls.v3 import (
    common_pb2,
    secret_pb2,
    tls_spiffe_validator_config_pb2,
)
from google.protobuf import any_pb2

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105 - a type URL
SPIFFE_VALIDATOR_NAME = "envoy.tls.cert_validator.spiffe"


def tls_certificate_secret(name: str, chain_pem: bytes, key_pem: bytes) -> secret_pb2.Secret:
    """``name`` → the workload's certificate chain and PKCS#8 private key (inline PEM)."""
    return secret_pb2.Secret(
        name=name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=chain_pem),
            private_key=base_pb2.DataSource(inline_bytes=key_pem),
        ),
    )


def trusted_ca_secret(name: str, bundle_pem: bytes) -> secret_pb2.Secret:
    """``name`` → one trust domain's bundle as ``validation_context.trusted_ca``."""
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=bundle_pem),
        ),
    )


def spiffe_validator_secret(name: str, bundles: Mapping[str, bytes]) -> secret_pb2.Secret:
    """``name`` → a SPIFFE certificate validator: one entry per trust domain (sorted), own bundle each."""
    config = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig(
        trust_domains=[
            tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig.TrustDomain(
                name=td, trust_bundle=base_pb2.DataSource(inline_bytes=bundles[td])
            )
            for td in sorted(bundles)
        ]
    )
    typed = any_pb2.Any()
    typed.Pack(config, deterministic=True)
    return secret_pb2.Secret(
        name=name,
        validation_context=common_pb2.CertificateValidationContext(
            custom_validator_config=extension_pb2.TypedExtensionConfig(
                name=SPIFFE_VALIDATOR_NAME, typed_config=typed
            )
        ),
    )


def encode_secret(secret: secret_pb2.Secret) -> bytes:
    """Deterministic wire bytes of ``secret``."""
    data: bytes = secret.SerializeToString(deterministic=True)
    return data


def content_version(data: bytes) -> str:
    """The xDS ``version_info`` of some content: hex sha256 (same content → same version)."""
    return hashlib.sha256(data).hexdigest()


def pack_secret_bytes(secret_bytes: bytes) -> any_pb2.Any:
    """A ``google.protobuf.Any`` carrying already-encoded ``Secret`` bytes (no re-encoding)."""
    return any_pb2.Any(type_url=SECRET_TYPE_URL, value=secret_bytes)
