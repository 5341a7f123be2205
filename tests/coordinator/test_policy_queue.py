"""The queue of refused nodes (``coordinator.policy_queue``), pure and through a replica.

The pure part pins the order, the waits derived from the leases' ends, the bound, the
forgetting and who is nudged.  The service part runs a replica in this trio run with light
nodes of the real protocol: a refusal of a full pool carries a queue position and a wait
from the blocking lease's end, and when the lease ends the head of the queue -- and only
it -- receives a ``SlotPush`` signed by the replica and addressed to it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import trio

from coordinator import policy, policy_queue
from coordinator.policy_queue import MAX_WAITING, NUDGE_HOLD, Waiting, WaitQueue
from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.core.session import Signer

from .service_helpers import LightNode, Network, ahttp, artifact_of, in_process

#: The position-th lease end within the clamp; the growth past the leases
#: (``queue_retry_max``, default 1800 s) is test_policy_proposals.py's.
CONFIG = policy.PolicyConfig(queue_retry_max=60.0)
T = 1000.0


def lease(node: str, expires: float, *, forced: bool = False) -> policy.Lease:
    return policy.Lease(node=node, pool="p", capacity=1.0, expires=expires, forced=forced)


def test_refused_nodes_keep_their_place_in_first_refused_order() -> None:
    q = WaitQueue()
    q, a = q.join("a", T, CONFIG)
    q, b = q.join("b", T + 1, CONFIG)
    q, a_again = q.join("a", T + 2, CONFIG)
    assert (a, b, a_again) == (1, 2, 1)
    assert q.leave("a").position("b") == 1
    assert q.leave("zz") is q


def test_the_wait_is_the_position_th_blocking_lease_end_within_the_clamp() -> None:
    leases = [lease("x", T + 30.0), lease("y", T + 5.0), lease("old", T - 1.0)]
    ends = policy_queue.blocking_ends(leases, forced=False, now=T)
    assert ends == [T + 5.0, T + 30.0]  # the lapsed one blocks nothing
    assert policy_queue.queued_retry(ends, 1, T, CONFIG) == 5.0
    assert policy_queue.queued_retry(ends, 2, T, CONFIG) == 30.0
    assert policy_queue.queued_retry(ends, 3, T, CONFIG) == CONFIG.base_retry  # none known
    assert policy_queue.queued_retry([T + 500.0], 1, T, CONFIG) == CONFIG.base_retry
    assert policy_queue.queued_retry([T + 0.01], 1, T, CONFIG) == CONFIG.min_retry
    assert policy_queue.queued_retry(ends, None, T, CONFIG) == 5.0  # unqueued: the earliest
    forced = [lease("f", T + 20.0, forced=True), lease("n", T + 3.0)]
    assert policy_queue.blocking_ends(forced, forced=True, now=T) == [T + 20.0]


def test_a_node_that_does_not_come_back_is_forgotten() -> None:
    q, _ = WaitQueue().join("gone", T, CONFIG)
    q, _ = q.join("back", T + 1, CONFIG)
    later = T + policy_queue.forget_after(CONFIG)
    assert later > T + CONFIG.base_retry * 1.2  # longer than any wait it was given, stretched
    q, place = q.join("back", later - 0.5, CONFIG)
    assert place == 2
    assert q.live(later).position("back") == 1 and q.live(later).position("gone") is None


def test_the_queue_is_bounded() -> None:
    full = WaitQueue(waiting=tuple(Waiting(node=i, until=T + 99) for i in range(MAX_WAITING)))
    same, place = full.join("late", T, CONFIG)
    assert place is None and same.position("late") is None
    with pytest.raises(ValueError):
        WaitQueue(waiting=(*full.waiting, Waiting(node="one-too-many", until=T + 99)))
    with pytest.raises(ValueError):
        WaitQueue(waiting=(Waiting(node="a", until=T), Waiting(node="a", until=T)))


def test_a_freed_slot_nudges_the_head_once_then_the_next() -> None:
    q = WaitQueue()
    for node in ("a", "b"):
        q, _ = q.join(node, T, CONFIG)
    q, first = q.next_to_nudge(T + 1)
    q, second = q.next_to_nudge(T + 2)  # a second slot while "a" is on its way
    q, third = q.next_to_nudge(T + 3)
    assert (first, second, third) == ("a", "b", None)
    q, again = q.next_to_nudge(T + 1 + NUDGE_HOLD)
    assert again == "a"  # it did not come: told again
    assert WaitQueue().next_to_nudge(T) == (WaitQueue(), None)


def test_the_queue_module_is_pure() -> None:
    source = Path(policy_queue.__file__).read_text()
    for banned in ("trio", "asyncio", "socket", "import os", "import time", "random", "thread"):
        assert banned not in source.split('"""', 2)[2], banned


