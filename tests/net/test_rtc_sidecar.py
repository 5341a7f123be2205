"""The asyncio sidecar that aiortc and zeroconf run in: one thread per process, from trio."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio

from p2pupdate.net.asyncio_bridge import sidecar
from p2pupdate.net.discovery import ZeroconfDiscovery
from tests.net.test_rtc import _linked, _run, needs_netns, netns

__all__ = ["netns"]


async def test_one_thread_values_and_errors_cross() -> None:
    car = sidecar()
    assert sidecar() is car  # one per process

    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    assert await car.run(where()) == "p2pupdate-asyncio"

    async def boom() -> None:
        raise KeyError("from asyncio")

    with pytest.raises(KeyError, match="from asyncio"):
        await car.run(boom())


async def test_cancelling_the_trio_caller_cancels_the_coroutine() -> None:
    car = sidecar()
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with trio.move_on_after(5) as scope:
        async with trio.open_nursery() as n:
            n.start_soon(car.run, forever())
            await trio.to_thread.run_sync(started.wait)
            n.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert await trio.to_thread.run_sync(cancelled.wait, 5)


async def scenario_zeroconf_and_rtc_share_the_thread() -> None:
    """Two zeroconf announcers find each other while an rtc link runs, all on one loop."""
    found = {"a": trio.Event(), "b": trio.Event()}

    def discovery(name: str, port: int) -> ZeroconfDiscovery:
        return ZeroconfDiscovery(
            node=name * 64,
            host="10.77.0.1",
            port=port,
            interfaces=["10.77.0.1"],
            on_found=lambda c: found[name].set() if c.node != name * 64 else None,
        )

    with trio.fail_after(25):
        async with trio.open_nursery() as n:
            await n.start(discovery("a", 7001).run)
            await n.start(discovery("b", 7002).run)
            a, b = await _linked()
            await a.send(b"while zeroconf runs")
            assert await b.receive() == b"while zeroconf runs"
            await found["a"].wait()
            await found["b"].wait()
            names = sorted(t.name for t in threading.enumerate())  # while all of it runs
            n.cancel_scope.cancel()
        await a.aclose()
        await b.aclose()
    assert names.count("p2pupdate-asyncio") == 1 and not any("zeroconf" in x for x in names)
    print("ok shared", names)


@needs_netns
def test_zeroconf_and_rtc_share_one_asyncio_thread(netns: str) -> None:
    assert "ok shared" in _run(netns, scenario_zeroconf_and_rtc_share_the_thread)
