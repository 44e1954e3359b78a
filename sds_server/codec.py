"""A grpclib codec that sends pre-encoded bytes as they are.

The servicer encodes each ``DiscoveryResponse`` once per version and shares those bytes across every
stream that needs them (the per-stream nonce is a second, tiny serialised message appended to them:
concatenated protobuf encodings parse as one merged message — protobuf encoding spec, "Last One
Wins" / merging of repeated serialisations). Protobuf messages (requests, health) go through the
usual ``SerializeToString`` / ``FromString``.
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.base import CodecBase


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
