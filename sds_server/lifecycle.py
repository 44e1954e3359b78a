"""Two-stage graceful exit on SIGINT/SIGTERM, for both servers (``sds serve``, ``workload-api serve``).

Like grpclib's ``grpclib.utils.graceful_exit``: the first signal sets the ``stop`` event the server's
``serve()`` waits on, and the server drains (health ``NOT_SERVING`` → close the listeners and the streams
→ remove the sockets). A second signal cuts the drain short: it cancels the serving task, whose
``finally`` blocks still remove the sockets, and :func:`until_signalled` returns :data:`EXIT_FORCED`.
Nothing calls ``os._exit``: what the process created is cleaned up either way.

Signal handlers only set the event or cancel the task (on the loop, ``loop.add_signal_handler``); they
are installed for the block's duration and removed after, so this works only in the main thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterator

import structlog

__all__ = ["EXIT_FORCED", "GracefulExit", "graceful_exit", "run_until_signalled", "until_signalled"]

log = structlog.get_logger(__name__)

#: Exit status after a second signal cut the drain short (0 after a complete drain).
EXIT_FORCED = 1

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulExit:
    """One :func:`graceful_exit` block: ``forced`` once a second signal cancelled the serving task."""

    def __init__(self) -> None:
        self.forced = False


@contextlib.contextmanager
def graceful_exit(stop: asyncio.Event, *, event: str, again_event: str) -> Iterator[GracefulExit]:
    """While in the block, the first SIGINT/SIGTERM sets ``stop`` (logged as ``event``); the next cancels
    the current task (logged as ``again_event``). Use inside the task that serves."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    state = GracefulExit()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info(event, signal=sig.name)
            stop.set()
            return
        log.warning(again_event, signal=sig.name, hint="exiting now; removing the sockets")
        state.forced = True
        if task is not None:
            task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield state
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


async def until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]], *, event: str, again_event: str
) -> int:
    """Await ``main(stop)`` under :func:`graceful_exit`: 0 after a drain, :data:`EXIT_FORCED` after a second
    signal (the cancellation it caused ends here)."""
    stop = asyncio.Event()
    with graceful_exit(stop, event=event, again_event=again_event) as state:
        try:
            await main(stop)
        except asyncio.CancelledError:
            if not state.forced:
                raise
    return EXIT_FORCED if state.forced else 0


def run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]], *, event: str, again_event: str
) -> int:
    """The CLI's entry: ``asyncio.run`` of :func:`until_signalled`; returns the exit status."""
    return asyncio.run(until_signalled(main, event=event, again_event=again_event))
