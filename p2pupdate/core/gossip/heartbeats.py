"""Heartbeats: each node's signed status, spread a few hops through the active views.

README "Gossip and links".  Every ``heartbeat_interval`` a node signs a
``documents.Heartbeat`` (version, artifact, state, pool, load, capacity, and up to four
artifacts it holds or is fetching: ``holders`` answers from them) with its node key
and sends it to its active view, which forwards it ``heartbeat_hops`` more hops to
``fanout`` peers.  A new active neighbour gets the current one at the next round instead of
waiting for the interval.  ``seq`` is per sender and only ever grows (it starts from
wall-clock milliseconds, so a restart needs no stored counter); a heartbeat is dropped
unless its ``seq`` is above the one already known, and one outside its validity window
(clock skew allowance ``documents.SKEW``) is dropped as expired.  A peer that sends the
same heartbeat twice is replaying; a forged one is proof of malice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..documents import SKEW, Heartbeat, open_heartbeat
from ..errors import P2PUpdateError
from .context import NodeContext, Out, send
from .events import Send
from .membership import Membership
from .messages import HeartbeatMessage
from .reputation import Penalty, rule_for
from .values import rumor_id


@dataclass(kw_only=True, slots=True)
class _Known:
    heartbeat: Heartbeat
    id: bytes
    received: float
    senders: set[str]


class Heartbeats:
    """The heartbeats this node sends and the newest one it knows of each other node."""

    def __init__(self, ctx: NodeContext, membership: Membership, *, now: float) -> None:
        self._ctx = ctx
        self._membership = membership
        self._pub = ctx.key.public_key
        self._next = now
        self._seq = 0
        self._owed: dict[str, None] = {}  # new neighbours owed a heartbeat
        self._known: dict[str, _Known] = {}
        self._known_ids: dict[bytes, str] = {}

    @property
    def known(self) -> Mapping[str, Heartbeat]:
        """The newest verified heartbeat of each node known (this one excluded)."""
        return {n: k.heartbeat for n, k in self._known.items()}

    @property
    def known_count(self) -> int:
        return len(self._known)

    def holders(self, artifact: str) -> list[tuple[str, str, int]]:
        """``(node, state, fraction)`` of every known node whose newest heartbeat says it
        holds or is fetching ``artifact``: whole holders first, then by fraction held."""
        found = [
            (node, h.state, h.fraction)
            for node, k in self._known.items()
            for h in k.heartbeat.holdings
            if h.artifact == artifact
        ]
        found.sort(key=lambda x: (-x[2], x[0]))
        return found

    def owe(self, peer: str) -> None:
        """``peer`` just became an active neighbour: it gets a heartbeat next round."""
        self._owed[peer] = None

    def forget(self, peer: str) -> None:
        self._owed.pop(peer, None)

    def on_heartbeat(
        self, peer: str, msg: HeartbeatMessage, now: float, utc_now: int, out: Out
    ) -> None:
        hid = rumor_id(msg.doc)
        origin = self._known_ids.get(hid)
        if origin is not None:  # the current heartbeat of a node we know: a duplicate
            current = self._known[origin]
            if peer in current.senders:
                raise Penalty("replayed", "the same heartbeat twice from one peer")
            current.senders.add(peer)
            return
        try:
            hb = open_heartbeat(msg.doc).doc
        except P2PUpdateError as exc:
            raise Penalty(rule_for(exc), f"heartbeat: {exc.message}") from exc
        if utc_now > hb.expires + SKEW or hb.issued > utc_now + SKEW:
            raise Penalty("expired", f"heartbeat of {hb.node[:12]} outside its validity")
        if hb.node == self._ctx.node:
            return  # our own, come back around
        known = self._known.get(hb.node)
        if known is not None and hb.seq <= known.heartbeat.seq:
            raise Penalty("stale", f"heartbeat seq {hb.seq} <= known {known.heartbeat.seq}")
        if known is not None:
            self._known_ids.pop(known.id, None)
        self._known.pop(hb.node, None)
        self._known[hb.node] = _Known(heartbeat=hb, id=hid, received=now, senders={peer})
        self._known_ids[hid] = hb.node
        if len(self._known) > self._ctx.config.max_known_nodes:
            oldest = next(iter(self._known))
            self._known_ids.pop(self._known.pop(oldest).id, None)
        if msg.hops > 0:
            fwd = HeartbeatMessage(doc=msg.doc, hops=msg.hops - 1)
            targets = [p for p in self._membership.active if p != peer and p != hb.node]
            for p in self._ctx.sample(targets, min(self._ctx.config.fanout, len(targets))):
                send(p, fwd, out)

    def round(self, now: float, utc_now: int, out: Out) -> None:
        """Everyone in the active view when the interval is up, else the owed newcomers."""
        cfg = self._ctx.config
        if cfg.heartbeat_interval <= 0:
            return
        if now >= self._next:
            self._next = now + cfg.heartbeat_interval
            self._owed.clear()
            self._send(tuple(self._membership.active), utc_now, out)
        elif self._owed:
            active = self._membership.active
            peers = tuple(p for p in self._owed if p in active)
            self._owed.clear()
            self._send(peers, utc_now, out)

    def expire_known(self, now: float) -> None:
        """Forget nodes not heard of for ``heartbeat_ttl``."""
        ttl = self._ctx.config.heartbeat_ttl
        for node in [n for n, k in self._known.items() if now - k.received > ttl]:
            self._known_ids.pop(self._known.pop(node).id, None)

    def _send(self, peers: Iterable[str], utc_now: int, out: Out) -> None:
        peers = tuple(peers)
        if not peers:
            return
        ctx = self._ctx
        cfg = ctx.config
        self._seq = max(self._seq + 1, utc_now * 1000)
        st = ctx.status
        hb = Heartbeat(
            node=ctx.node,
            pub=self._pub,
            seq=self._seq,
            version=st.version,
            artifact=st.artifact,
            state=st.state,
            pool=st.pool,
            load=st.load,
            capacity=st.capacity,
            holdings=st.holdings,
            issued=utc_now,
            expires=utc_now + cfg.heartbeat_ttl,
        )
        doc = hb.sign([ctx.key]).to_wire()
        msg = HeartbeatMessage(doc=doc, hops=cfg.heartbeat_hops).to_wire()
        for p in peers:
            out.append(Send(peer=p, data=msg))
