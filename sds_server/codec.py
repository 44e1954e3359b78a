"""A grpclib codec that sends pre-encoded bytes as they are.

The servicer encodes each ``DiscoveryResponse`` once per version and shares those bytes across every
stream that needs them (the per-stream nonce is a second, tiny serialised message appended to them:
concatenated protobuf encodings parse as one merged message — protobuf encoding spec, "Last One
Wins" / merging of repeated serialisations). Protobuf messages (requests, health) go through the
usual ``SerializeToString`` / ``FromString``.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError


class PassThroughProtoCodec(CodecBase):
    """``proto`` content subtype; ``bytes`` are written unchanged, messages are (de)serialised."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes | bytearray | memoryview):
            return bytes(message)
        data: bytes = message.SerializeToString()
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is bytes:
            return data
        return message_type.FromString(data)


class ServerProtoCodec(PassThroughProtoCodec):
    """Both servers' codec: a request that does not decode is Internal ``grpc: error unmarshalling
    request: …`` — grpc-go's status and words (``server.go`` ``processUnaryRPC``), so SPIRE's — not
    grpclib's Unknown. Client-side decoding keeps :class:`PassThroughProtoCodec`."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return super().decode(data, message_type)
        except DecodeError as exc:
            raise GRPCError(Status.INTERNAL, f"grpc: error unmarshalling request: {exc}") from exc
