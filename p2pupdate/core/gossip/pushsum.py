"""Push-sum aggregates: per-pool sums estimated by gossip, restarted every epoch.

README "Gossip and links", after Kempe et al. 2003.  Per pool: the sum of serving
capacity, the sum of load, the count of serving nodes and the count of all nodes (the
coordinator sees these sums only, never a node's own load).

* Sums need the weight of one node only (a "leader"), and nobody is in charge, so every
  node starts each epoch as a candidate; candidates are ranked by ``leader_priority``
  (``sha256(epoch, node)``), a node that hears of a better candidate discards its mass and
  joins that instance, adding its own values once.  The best candidate's instance sweeps
  the network like a rumor while it mixes.
* Each round a node keeps one share of its mass and sends one share to each of
  ``aggregate_fanout`` active peers, as a running sum per edge (``Aggregate`` carries
  everything passed on that edge so far this epoch), so a lost share is carried again by
  the next message on the same edge instead of biasing the result.
* Mass still dies with nodes and with links that fail with a share in flight, so every
  epoch (``epoch_rounds`` rounds of wall-clock time; epoch numbers are
  ``utc_now // length``, and a share from more than one epoch ahead of our clock is
  ignored, so nobody can push the network through epochs) the computation starts again
  from the true local values: an epoch's error never carries over.

Versions: each node also adds a count of one (``[0, 0, 0, 1]``) under ``VERSION_KEY +
version`` (the same mass, the same running sums: on the wire a version is one more entry
of the share, so nodes that predate it carry it as a pool they never report; ~60 bytes
per node per round at 1,000 nodes).  ``estimate.versions`` is the last complete epoch's
count of nodes per version, whole fleet.  At most ``MAX_VERSIONS`` versions are kept
(further ones are ignored, like a pool too many): with more versions running at once,
a node sees the first ones to reach it, and their counts come out low (mass of a version
a node dropped is lost).

Known limit: push-sum values are not authenticated (a linked liar can bias the aggregates
of its epoch; the coordinator's median over reporters bounds what one report can do, not
what the mass carries).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .. import wire
from .config import MAX_POOLS, MAX_VERSIONS
from .context import NodeContext, Out
from .events import Send
from .membership import Membership
from .messages import Aggregate
from .values import AggregateEstimate, PoolTotals

#: Prefix of a version's entry among the pools of a share (``Status.pool`` may not start
#: with it); with it a key stays within the wire's 64 characters for versions of <= 63.
VERSION_KEY = "\x00"


def leader_priority(epoch: int, node: str) -> bytes:
    """Push-sum candidates rank by this (lower wins); nobody can choose it for an epoch."""
    return hashlib.sha256(
        b"p2pupdate/push-sum\x00" + epoch.to_bytes(8, "big") + bytes.fromhex(node)
    ).digest()


@dataclass(kw_only=True, slots=True)
class _Flow:
    """Running sums along one edge this epoch: what we passed (``sent``) and what the
    neighbour said it passed us (``got``)."""

    sent_weight: float = 0.0
    sent: dict[str, list[float]] = field(default_factory=dict)
    got_weight: float = 0.0
    got: dict[str, list[float]] = field(default_factory=dict)


@dataclass(kw_only=True, slots=True)
class _Epoch:
    """One node's push-sum state: ``mass``/``weight`` = own values - sent + got."""

    number: int
    leader: str
    priority: bytes
    mass: dict[str, list[float]]
    weight: float
    flows: dict[str, _Flow] = field(default_factory=dict)
    #: The placeholder a node starts with, before its clock names the real epoch.
    placeholder: bool = False


