"""The lab does what P8's links need, checked with aiortc's own ICE agent (aioice).

Two nodes in two cone homes connect without a relay (server-reflexive / peer-reflexive
pairs); two nodes in two strict homes connect through coturn (a relay pair).  Each agent
runs in its own thread moved into its node's namespace (``enter_netns``) with its own
asyncio loop, as a node's aiortc thread will; candidates cross between the threads by
queues (the signaling a coordinator will relay).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

import aioice
import pytest

from scripts.netlab import Lab, enter_netns
from scripts.netlab.coturn import Turn, have_turnserver
from tests.netlab.conftest import TURN_SECRET, needs_netlab, turn_credentials

pytestmark = [
    needs_netlab,
    pytest.mark.skipif(not have_turnserver(), reason="coturn (turnserver) is not installed"),
]


def _agent(
    lab: Lab, node: str, controlling: bool, turn: Turn, use_turn: bool,
    out: queue.Queue[Any], into: queue.Queue[Any], result: dict[str, Any],
) -> None:  # fmt: skip
    enter_netns(lab.ns(node))

    async def main() -> None:
        kwargs: dict[str, Any] = {}
        if use_turn:
            username, password = turn_credentials(TURN_SECRET, node, int(time.time()) + 600)
            kwargs = {"turn_server": turn.server, "turn_username": username,
                      "turn_password": password}  # fmt: skip
        conn = aioice.Connection(
            ice_controlling=controlling, stun_server=turn.server, use_ipv6=False, **kwargs
        )
        try:
            await conn.gather_candidates()
            out.put((conn.local_username, conn.local_password, conn.local_candidates))
            username, password, candidates = await asyncio.to_thread(into.get, True, 10)
            conn.remote_username, conn.remote_password = username, password
            for candidate in candidates:
                await conn.add_remote_candidate(candidate)
            await conn.add_remote_candidate(None)
            await asyncio.wait_for(conn.connect(), 10)
            pair = conn._nominated[1]
            await conn.send(f"hello from {node}".encode())
            result[node] = {
                "kinds": (pair.local_candidate.type, pair.remote_candidate.type),
                "got": await asyncio.wait_for(conn.recv(), 5),
            }
        except Exception as e:
            result[node] = {"error": repr(e)}
            out.put((None, None, []))  # never leave the other agent waiting
        finally:
            await conn.close()

    asyncio.run(main())


def _connect(lab: Lab, turn: Turn, a: str, b: str, use_turn: bool) -> dict[str, Any]:
    ab: queue.Queue[Any] = queue.Queue()
    ba: queue.Queue[Any] = queue.Queue()
    result: dict[str, Any] = {}
    threads = [
        threading.Thread(target=_agent, args=(lab, a, True, turn, use_turn, ab, ba, result)),
        threading.Thread(target=_agent, args=(lab, b, False, turn, use_turn, ba, ab, result)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return result


def test_two_cone_homes_connect_without_a_relay(lab: Lab, turn: Turn) -> None:
    result = _connect(lab, turn, "a1", "d1", use_turn=True)
    assert result["a1"].get("got") == b"hello from d1", result
    assert result["d1"].get("got") == b"hello from a1", result
    for node in ("a1", "d1"):
        assert "relay" not in result[node]["kinds"], result


def test_two_strict_homes_connect_through_turn(lab: Lab, turn: Turn) -> None:
    result = _connect(lab, turn, "b1", "c1", use_turn=True)
    assert result["b1"].get("got") == b"hello from c1", result
    assert result["c1"].get("got") == b"hello from b1", result
    for node in ("b1", "c1"):
        assert "relay" in result[node]["kinds"], result
