"""The KV client against real nodes: spreading, failover, typed errors, and a rolling restart
of three nodes under continuous load with zero failed requests."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import trio

from p2pupdate.work.client import (
    ClientConfig,
    KVClient,
    NoNodeAvailableError,
    RequestRejectedError,
    RequestTimeoutError,
)
from p2pupdate.work.kv import KVConfig
from p2pupdate.work.protocol import StoreLimits

from .helpers import STEP_TIMEOUT, Node, free_port

FAST = ClientConfig(attempt_timeout=0.5, request_timeout=2.0, backoff_max=0.1)


async def test_calls_spread_over_nodes(nursery: trio.Nursery, tmp_path: Path) -> None:
    nodes = [Node(nursery, tmp_path / str(i)) for i in range(3)]
    for node in nodes:
        await node.start()
    async with KVClient([n.endpoint for n in nodes]) as kv:
        served = Counter([await kv.put(f"k{i}", b"%d" % i) for i in range(30)])
        assert set(served) == {n.endpoint for n in nodes}
        assert max(served.values()) - min(served.values()) <= 1  # round robin when idle
        by_endpoint = {n.endpoint: n.w for n in nodes}
        assert sum(len(w) for w in by_endpoint.values()) == 30
        assert await kv.ping() in by_endpoint
        assert kv.stats.succeeded == 31 and kv.stats.failed == 0


async def test_going_away_moves_the_call_to_another_node(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    a, b = Node(nursery, tmp_path / "a"), Node(nursery, tmp_path / "b")
    await a.start()
    await b.start()
    async with KVClient([a.endpoint, b.endpoint]) as kv:
        for _ in range(4):  # open connections to both
            await kv.ping()
        await a.w.drain(trio.current_time() + 5)
        served = [await kv.put(f"k{i}", b"v") for i in range(20)]
        assert set(served) == {b.endpoint}
        assert kv.stats.going_away >= 1 and kv.stats.failed == 0
        assert len(b.w) == 20 and len(a.w) == 0


async def test_all_nodes_down_is_a_typed_error(tmp_path: Path) -> None:
    async with KVClient(
        [("127.0.0.1", free_port()), ("127.0.0.1", free_port())], config=FAST
    ) as kv:
        start = trio.current_time()
        with pytest.raises(NoNodeAvailableError, match="cannot connect"):
            await kv.put("k", b"v")
        assert trio.current_time() - start < FAST.request_timeout + 1
        assert kv.stats.failed == 1 and kv.stats.connection_errors >= 2
    async with KVClient([]) as kv:
        with pytest.raises(NoNodeAvailableError, match="no endpoints"):
            await kv.get("k")
    few = ClientConfig(max_attempts=3, backoff_initial=0.001, backoff_max=0.001)
    async with KVClient([("127.0.0.1", free_port())], config=few) as kv:
        with pytest.raises(NoNodeAvailableError, match="after 3 attempts"):
            await kv.get("k")


async def test_a_silent_node_is_a_timeout(nursery: trio.Nursery) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SocketStream] = []

    async def accept_and_ignore() -> None:
        async with listeners[0]:
            while True:
                held.append(await listeners[0].accept())

    nursery.start_soon(accept_and_ignore)
    port = listeners[0].socket.getsockname()[1]
    async with KVClient([("127.0.0.1", port)], config=FAST) as kv:
        with pytest.raises(RequestTimeoutError):
            await kv.get("k")
        assert kv.stats.timeouts >= 1
    for stream in held:
        await stream.aclose()


async def test_refusals_are_not_retried(nursery: trio.Nursery, tmp_path: Path) -> None:
    config = KVConfig(store=StoreLimits(max_keys=1))
    node = Node(nursery, tmp_path, config)
    await node.start()
    async with KVClient([node.endpoint]) as kv:
        await kv.put("only", b"1")
        with pytest.raises(RequestRejectedError) as info:
            await kv.put("second", b"2")
        assert info.value.code == "store-full" and info.value.endpoint == node.endpoint
        assert kv.stats.retries == 0
        with pytest.raises(ValueError):  # the caller's mistake, caught before sending
            await kv.put("k" * 300, b"")
        with pytest.raises(RuntimeError):
            await KVClient([node.endpoint]).get("k")  # not entered


async def test_set_endpoints_at_runtime(nursery: trio.Nursery, tmp_path: Path) -> None:
    a, b = Node(nursery, tmp_path / "a"), Node(nursery, tmp_path / "b")
    await a.start()
    await b.start()
    async with KVClient([a.endpoint]) as kv:
        assert await kv.put("k", b"1") == a.endpoint
        kv.set_endpoints([b.endpoint])
        assert kv.endpoints == [b.endpoint]
        assert {await kv.put(f"k{i}", b"2") for i in range(5)} == {b.endpoint}
        kv.set_endpoints([a.endpoint, b.endpoint])
        assert {await kv.put(f"j{i}", b"3") for i in range(6)} == {a.endpoint, b.endpoint}


async def test_waiting_for_a_node_ends_when_one_is_added(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    node = Node(nursery, tmp_path)
    await node.start()
    # the first failure sets the dead node aside for 5..10 s (jittered backoff)
    config = ClientConfig(request_timeout=STEP_TIMEOUT, backoff_initial=10.0, backoff_max=10.0)
    async with KVClient([("127.0.0.1", free_port())], config=config) as kv:
        result: list[tuple[str, int]] = []

        async def put() -> None:
            result.append(await kv.put("k", b"v"))

        async with trio.open_nursery() as inner:
            inner.start_soon(put)
            with trio.fail_after(STEP_TIMEOUT):
                while kv.stats.connection_errors == 0:  # the first node failed: now waiting
                    await trio.sleep(0.005)
            start = trio.current_time()
            kv.set_endpoints([node.endpoint])
        assert result == [node.endpoint]
        assert trio.current_time() - start < 4.5  # woken by the update, not the backoff


async def test_rolling_restart_under_load_fails_no_request(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    nodes = [Node(nursery, tmp_path / f"n{i}") for i in range(3)]
    for node in nodes:
        await node.start()
    acked: dict[str, tuple[bytes, int]] = {}  # key -> (value, index of the node that acked)
    failures: list[BaseException] = []
    progress = [0]
    changed = trio.Event()
    stop = trio.Event()

    owner = {n.endpoint: i for i, n in enumerate(nodes)}  # every endpoint a node ever had

    def index_of(endpoint: tuple[str, int]) -> int:
        return owner[endpoint]

    async def writer(kv: KVClient, wid: int) -> None:
        rng = random.Random(wid)
        n = 0
        while not stop.is_set():
            n += 1
            key = f"w{wid}-{n}"
            value = rng.randbytes(rng.randrange(1, 2000))
            try:
                endpoint = await kv.put(key, value)
                acked[key] = (value, index_of(endpoint))
                await kv.get(key)  # reads ride along (any node may answer)
            except Exception as exc:  # any failure at all fails the test
                failures.append(exc)
                return
            progress[0] += 1
            changed.set()

    async def wait_for_progress(count: int) -> None:
        target = progress[0] + count
        with trio.fail_after(STEP_TIMEOUT):
            while progress[0] < target:
                nonlocal changed
                changed = trio.Event()
                await changed.wait()

    config = ClientConfig(request_timeout=STEP_TIMEOUT, attempt_timeout=5.0, max_attempts=50)
    async with KVClient([n.endpoint for n in nodes], config=config) as kv:
        async with trio.open_nursery() as load:
            for wid in range(6):
                load.start_soon(writer, kv, wid)
            await wait_for_progress(60)
            for i, node in [*enumerate(nodes)] * 2:  # two full rounds
                await node.rolling_restart()  # drain, checkpoint, stop, start, restore
                owner[node.endpoint] = i
                kv.set_endpoints([n.endpoint for n in nodes])
                assert not failures, failures
                await wait_for_progress(60)  # the restarted node takes load again
                assert node.w.stats.requests > 0
            await wait_for_progress(60)
            stop.set()
        stats = kv.stats

    assert failures == []
    assert stats.failed == 0
    assert stats.going_away + stats.connection_errors >= 1  # the restarts were noticed
    assert len(acked) >= 300
    lost = [k for k, (v, i) in acked.items() if nodes[i].w.get(k) != v]
    assert lost == []