class PushSum:
    """This node's running epoch and the last complete epoch's estimate."""

    def __init__(self, ctx: NodeContext, membership: Membership) -> None:
        self._ctx = ctx
        self._membership = membership
        self._final: AggregateEstimate | None = None
        self._epoch = self._new_epoch(0)
        self._epoch.placeholder = True

    @property
    def estimate(self) -> AggregateEstimate | None:
        """The last complete epoch's estimate (what status reports carry)."""
        return self._final

    @property
    def live_estimate(self) -> AggregateEstimate | None:
        """The running epoch's estimate so far (None until this node holds weight)."""
        ep = self._epoch
        if ep.weight <= 1e-12:
            return None
        w = ep.weight
        pools = {
            p: PoolTotals(capacity=m[0] / w, load=m[1] / w, serving=m[2] / w, nodes=m[3] / w)
            for p, m in ep.mass.items()
            if not p.startswith(VERSION_KEY)
        }
        versions = {k[1:]: m[3] / w for k, m in ep.mass.items() if k.startswith(VERSION_KEY)}
        return AggregateEstimate(epoch=ep.number, pools=pools, complete=False, versions=versions)

    @property
    def epoch(self) -> int:
        return self._epoch.number

    @property
    def leader(self) -> str:
        """The candidate whose instance this node follows in the running epoch."""
        return self._epoch.leader

    def start_epoch(self) -> None:
        """Begin the next epoch now, ahead of the clock (see ``Gossip.start_epoch``)."""
        self._finish_epoch()
        self._epoch = self._new_epoch(self._epoch.number + 1)

    def on_aggregate(self, peer: str, msg: Aggregate, now: float, utc_now: int, out: Out) -> None:
        ep = self._epoch
        if msg.epoch < ep.number:
            return  # in flight across an epoch boundary
        if msg.epoch > ep.number:
            if msg.epoch > self._clock_epoch(utc_now) + 1:
                return  # further ahead than clock skew explains: not followed
            self._finish_epoch()
            self._epoch = ep = self._new_epoch(msg.epoch)
        if msg.leader == ep.leader:
            self._absorb(ep, peer, msg)
            return
        priority = leader_priority(msg.epoch, msg.leader)
        if priority < ep.priority:  # a better instance: join it, bringing our values once
            ep.leader, ep.priority = msg.leader, priority
            ep.mass = self._own_mass()
            ep.weight = 0.0
            ep.flows = {}
            self._absorb(ep, peer, msg)
        # a worse instance: drop it; our next share converts the sender

    def round(self, utc_now: int, out: Out) -> None:
        """Move to the clock's epoch if it changed, then send this round's shares."""
        ep = self._epoch
        clock = self._clock_epoch(utc_now)
        if clock > ep.number:
            self._finish_epoch()
            self._epoch = ep = self._new_epoch(clock)
        if not self._membership.active or ep.weight <= 0.0:
            return
        actives = list(self._membership.active)
        k = min(self._ctx.config.aggregate_fanout, len(actives))
        share = 1.0 / (k + 1)
        share_w = ep.weight * share
        # a zero goes out as the integer 0 (1 byte, not 9): a version's entry is 3 zeros
        shares = {p: [x * share if x else 0 for x in m] for p, m in ep.mass.items()}
        leader = bytes.fromhex(ep.leader)
        for peer in self._ctx.sample(actives, k):
            flow = ep.flows.get(peer)
            if flow is None:
                flow = ep.flows[peer] = _Flow()
            flow.sent_weight += share_w
            sent = flow.sent
            for pool, sh in shares.items():
                f = sent.get(pool)
                if f is None:
                    sent[pool] = list(sh)
                else:
                    f[0] += sh[0]
                    f[1] += sh[1]
                    f[2] += sh[2]
                    f[3] += sh[3]
            # Aggregate(...).to_wire(), spelled out: this runs for every share of every
            # node every round.  At most MAX_POOLS pools, so always within 1,200 bytes.
            data = wire.encode(
                {"k": "agg", "e": ep.number, "l": leader, "w": flow.sent_weight, "s": sent}
            )
            out.append(Send(peer=peer, data=data))
        ep.weight = share_w
        ep.mass = shares

    def _own_mass(self) -> dict[str, list[float]]:
        status = self._ctx.status
        own = {status.pool: list(status.contribution)}
        if len(status.version) < 64:
            own[VERSION_KEY + status.version] = [0.0, 0.0, 0.0, 1.0]  # a count only
        return own

    def _new_epoch(self, number: int) -> _Epoch:
        node = self._ctx.node
        return _Epoch(
            number=number,
            leader=node,
            priority=leader_priority(number, node),
            mass=self._own_mass(),
            weight=1.0,
        )

    def _finish_epoch(self) -> None:
        est = self.live_estimate
        if est is not None and not self._epoch.placeholder:
            self._final = AggregateEstimate(
                epoch=est.epoch, pools=est.pools, complete=True, versions=est.versions
            )

    def _absorb(self, ep: _Epoch, peer: str, msg: Aggregate) -> None:
        """Credit what ``peer`` passed us since its previous share (its running sum minus
        the last one we saw): a share that was lost arrives inside the next one."""
        flow = ep.flows.get(peer)
        if flow is None:
            flow = ep.flows[peer] = _Flow()
        elif _went_back(flow, msg):
            # A running sum only grows, so the sender started its side of this edge over:
            # a restarted process (a swap, a crash) in the same epoch, same node id.  Its
            # new sums carry only its new mass; crediting them against the old ones
            # subtracted mass this node had long passed on, and the estimate went negative
            # (-500 capacity for a pool of 100; a status report no replica accepts).
            flow.got_weight = 0.0
            flow.got = {}
        ep.weight += msg.weight - flow.got_weight
        flow.got_weight = msg.weight
        mass, got = ep.mass, flow.got
        for pool, sums in msg.sums.items():
            m = mass.get(pool)
            if m is None:
                if len(mass) >= MAX_POOLS:
                    continue  # a pool too many: ignored alike in flows and in the estimate
                if pool.startswith(VERSION_KEY) and (
                    sum(1 for k in mass if k.startswith(VERSION_KEY)) >= MAX_VERSIONS
                ):
                    continue  # a version too many: the same
                m = mass[pool] = [0.0, 0.0, 0.0, 0.0]
            old = got.get(pool)
            if old is None:
                old = got[pool] = [0.0, 0.0, 0.0, 0.0]
            m[0] += sums[0] - old[0]
            m[1] += sums[1] - old[1]
            m[2] += sums[2] - old[2]
            m[3] += sums[3] - old[3]
            old[0], old[1], old[2], old[3] = sums

    def _clock_epoch(self, utc_now: int) -> int:
        cfg = self._ctx.config
        return int(utc_now // (cfg.epoch_rounds * cfg.round_interval))


def _went_back(flow: _Flow, msg: Aggregate) -> bool:
    """Whether ``msg``'s running sums are below what the same sender said before."""
    if msg.weight < flow.got_weight:
        return True
    got = flow.got
    for pool, sums in msg.sums.items():
        old = got.get(pool)
        if old is not None and (
            sums[0] < old[0] or sums[1] < old[1] or sums[2] < old[2] or sums[3] < old[3]
        ):
            return True
    return False
