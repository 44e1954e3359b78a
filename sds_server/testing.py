"""Test support for ``sds_server``: a source fed by hand and a server run in a background thread.

For this project's tests and benches; not part of the package's public API (``sds_server`` does not
re-export it). Typical use::

    from sds_server.server import ServerConfig
    from sds_server.testing import run_in_thread

    with run_in_thread(ServerConfig(listen=Path("/tmp/x/sds.sock"))) as running:
        running.server.source.publish(svids, bundles)   # a StaticSource when no workload_api is given
        running.wait_first_secret()

:func:`publish_mismatched_key` serves a default SVID whose key does not match its certificate, so a
test can prove Envoy NACKs it and keeps its previous secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec

from sds_server.metrics import Metrics
from sds_server.server import SdsServer, ServerConfig, build_server, serve
from sds_server.snapshot import SecretSnapshot
from sds_server.source import SnapshotPublisher
from sds_server.x509svid import private_key_pem

__all__ = ["RunningServer", "StaticSource", "publish_mismatched_key", "run_in_thread", "static_server"]

_T = TypeVar("_T")


class StaticSource(SnapshotPublisher):
    """Secrets handed in by the caller (:meth:`publish`); for benches and protocol tests. Starting and
    stopping are the publisher's own (its timer: NotAfter and pending NotBefore apply here too)."""


def static_server(config: ServerConfig) -> SdsServer:
    """An unstarted server fed by a :class:`StaticSource` sharing the server's metrics."""
    metrics = Metrics()
    return build_server(config, StaticSource(config.names, metrics), metrics=metrics)


def publish_mismatched_key(source: SnapshotPublisher) -> SecretSnapshot:
    """Publish the current material with the default SVID's key swapped for a fresh, unrelated one.

    Returns the snapshot it replaced: ``source.publish(previous.svids, previous.bundles)`` restores it
    (or the next Workload API update does).
    """
    previous = source.current()
    if previous is None or previous.default_svid is None:
        raise RuntimeError("publish_mismatched_key: no default SVID is being served")
    other = private_key_pem(ec.generate_private_key(ec.SECP256R1()))
    default = previous.default_svid
    svids = [replace(s, key_pem=other) if s == default else s for s in previous.svids]
    source.publish(svids, previous.bundles)
    return previous


@dataclass(frozen=True, slots=True)
class RunningServer:
    """A server running on its own loop in a background thread (tests, demo, benches)."""

    server: SdsServer
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30) -> _T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_first_secret(self, timeout: float = 30) -> None:
        self.call(asyncio.wait_for(self.server.wait_first_secret(), timeout), timeout + 1)


@contextlib.contextmanager
def run_in_thread(config: ServerConfig) -> Iterator[RunningServer]:
    """Start a server in a background thread; stop it (and the thread) on exit.

    Without ``config.workload_api`` the server is fed by a :class:`StaticSource`.
    """
    server = static_server(config) if config.workload_api is None else build_server(config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop, ready = asyncio.Event(), asyncio.Event()  # bound to the loop that first waits on them
    failure: list[BaseException] = []

    async def main() -> None:
        task = asyncio.ensure_future(serve(config, ready=ready, stop=stop, server=server))
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # start failed: its exception must be recorded before the caller is released
            waiter.cancel()
            await task
        started.set()
        await task

    def target() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            failure.append(exc)
            started.set()
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=target, name="sds-server", daemon=True)
    thread.start()
    started.wait(30)
    if failure:
        thread.join(5)
        raise failure[0]
    try:
        yield RunningServer(server, loop)
    finally:
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(15)
