"""Gossip in synchronous rounds: the real ``p2pupdate.core.gossip`` over in-memory links.

``python -m simulations gossip --nodes N --fanout F --loss P --seed S --json`` (also
``python -m simulations.gossip ...``) builds N ``Gossip`` cores, lets them find each other
from coordinator-style introductions, then measures one rumor and one push-sum epoch, and
prints one JSON object::

    {"rounds_to_all", "rounds_to_99", "aggregate_rounds_to_1pct",
     "msgs_per_node_per_round", "bytes_per_node_per_round"}

The model (one round = one ``round_interval`` of the core):

* Round ``r`` has a delivery phase and a timer phase.  Everything sent in round ``r``
  (from a timer or in answer to a delivery) is delivered in round ``r + 1``, in the order
  sent (links are FIFO), each message lost independently with probability ``--loss``.
  A node that learns a rumor forwards it at once, so one hop costs one round.
* ``Dial`` always succeeds: both ends get ``LinkUp`` in the next round.  Links themselves
  are never lost; message loss stands for lossy paths and broken links.
* Warm-up: at round 0 every node is introduced to ``--introductions`` random others (as
  the coordinator would) and the overlay forms for ``--warmup`` rounds.  Then, at round
  ``W``, every node starts a new aggregation epoch and one node publishes a signed nudge.
* The nudge is verified by each node against a real ``TrustStore`` (signatures, expiry).
  Heartbeats (Ed25519 per node per interval) are off unless ``--heartbeat-interval`` is
  given: they do not change spread or aggregates and cost a signature check per message.
* ``rounds_to_all`` / ``rounds_to_99``: rounds after publication until every node / 99%
  of the nodes delivered the nudge.  ``aggregate_rounds_to_1pct``: rounds after the epoch
  start until every node's running estimate of every total (per pool: serving capacity,
  load, serving count, node count) is within 1% of the truth.  ``null`` if not reached
  within ``--max-rounds``.  Message and byte rates are per node per round over the
  measured rounds, every message kind included.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pupdate.core.crypto import Envelope, SigningKey
from p2pupdate.core.documents import DOCUMENT_TYPES, ROLES, Nudge, Role, Root
from p2pupdate.core.errors import SchemaError
from p2pupdate.core.gossip import (
    Accepted,
    Contact,
    Deliver,
    Dial,
    Disconnect,
    Effect,
    Event,
    Gossip,
    GossipConfig,
    Introduced,
    LinkDown,
    LinkUp,
    Penalised,
    Publish,
    Received,
    Send,
    Status,
)
from p2pupdate.core.trust import TrustStore

#: Simulated wall clock at round 0 (unix seconds).
BASE_UTC = 1_800_000_000
ARTIFACT = hashlib.sha256(b"sim-artifact").hexdigest()


@dataclass(frozen=True, kw_only=True)
class Params:
    nodes: int = 1000
    fanout: int = 3
    loss: float = 0.0
    seed: int = 1
    warmup: int = 10
    max_rounds: int = 60
    introductions: int = 8
    pools: int = 1
    heartbeat_interval: float = 0.0


@dataclass(kw_only=True)
class Result:
    rounds_to_all: int | None = None
    rounds_to_99: int | None = None
    aggregate_rounds_to_1pct: int | None = None
    msgs_per_node_per_round: float = 0.0
    bytes_per_node_per_round: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "rounds_to_all": self.rounds_to_all,
            "rounds_to_99": self.rounds_to_99,
            "aggregate_rounds_to_1pct": self.aggregate_rounds_to_1pct,
            "msgs_per_node_per_round": round(self.msgs_per_node_per_round, 3),
            "bytes_per_node_per_round": round(self.bytes_per_node_per_round, 1),
        }


# -- a tiny network authority: root + coordinator key, to sign and verify the rumor -------


def _key(label: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(label.encode()).digest())


class Authority:
    """The keys of a simulated network and a ``TrustStore`` that trusts its root."""

    def __init__(self, seed: int) -> None:
        self.keys = {role: _key(f"sim/{seed}/{role}") for role in ROLES}
        root = Root(
            version=1,
            network="sim",
            keys={k.keyid: k.public_key for k in self.keys.values()},
            roles={role: Role(keys=(k.keyid,), threshold=1) for role, k in self.keys.items()},
            issued=BASE_UTC - 3600,
            expires=BASE_UTC + 365 * 86400,
        )
        self.store = TrustStore.from_root(root.sign([self.keys["root"]]).to_wire(), BASE_UTC)
        self.utc = BASE_UTC

    def nudge(self, serial: int = 1) -> bytes:
        doc = Nudge(serial=serial, artifact=ARTIFACT, issued=self.utc, expires=self.utc + 3600)
        return doc.sign([self.keys["coordinator"]]).to_wire()

    def verify(self, data: bytes) -> Accepted:
        """The shell's verifier: type routing, then ``TrustStore.verify``."""
        cls = DOCUMENT_TYPES.get(Envelope.from_wire(data).type)
        if cls is None or cls.TYPE in ("root", "heartbeat", "departure"):
            raise SchemaError("not a rumor type the simulation knows", rule="unknown-document")
        self.store.verify(cls, data, self.utc)
        return Accepted(slot=cls.TYPE)


