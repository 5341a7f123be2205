"""Push-sum across a restarted node: the estimate a status report carries stays in range.

P7 item 2: a node's status report carried an estimate every replica refused (``schema:
field 'capacity': expected finite number in [0, 1e18]``).  Its source: a neighbour that
restarted inside an epoch (a swap, a crash: same node id, same epoch) starts its running
sums on the edge over, and the receiver credited the new sums against the old ones --
subtracting mass it had long passed on.  The estimate went negative (-500 capacity in a
pool of 100).  Cores wired in memory, no sockets (README "Architecture").
"""

from __future__ import annotations

import random

from p2pupdate.core.gossip import (
    Aggregate,
    Contact,
    Gossip,
    Introduced,
    LinkDown,
    Neighbor,
    StatusChanged,
    leader_priority,
)

from .harness import NOW, node_key
from .test_gossip import FAST, Attacker, Fleet, key_for, lone_node, status


def _in_range(g: Gossip) -> bool:
    for est in (g.live_estimate, g.estimate):
        if est is None:
            continue
        for t in est.pools.values():
            for v in (t.capacity, t.load, t.serving, t.nodes):
                if not 0.0 <= v <= 1e18:
                    return False
    return True


def test_a_neighbour_that_restarts_its_running_sums_does_not_drive_the_estimate_negative() -> None:
    g, _, _ = lone_node()
    peer = Attacker(key_for("honest"), host="7.7.7.7")
    peer.link(g)
    g.handle(StatusChanged(status=status(0, state="draining")), 0.0, NOW)  # contributes 0
    peer.send(g, Neighbor(me=peer.contact, high=True))
    g.handle_timer(0.0, NOW)
    g.start_epoch()
    leader = min((node_key(k).keyid for k in range(50)), key=lambda n: leader_priority(g.epoch, n))
    share = Aggregate(
        epoch=g.epoch, leader=leader, weight=0.5, sums={"default": (50.0, 10.0, 0.5, 0.5)}
    )
    peer.send(g, share)
    g.handle_timer(1.5, NOW + 1)  # passes half of its mass on
    # the peer restarted: its first share on this edge again, far below the last one
    restarted = Aggregate(
        epoch=g.epoch, leader=leader, weight=0.3, sums={"default": (0.0, 0.0, 0.0, 0.3)}
    )
    peer.send(g, restarted)
    est = g.live_estimate
    assert est is not None
    totals = est.pools["default"]
    assert totals.capacity >= 0.0 and totals.load >= 0.0 and totals.serving >= 0.0, totals
    # the new running sum is credited whole, as a new flow
    assert totals.nodes > 0.0 and _in_range(g)


def _restart(fleet: Fleet, i: int) -> None:
    """Node i's process restarts: a fresh core with the same key (a swap), its links gone."""
    old = fleet.nodes[i]
    for pair in [p for p in fleet.links if i in p]:
        gen = fleet.links.pop(pair)
        other = pair[0] if pair[1] == i else pair[1]
        fleet.pending.append((other, LinkDown(peer=old.node), pair, gen))
    for key in [k for k in fleet.view if i in k]:
        del fleet.view[key]
    fresh = Gossip(
        key=node_key(1000 + i),
        contact=old.contact,
        status=fleet.statuses[i],
        rng=random.Random(i),
        verify=fleet.shells[i].verify,
        now=fleet.now,
        config=FAST,
    )
    fleet.nodes[i] = fresh
    contacts = tuple(
        Contact(node=c.node, host=c.host, port=c.port)
        for c in (fleet.nodes[j].contact for j in range(len(fleet.nodes)) if j != i)
    )[:6]
    fleet.perform(i, fresh.handle(Introduced(contacts=contacts), fleet.now, fleet.utc))


def test_estimates_stay_in_range_while_nodes_restart_inside_an_epoch() -> None:
    fleet = Fleet(6)
    fleet.introduce()
    fleet.run(12)
    for g in fleet.nodes:
        g.start_epoch()
    rng = random.Random(5)
    for r in range(40):  # one epoch of FAST is 60 rounds: every restart is inside it
        if r % 5 == 2:
            _restart(fleet, rng.randrange(6))
        fleet.step()
        bad = [i for i, g in enumerate(fleet.nodes) if not _in_range(g)]
        assert not bad, (r, [fleet.nodes[i].live_estimate for i in bad])
