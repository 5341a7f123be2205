"""The queue of nodes a full pool refused: their order, their wait, and who is nudged.

Pure, like ``coordinator.policy`` (README "Capacity gate and departure tokens"): no IO, no
clock, no randomness; time and state are arguments and every method returns a new value.
Each replica keeps one ``WaitQueue`` per pool, of its own refusals (with several replicas
each has its own queue; the node merges their answers with ``core.departure.merge_answers``
as before).

Why a queue: a capacity refusal used to say "ask again when the earliest lease would
lapse, at most ``base_retry``", but a lease usually ends long before it lapses (the node
reports "rejoined" after a swap of seconds), so a refused node slept ``base_retry`` (60 s)
behind a slot that freed after 5.  Now:

* a refusal that waiting fixes (``QUEUED``: the lease budget, min-serving, headroom, the
  emergency budget) joins the node to the queue, or keeps its place if it is there; its
  answer carries the 1-based ``position`` and a ``retry_after`` derived from the blocking
  leases' ends: the ``position``-th earliest end (the slot this node is next for once those
  ahead took theirs) through ``policy.retry_until`` (the one clamp to ``[min_retry,
  base_retry]``); a node further back than there are blocking leases waits in proportion
  to its place, ``position x hold / leases`` within ``[base_retry,
  queue_retry_max]`` (``queued_retry``; ``hold`` the median of the replica's recent
  lease holds, at most ``queue_hold``: ``policy_hold``), so a long queue asks ``position / leases`` times
  less often, in its order (measured at 100k nodes with 20 leases and ~40,000 waiting:
  219 -> 14 asks/s with ``queue_retry_max`` 1800 s, the same share updated;
  simulations/README.md);
* when a lease ends (rejoined, returned, failed), ``next_to_nudge`` names the first node
  in the queue not nudged within ``NUDGE_HOLD``; the replica pushes it a signed
  ``SlotPush`` and it asks at once (within the updater's ``wake_spread``).  The hold keeps
  two slots freed together from nudging the same node twice;
* a node that is granted leaves the queue; one that does not come back within
  ``forget_after`` (twice the longest wait a capacity refusal can give, plus one
  ``min_retry``: a node stretches its wait by less than 100%) is forgotten, so a node that
  went away holds no place.  The queue holds at most ``MAX_WAITING`` nodes; past that a
  refusal has no position, and the wait of the place after the last one (without growth,
  the plain lease-end ``retry_after``).

The queue orders who is *told*; it does not reserve the slot.  A node that is not the
head and asks first is granted as before (the pool's rules, not its place, decide); the
head is refused again, keeps its place, and is nudged at the next freed slot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from .policy import (
    EMERGENCY_BUDGET,
    LEASE_BUDGET,
    MIN_SERVING,
    NO_SPARE_CAPACITY,
    Lease,
    NodeId,
    PolicyConfig,
    retry_until,
)

__all__ = [
    "MAX_WAITING",
    "NUDGE_HOLD",
    "QUEUED",
    "WaitQueue",
    "Waiting",
    "blocking_ends",
    "forget_after",
    "grows",
    "longest_queued_retry",
    "queue_place",
    "queued_retry",
]

#: Refusals a freed slot may end (the rest: a pause, warm-up, a stale aggregate).
QUEUED: Final = frozenset({LEASE_BUDGET, MIN_SERVING, NO_SPARE_CAPACITY, EMERGENCY_BUDGET})
#: Most nodes one replica queues per pool (each entry is a few dozen bytes).
MAX_WAITING: Final = 4096
#: A nudged node is not nudged again for this long (seconds): it asks within a second or
#: two, and the next freed slot goes to the next node in the queue meanwhile.
NUDGE_HOLD: Final = 10.0


def forget_after(config: PolicyConfig) -> float:
    """How long a queued node keeps its place without asking again (seconds): twice the
    longest wait a queued refusal gives, plus one ``min_retry``."""
    return 2.0 * longest_queued_retry(config) + config.min_retry


def longest_queued_retry(config: PolicyConfig) -> float:
    """The longest ``retry_after`` ``queued_retry`` gives."""
    return max(config.base_retry, config.queue_retry_max)


def grows(config: PolicyConfig) -> bool:
    """Whether ``retry_after`` grows with the queue position past the blocking leases."""
    return config.queue_retry_max > config.base_retry


def blocking_ends(leases: Iterable[Lease], *, forced: bool, now: float) -> list[float]:
    """When the leases that block an ask lapse, earliest first: the forced ones for the
    emergency budget, every active one for the rest."""
    return sorted(
        lease.expires for lease in leases if lease.active(now) and (lease.forced or not forced)
    )


def queue_place(position: int | None, config: PolicyConfig) -> int:
    """The place ``queued_retry`` computes with: ``position``; without one (the queue is
    full) the place after the last when the wait grows, else the head's."""
    if position is not None:
        return position
    return MAX_WAITING + 1 if grows(config) else 1


