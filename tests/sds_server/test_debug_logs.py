"""Per-stream debug events (``sds.push`` / ``sds.ack``) are still logged when debug is on.

The servicer skips building their arguments when the stream's logger filters debug out (a hot path at
thousands of streams); this checks that the guard does not also silence them when debug is enabled,
and that it does skip them when it is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from sds_server.testing import RunningServer
from tests.sds_server.client import channel, sotw
from tests.support.pki import MiniCa


@pytest.fixture
def log_level() -> Iterator[Callable[[int], None]]:
    old = structlog.get_config()

    def set_level(level: int) -> None:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))

    try:
        yield set_level
    finally:
        structlog.configure(**old)


def _push_and_ack(server: RunningServer, ca: MiniCa) -> list[dict[str, Any]]:
    server.server.source.publish([ca.issue("/ns/default/sa/httpbin").svid()], [ca.bundle()])
    server.wait_first_secret()

    async def scenario() -> None:
        async with channel(server.server.config.listen) as ch, sotw(ch) as s:
            await s.request(["default", "ROOTCA"])
            await s.recv()
            await s.ack(["default", "ROOTCA"])
            await s.nothing()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(scenario())
        acks = server.server.metrics.acks.labels("sotw")._value.get
        deadline = time.monotonic() + 5
        while acks() < 1 and time.monotonic() < deadline:  # the server handles the ACK asynchronously
            time.sleep(0.02)
    return logs


def test_push_and_ack_debug_events_logged_when_debug_is_on(
    static_server: RunningServer, ca: MiniCa, log_level: Callable[[int], None]
) -> None:
    log_level(logging.DEBUG)
    logs = _push_and_ack(static_server, ca)
    pushes = [e for e in logs if e["event"] == "sds.push"]
    acks = [e for e in logs if e["event"] == "sds.ack"]
    assert len(pushes) == 1
    assert pushes[0]["names"] == ["ROOTCA", "default"]
    assert pushes[0]["nonce"] == "1"
    assert len(acks) == 1
    assert acks[0]["nonce"] == "1"
    assert acks[0]["version"] == pushes[0]["version"]


def test_no_debug_events_when_debug_is_off(
    static_server: RunningServer, ca: MiniCa, log_level: Callable[[int], None]
) -> None:
    log_level(logging.INFO)
    logs = _push_and_ack(static_server, ca)
    assert not [e for e in logs if e["log_level"] == "debug"]
    assert static_server.server.metrics.acks.labels("sotw")._value.get() == 1  # the ACK was still handled