# -- the network --------------------------------------------------------------------------


class Simulation:
    """N gossip cores, in-memory FIFO links, synchronous rounds."""

    def __init__(self, params: Params) -> None:
        self.p = params
        self.rng = random.Random(params.seed)
        self.authority = Authority(params.seed)
        self.core_rng = random.Random(self.rng.getrandbits(64))
        cfg = GossipConfig(
            fanout=params.fanout,
            aggregate_fanout=params.fanout,
            round_jitter=0.0,
            heartbeat_interval=params.heartbeat_interval,
            # a long epoch so the measured one never rolls over mid-measurement
            epoch_rounds=max(50, params.max_rounds + 1),
        )
        n = params.nodes
        self.pool_names = [f"pool-{k}" for k in range(params.pools)]
        self.nodes: list[Gossip] = []
        self.index: dict[str, int] = {}
        self.truth: dict[str, list[float]] = {p: [0.0, 0.0, 0.0, 0.0] for p in self.pool_names}
        for i in range(n):
            key = _key(f"sim/{params.seed}/node/{i}")
            node_id = key.keyid
            host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            status = self._status(i)
            for k, v in enumerate(status.contribution):
                self.truth[status.pool][k] += v
            g = Gossip(
                key=key,
                contact=Contact(node=node_id, host=host, port=4000),
                status=status,
                # one stream for all: the run is sequential, so still deterministic, and 10^4
                # Mersenne Twister states (2.5 KB each) would thrash the CPU caches
                rng=self.core_rng,
                verify=self.authority.verify,
                now=0.0,
                config=cfg,
            )
            self.index[node_id] = i
            self.nodes.append(g)
        self.hosts = [g.contact.host for g in self.nodes]
        #: Open links, (low index, high index) -> generation, and each end's view of them
        #: ((me, peer) -> the generation my last LinkUp was about).  A frame goes out on
        #: the link its sender knows of and is lost if that link closed before delivery:
        #: it is never delivered on a newer link between the same two nodes.
        self.links: dict[tuple[int, int], int] = {}
        self.view: dict[tuple[int, int], int] = {}
        self.generation = 0
        self.pending: list[tuple[int, Event, tuple[int, int], int]] = []
        self.delivered_at: dict[int, int] = {}
        self.sent_msgs = 0
        self.sent_bytes = 0
        self.penalties: dict[str, int] = {}
        self.round = 0

    def _status(self, i: int) -> Status:
        r = self.rng
        capacity = r.uniform(1.0, 10.0)
        return Status(
            version="1.0.0",
            artifact="00" * 32,
            state="serving" if r.random() < 0.9 else "draining",
            pool=self.pool_names[i % len(self.pool_names)],
            load=r.uniform(0.0, 0.8) * capacity,
            capacity=capacity,
        )

    # -- effects ------------------------------------------------------------------------------

    def perform(self, i: int, effects: list[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, Send):
                j = self.index[eff.peer]
                pair = (i, j) if i < j else (j, i)
                gen = self.view.get((i, j))
                if gen is None or self.links.get(pair) != gen:
                    continue
                self.sent_msgs += 1
                self.sent_bytes += len(eff.data)
                if self.p.loss and self.rng.random() < self.p.loss:
                    continue
                self.pending.append(
                    (j, Received(peer=self.nodes[i].node, data=eff.data), pair, gen)
                )
            elif isinstance(eff, Dial):
                j = self.index[eff.contact.node]
                pair = (min(i, j), max(i, j))
                if pair not in self.links:  # else both dialed at once: one link, as a shell keeps
                    self.generation += 1
                    self.links[pair] = self.generation
                    inbound = LinkUp(peer=self.nodes[i].node, host=self.hosts[i], inbound=True)
                    self.pending.append((j, inbound, pair, self.generation))
                up = LinkUp(peer=eff.contact.node, host=self.hosts[j], inbound=False,
                            contact=eff.contact)  # fmt: skip
                self.pending.append((i, up, pair, self.links[pair]))
            elif isinstance(eff, Disconnect):
                j = self.index[eff.peer]
                pair = (min(i, j), max(i, j))
                self.view.pop((i, j), None)
                if pair in self.links:
                    gen = self.links.pop(pair)
                    down = LinkDown(peer=self.nodes[i].node, reason=eff.reason)
                    self.pending.append((j, down, pair, gen))
            elif isinstance(eff, Deliver):
                self.delivered_at.setdefault(i, self.round)
            elif isinstance(eff, Penalised):
                self.penalties[eff.rule] = self.penalties.get(eff.rule, 0) + 1

    # -- rounds -------------------------------------------------------------------------------

    def step(self) -> None:
        now = float(self.round)
        utc = BASE_UTC + self.round
        self.authority.utc = utc
        batch, self.pending = self.pending, []
        nodes = self.nodes
        links, view = self.links, self.view
        for j, ev, pair, gen in batch:
            if isinstance(ev, Received):
                if links.get(pair) != gen:
                    continue  # the link it was sent on is gone
            elif isinstance(ev, LinkUp):
                if links.get(pair) != gen:
                    continue  # closed again before this end heard of it
                i = self.index[ev.peer]
                view[(j, i)] = gen
            elif isinstance(ev, LinkDown):
                i = self.index[ev.peer]
                if view.get((j, i)) != gen:
                    continue  # about a link this end never knew or already replaced
                del view[(j, i)]
            self.perform(j, nodes[j].handle(ev, now, utc))
        order = list(range(len(nodes)))
        self.rng.shuffle(order)
        for i in order:
            self.perform(i, nodes[i].handle_timer(now, utc))
        self.round += 1

    def introduce(self) -> None:
        n = len(self.nodes)
        k = min(self.p.introductions, n - 1)
        for i, g in enumerate(self.nodes):
            picks: set[int] = set()
            while len(picks) < k:
                j = self.rng.randrange(n)
                if j != i:
                    picks.add(j)
            contacts = tuple(self.nodes[j].contact for j in sorted(picks))
            self.perform(i, g.handle(Introduced(contacts=contacts), 0.0, BASE_UTC))

    def aggregates_within(self, tolerance: float) -> bool:
        for g in self.nodes:
            est = g.live_estimate
            if est is None or est.epoch != self.epoch:
                return False
            for pool, true in self.truth.items():
                got = est.pools.get(pool)
                if got is None:
                    return False
                for value, want in zip(
                    (got.capacity, got.load, got.serving, got.nodes), true, strict=True
                ):
                    if abs(value - want) > tolerance * want:
                        return False
        return True

    def run(self) -> Result:
        p = self.p
        n = len(self.nodes)
        self.introduce()
        for _ in range(p.warmup):
            self.step()
        degrees = [len(g.active) for g in self.nodes]
        # measurement starts: a new epoch everywhere, one nudge published
        start = self.round
        for g in self.nodes:
            g.start_epoch()
        self.epoch = self.nodes[0].epoch
        origin = self.rng.randrange(n)
        self.authority.utc = BASE_UTC + start
        self.perform(
            origin,
            self.nodes[origin].handle(Publish(doc=self.authority.nudge()), start, BASE_UTC + start),
        )
        self.delivered_at[origin] = start
        msgs0, bytes0 = self.sent_msgs, self.sent_bytes
        res = Result()
        need99 = -(-99 * n // 100)
        while self.round - start < p.max_rounds:
            self.step()
            k = self.round - start  # push rounds since the start (the step just run included)
            got = len(self.delivered_at)
            if res.rounds_to_99 is None and got >= need99:
                res.rounds_to_99 = max(self.delivered_at.values()) - start
            if res.rounds_to_all is None and got == n:
                res.rounds_to_all = max(self.delivered_at.values()) - start
            if res.aggregate_rounds_to_1pct is None and self.aggregates_within(0.01):
                res.aggregate_rounds_to_1pct = k - 1
            if res.rounds_to_all is not None and res.aggregate_rounds_to_1pct is not None:
                break
        rounds = max(1, self.round - start)
        res.msgs_per_node_per_round = (self.sent_msgs - msgs0) / n / rounds
        res.bytes_per_node_per_round = (self.sent_bytes - bytes0) / n / rounds
        res.detail = {
            "nodes": n,
            "rounds_measured": rounds,
            "active_min": min(degrees),
            "active_mean": sum(degrees) / n,
            "active_max": max(degrees),
            "penalties": dict(sorted(self.penalties.items())),
            "delivered": len(self.delivered_at),
        }
        return res


def simulate(params: Params) -> Result:
    """Build and run one simulation (deterministic for a given ``params``).

    The cyclic garbage collector is held off while it runs: 10^4 cores make millions of
    long-lived objects, and walking them over and over costs a fifth of the run.  (The
    cores make no reference cycles that need collecting.)
    """
    thresholds = gc.get_threshold()
    sim = Simulation(params)
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    try:
        return sim.run()
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m simulations gossip",
        description="Rumor spread and push-sum aggregates of the real gossip core.",
    )
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--fanout", type=int, default=3)
    ap.add_argument("--loss", type=float, default=0.0, help="message loss probability")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10, help="rounds for the overlay to form")
    ap.add_argument("--max-rounds", type=int, default=60)
    ap.add_argument("--introductions", type=int, default=8)
    ap.add_argument("--pools", type=int, default=1)
    ap.add_argument("--heartbeat-interval", type=float, default=0.0, help="0: no heartbeats")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--detail", action="store_true", help="add a 'detail' object to the JSON")
    args = ap.parse_args(list(argv))
    if args.nodes < 2 or args.fanout < 1 or not 0.0 <= args.loss < 1.0 or args.pools < 1:
        ap.error("need --nodes >= 2, --fanout >= 1, 0 <= --loss < 1, --pools >= 1")
    params = Params(
        nodes=args.nodes,
        fanout=args.fanout,
        loss=args.loss,
        seed=args.seed,
        warmup=args.warmup,
        max_rounds=args.max_rounds,
        introductions=args.introductions,
        pools=args.pools,
        heartbeat_interval=args.heartbeat_interval,
    )
    t0 = time.perf_counter()
    res = simulate(params)
    elapsed = time.perf_counter() - t0
    out = res.summary()
    if args.json:
        if args.detail:
            out["detail"] = res.detail | {"seconds": round(elapsed, 1)}
        print(json.dumps(out))
    else:
        for k, v in (out | res.detail).items():
            print(f"{k:28} {v}")
        print(f"{'seconds':28} {elapsed:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
