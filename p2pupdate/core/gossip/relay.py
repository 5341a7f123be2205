"""Signaling through a common peer: ``Relay`` in, ``Relayed`` out, bounded and loop-free.

README "Gossip and links".  Two nodes behind NATs set up an rtc link by trading one offer
blob and one answer blob (node-signed, opaque here: the shell verifies them).  The
coordinator's ``signal`` relay carries them when a replica is reachable; this part carries
them through a peer both nodes already link to, so links form while no replica is:

* A node that wants blob ``data`` to reach ``to`` (``SendSignal``) sends ``Relay{to, data}``
  to every linked peer but ``to`` -- or only to ``via``: an answer goes back through the
  peer its offer came from.
* A peer forwards ``Relay`` as ``Relayed{from, data}`` only when it links to ``to`` (and
  ``to`` is neither itself nor the sender); otherwise it drops it, no fault of anyone's.
* ``Relayed`` is never forwarded: it comes out of the core as ``Signaled`` for the shell.
  So a blob crosses at most one relay: no loops by construction.  A blob already forwarded
  or delivered here is dropped (one ``Signaled`` per blob however many peers carried it;
  the same ``Relay`` twice from one peer is a replay, charged ``replayed``).

Bounds: a blob is at most ``coordproto.MAX_SIGNAL`` bytes (the coordinator relay's bound);
each peer may send ``relay_budget`` of these messages per ``relay_window`` seconds (the
first one over costs it ``flood``, the rest are dropped), and a forwarder sends each
destination no more than that budget either, so an honest relay never trips the limit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .context import NodeContext, Out, send
from .events import SendSignal, Signaled
from .membership import Membership
from .messages import Relay, Relayed
from .reputation import Penalty


@dataclass(kw_only=True, slots=True)
class _Window:
    """Messages counted since ``start`` (a fixed window of ``relay_window`` seconds)."""

    start: float
    count: int = 0


class Relays:
    """One node's signaling relay (see the module docstring)."""

    def __init__(self, ctx: NodeContext, membership: Membership) -> None:
        self._ctx = ctx
        self._membership = membership
        self._from: dict[str, _Window] = {}  # per sending peer
        self._to: dict[str, _Window] = {}  # per destination we forward to
        self._seen: dict[bytes, None] = {}  # insertion-ordered: oldest forgotten first

    # -- events -------------------------------------------------------------------------------

    def on_send_signal(self, ev: SendSignal, now: float, utc_now: int, out: Out) -> None:
        links = self._membership.links
        if ev.via is not None:
            peers = [ev.via] if ev.via in links and ev.via != ev.to else []
        else:
            peers = [p for p in links if p != ev.to]
        msg = Relay(to=ev.to, data=ev.data)
        for p in peers:
            send(p, msg, out)

    def paths(self, to: str) -> bool:
        """Whether a ``SendSignal`` to ``to`` would go anywhere (a linked peer but ``to``)."""
        return any(p != to for p in self._membership.links)

    # -- messages -----------------------------------------------------------------------------

    def on_relay(self, peer: str, msg: Relay, now: float, utc_now: int, out: Out) -> None:
        if not self._admit(peer, now):
            return
        to = msg.to
        if to in (self._ctx.node, peer) or to not in self._membership.links:
            return  # no route from here: nobody's fault
        if not self._first(peer, msg.data):
            raise Penalty("replayed", "the same signaling blob relayed twice")
        if not self._take(self._to, to, now):
            return  # this destination had its budget from us: drop, do not make us a flooder
        send(to, Relayed(sender=peer, data=msg.data), out)

    def on_relayed(self, peer: str, msg: Relayed, now: float, utc_now: int, out: Out) -> None:
        if not self._admit(peer, now):
            return
        if msg.sender == self._ctx.node or not self._first(msg.sender, msg.data):
            return  # our own blob back, or one another peer brought first
        out.append(Signaled(sender=msg.sender, data=msg.data, via=peer))

    def forget(self, peer: str) -> None:
        self._from.pop(peer, None)
        self._to.pop(peer, None)

    # -- bounds -------------------------------------------------------------------------------

    def _take(self, table: dict[str, _Window], peer: str, now: float) -> bool:
        """Count one message in ``peer``'s window; False once the budget is spent."""
        cfg = self._ctx.config
        w = table.get(peer)
        if w is None or now - w.start >= cfg.relay_window:
            w = table[peer] = _Window(start=now)
        w.count += 1
        return w.count <= cfg.relay_budget

    def _admit(self, peer: str, now: float) -> bool:
        """Count a relay message from ``peer``: True within its budget; the first one over
        raises ``flood``, the later ones are just dropped (False)."""
        if self._take(self._from, peer, now):
            return True
        if self._from[peer].count == self._ctx.config.relay_budget + 1:
            raise Penalty("flood", "too many signaling relays")
        return False

    def _first(self, sender: str, data: bytes) -> bool:
        """Remember (sender, blob); False if it was seen before."""
        digest = hashlib.sha256(bytes.fromhex(sender) + data).digest()
        if digest in self._seen:
            return False
        self._seen[digest] = None
        if len(self._seen) > self._ctx.config.relay_seen_max:
            del self._seen[next(iter(self._seen))]
        return True
