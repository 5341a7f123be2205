"""The one asyncio thread per process that asyncio libraries (aiortc) run in.

README "Gossip and links": aiortc is asyncio and the node is trio, so aiortc runs in one
dedicated daemon thread with its own event loop, shared by every rtc link of the process
(one loop, not one per link: ICE, DTLS and SCTP timers of all links on one thread).  Trio
reaches in with ``asyncio.run_coroutine_threadsafe`` (``Sidecar.run``, awaited without
blocking trio) and ``loop.call_soon_threadsafe`` (``Sidecar.call_soon``, fire and forget);
the asyncio side reaches back with ``TrioToken.run_sync_soon``, which the caller arranges
(``rtc.py`` posts into a memory channel).  The thread starts on first use and lives as
long as the process; it is a daemon so it never holds an exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class Sidecar:
    """An asyncio event loop running forever in its own daemon thread."""

    def __init__(self, name: str = "p2pupdate-asyncio") -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon; from any thread; never blocks."""
        self.loop.call_soon_threadsafe(fn, *args)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop from trio.  Cancelling the trio caller cancels it."""
        fut = self.submit(coro)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_f: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        fut.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            fut.cancel()
            raise
        return fut.result()


_lock = threading.Lock()
_sidecar: Sidecar | None = None


def sidecar() -> Sidecar:
    """The process's sidecar, started on first use."""
    global _sidecar
    with _lock:
        if _sidecar is None:
            _sidecar = Sidecar()
        return _sidecar
