"""``SpiffeWorkloadAPI`` messages (``workload.proto``), declared here into a private descriptor pool.

Why not ``spiffe._proto.workload_pb2`` (py-spiffe's generated module): importing any ``spiffe`` module
runs ``spiffe/__init__.py``, which imports grpcio — about 10 MB of RSS and a second gRPC runtime in a
process that is otherwise grpclib on one asyncio loop. The definitions below follow, field for field,
spiffe/go-spiffe ``proto/spiffe/workload/workload.proto`` (the file py-spiffe and SPIRE ship), so the
wire format is the same. They go into a **private** pool because the messages are top-level
(``X509SVIDResponse``, no package) and py-spiffe — our test peer — registers the same names in
protobuf's default pool; a private pool lets both live in one process.

Classes are built at import, typed ``Any`` (they are dynamic): convert them to typed values at the edge
(:mod:`sds_server.workload_client` does for the X.509 half).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

__all__ = [
    "JWTSVID",
    "X509SVID",
    "JWTBundlesRequest",
    "JWTBundlesResponse",
    "JWTSVIDRequest",
    "JWTSVIDResponse",
    "ValidateJWTSVIDRequest",
    "ValidateJWTSVIDResponse",
    "X509BundlesRequest",
    "X509BundlesResponse",
    "X509SVIDRequest",
    "X509SVIDResponse",
]

_FD = descriptor_pb2.FieldDescriptorProto
_STRING, _BYTES, _MESSAGE = _FD.TYPE_STRING, _FD.TYPE_BYTES, _FD.TYPE_MESSAGE
_ONE, _MANY = _FD.LABEL_OPTIONAL, _FD.LABEL_REPEATED

# (message, [(field, number, type, label, message type)]); a "map" field is map<string, bytes>
_MESSAGES: tuple[tuple[str, tuple[tuple[str, int, int | str, int, str], ...]], ...] = (
    ("X509SVIDRequest", ()),
    (
        "X509SVIDResponse",
        (("svids", 1, _MESSAGE, _MANY, ".X509SVID"), ("crl", 2, _BYTES, _MANY, ""),
         ("federated_bundles", 3, "map", _MANY, "FederatedBundlesEntry")),
    ),
    (
        "X509SVID",
        (("spiffe_id", 1, _STRING, _ONE, ""), ("x509_svid", 2, _BYTES, _ONE, ""),
         ("x509_svid_key", 3, _BYTES, _ONE, ""), ("bundle", 4, _BYTES, _ONE, ""),
         ("hint", 5, _STRING, _ONE, "")),
    ),
    ("X509BundlesRequest", ()),
    (
        "X509BundlesResponse",
        (("crl", 1, _BYTES, _MANY, ""), ("bundles", 2, "map", _MANY, "BundlesEntry")),
    ),
    ("JWTSVIDRequest", (("audience", 1, _STRING, _MANY, ""), ("spiffe_id", 2, _STRING, _ONE, ""))),
    ("JWTSVIDResponse", (("svids", 1, _MESSAGE, _MANY, ".JWTSVID"),)),
    (
        "JWTSVID",
        (("spiffe_id", 1, _STRING, _ONE, ""), ("svid", 2, _STRING, _ONE, ""), ("hint", 3, _STRING, _ONE, "")),
    ),
    ("JWTBundlesRequest", ()),
    ("JWTBundlesResponse", (("bundles", 1, "map", _MANY, "BundlesEntry"),)),
    ("ValidateJWTSVIDRequest", (("audience", 1, _STRING, _ONE, ""), ("svid", 2, _STRING, _ONE, ""))),
    (
        "ValidateJWTSVIDResponse",
        (("spiffe_id", 1, _STRING, _ONE, ""), ("claims", 2, _MESSAGE, _ONE, ".google.protobuf.Struct")),
    ),
)  # fmt: skip


def _build() -> dict[str, Any]:
    f = descriptor_pb2.FileDescriptorProto(
        name="meshbridge/spiffe_workload.proto", syntax="proto3", dependency=["google/protobuf/struct.proto"]
    )
    for name, fields in _MESSAGES:
        m = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            if ftype == "map":
                entry = m.nested_type.add(name=type_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_STRING, label=_ONE)
                entry.field.add(name="value", number=2, type=_BYTES, label=_ONE)
                m.field.add(
                    name=fname, number=number, type=_MESSAGE, label=_MANY, type_name=f".{name}.{type_name}"
                )
            else:
                assert isinstance(ftype, int)
                m.field.add(name=fname, number=number, type=ftype, label=label, type_name=type_name or None)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(struct_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(f)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n, _ in _MESSAGES}


_CLASSES = _build()
X509SVIDRequest: Any = _CLASSES["X509SVIDRequest"]
X509SVIDResponse: Any = _CLASSES["X509SVIDResponse"]
X509SVID: Any = _CLASSES["X509SVID"]
X509BundlesRequest: Any = _CLASSES["X509BundlesRequest"]
X509BundlesResponse: Any = _CLASSES["X509BundlesResponse"]
JWTSVIDRequest: Any = _CLASSES["JWTSVIDRequest"]
JWTSVIDResponse: Any = _CLASSES["JWTSVIDResponse"]
JWTSVID: Any = _CLASSES["JWTSVID"]
JWTBundlesRequest: Any = _CLASSES["JWTBundlesRequest"]
JWTBundlesResponse: Any = _CLASSES["JWTBundlesResponse"]
ValidateJWTSVIDRequest: Any = _CLASSES["ValidateJWTSVIDRequest"]
ValidateJWTSVIDResponse: Any = _CLASSES["ValidateJWTSVIDResponse"]