def queued_retry(
    ends: list[float],
    position: int | None,
    now: float,
    config: PolicyConfig,
    hold: float | None = None,
) -> float:
    """``retry_after`` for the node at ``position`` (``queue_place``) of a pool whose
    blocking leases end at ``ends`` (sorted).

    * within the leases (place ``p <= k = len(ends)``): the ``p``-th earliest end (the
      slot this node is next for once those ahead took theirs), clamped by
      ``retry_until`` to ``[min_retry, base_retry]``;
    * behind them: ``base_retry`` -- or, when the wait grows (``queue_retry_max >
      base_retry``), ``p x hold / k`` (the ``k`` slots serve the ``p - 1`` nodes
      ahead in about that long) within ``[base_retry, queue_retry_max]``, so the nodes
      at the back of a long queue ask ``p / k`` times less often, in their order.

    ``hold``: how long one node holds a slot, ``policy_hold.hold_in_force`` of the
    leases that ended (the replica's measurement); None: ``config.queue_hold``.

    Non-decreasing in ``p`` and never above ``longest_queued_retry``.  ``decide_batch``'s
    companion ``policy_batch.queued_retry_batch`` computes the same elementwise.
    """
    place = queue_place(position, config)
    k = len(ends)
    if place <= k:
        return retry_until(ends[place - 1], now, config)
    if k == 0 or not grows(config):
        return config.base_retry
    grown = place * (config.queue_hold if hold is None else hold) / k
    return min(config.queue_retry_max, max(config.base_retry, grown))


@dataclass(frozen=True, kw_only=True)
class Waiting:
    """One refused node in the queue."""

    node: NodeId
    #: Forgotten at this time unless it asks again.
    until: float
    #: When the replica last told it a slot freed (``-inf``: never).
    nudged: float = -math.inf


@dataclass(frozen=True, kw_only=True)
class WaitQueue:
    """One replica's refused nodes of one pool, in the order they were first refused."""

    waiting: tuple[Waiting, ...] = ()

    def __post_init__(self) -> None:
        if len({w.node for w in self.waiting}) != len(self.waiting):
            raise ValueError("wait queue: a node is queued twice")
        if len(self.waiting) > MAX_WAITING:
            raise ValueError(f"wait queue: more than {MAX_WAITING} nodes")

    def live(self, now: float) -> WaitQueue:
        """Without the nodes that did not come back in time."""
        kept = tuple(w for w in self.waiting if now < w.until)
        return self if len(kept) == len(self.waiting) else replace(self, waiting=kept)

    def position(self, node: NodeId) -> int | None:
        """1-based place of ``node``, or None."""
        for i, w in enumerate(self.waiting):
            if w.node == node:
                return i + 1
        return None

    def join(self, node: NodeId, now: float, config: PolicyConfig) -> tuple[WaitQueue, int | None]:
        """``node`` was refused by a full pool at ``now``: it keeps its place (or takes the
        last one) for ``forget_after`` more.  Its position, or None when the queue is full."""
        queue = self.live(now)
        until = now + forget_after(config)
        place = queue.position(node)
        if place is not None:
            entry = replace(queue.waiting[place - 1], until=until)
            waiting = (*queue.waiting[: place - 1], entry, *queue.waiting[place:])
            return replace(queue, waiting=waiting), place
        if len(queue.waiting) >= MAX_WAITING:
            return queue, None
        return replace(queue, waiting=(*queue.waiting, Waiting(node=node, until=until))), len(
            queue.waiting
        ) + 1

    def leave(self, node: NodeId) -> WaitQueue:
        """Without ``node`` (it was granted)."""
        kept = tuple(w for w in self.waiting if w.node != node)
        return self if len(kept) == len(self.waiting) else replace(self, waiting=kept)

    def next_to_nudge(self, now: float) -> tuple[WaitQueue, NodeId | None]:
        """A slot freed at ``now``: the first live node not nudged within ``NUDGE_HOLD``
        (marked nudged), or None."""
        queue = self.live(now)
        for i, w in enumerate(queue.waiting):
            if w.nudged + NUDGE_HOLD <= now:
                entry = replace(w, nudged=now)
                waiting = (*queue.waiting[:i], entry, *queue.waiting[i + 1 :])
                return replace(queue, waiting=waiting), w.node
        return queue, None