# -- the signed push ---------------------------------------------------------------------------


def test_a_slot_push_opens_only_for_its_node_and_a_coordinator_key() -> None:
    key = crypto.SigningKey.from_seed(os.urandom(32))
    node = "ab" * 32
    freed = proto.SlotFreed(replica=key.keyid, node=node, pool="p", time=T)
    push = proto.SlotPush.sign(Signer(key), freed)
    decoded = proto.push_of(push.to_wire())
    assert decoded == push
    coordinators = {key.keyid: key.public_key}
    assert push.open(coordinators=coordinators, node=node) == freed
    with pytest.raises(P2PUpdateError):
        push.open(coordinators=coordinators, node="cd" * 32)
    with pytest.raises(P2PUpdateError):
        push.open(coordinators={}, node=node)
    forged = dataclasses.replace(push, sig=bytes(crypto.SIG_LEN))
    with pytest.raises(P2PUpdateError):
        forged.open(coordinators=coordinators, node=node)
    with pytest.raises(P2PUpdateError):
        proto.SlotPush(payload=push.payload, sig=b"short")


# -- through a replica -------------------------------------------------------------------------

DATA = os.urandom(3000)
TO = artifact_of(DATA)


async def test_a_replica_queues_the_refused_and_pushes_the_head_when_a_lease_ends(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net, token_ttl=40, max_skew=0, max_concurrent=1, min_serving=0) as (
        replica,
        url,
    ):
        for data in (net.release(DATA, "v2", 2), net.allowlist(1, [TO]), net.scope(TO, serial=1)):
            assert (await ahttp("POST", f"{url}/v1/publish", data))[0] == 200
        holder, head, second = (LightNode(net, [url]) for _ in range(3))
        async with trio.open_nursery() as nursery:
            for ln in (holder, head, second):
                await ln.start(nursery)
                assert await ln.status() == 1
            granted = await holder.ask(TO)
            assert granted.token is not None
            first = await head.ask(TO)
            then = await second.ask(TO)
            assert (first.gate, first.reason, first.position) == ("capacity", "lease-budget", 1)
            assert first.retry_after is not None and 35.0 < first.retry_after <= 40.0
            # behind the one lease: 2 x queue_hold / 1 lease, within [base_retry, max]
            cfg = replica.policy
            grown = min(cfg.queue_retry_max, max(cfg.base_retry, 2 * cfg.queue_hold / 1))
            assert then.position == 2 and then.retry_after == grown
            assert "queue position 1" in first.detail

            assert await holder.rejoined(TO, granted.token) == 1
            with trio.fail_after(5):
                while not any(isinstance(p, proto.SlotPush) for p in head.pushes):
                    await trio.sleep(0.01)
            push = next(p for p in head.pushes if isinstance(p, proto.SlotPush))
            keys = {replica.keyid: replica.key.public_key}
            freed = push.open(coordinators=keys, node=head.node)
            assert (freed.node, freed.pool) == (head.node, "default")
            assert not any(isinstance(p, proto.SlotPush) for p in second.pushes)

            again = await head.ask(TO)  # it asks at once: granted, and out of the queue
            assert again.token is not None
            assert replica.asks.queues["default"].position(head.node) is None
            assert replica.asks.queues["default"].position(second.node) == 1
            nursery.cancel_scope.cancel()
