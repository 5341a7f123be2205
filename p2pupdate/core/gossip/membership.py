"""Membership: the active and passive views and the links under them (HyParView-shaped).

README "Gossip and links", after Leitao et al. 2007.  An *active view* of 6-8 peers with
kept-open links (nodes behind NAT cannot take unsolicited packets, so gossip only travels
over links that exist) and a *passive view* of ~5x as many contacts to repair it from.

* A node that knows too few contacts joins through one (``Join``; the contact forwards
  ``ForwardJoin`` random walks so the newcomer lands in several active views and passive
  views); otherwise it asks passive contacts with ``Neighbor``, a few at a time
  (``parallel_requests``).
* Below ``active_min`` it asks with high priority (the receiver must make room; HyParView
  does so only for an empty view, which leaves nodes whose few contacts are all full stuck
  short).  A refusal suggests other contacts (peer exchange).
* A lost link is repaired from the passive view at the next round, and when it broke or
  went silent (``LinkDown.lost``) rather than closed in order, the active peer's contact
  goes back into it, to be redialed with the backoff below
  (``lost_redials`` times in a row at most): NAT rebinding or a router reboot cuts a
  link without either node leaving.
* A contact whose dial failed, or whose link was lost soon after it came up, is not dialed
  again before its backoff (``GossipConfig.redial_base`` doubling per failure in a row, up
  to ``redial_cap``, equal jitter; ``timing.capped_exponential``): a peer that takes
  every link and drops it at once was redialled every round.
* Every 30-60 s (or at once, when it runs out of contacts) a node *shuffles* a sample of
  its views with one active neighbour.  Unlike HyParView the shuffle is one hop, not a
  random walk: the walk's end would have to open a temporary connection back to the
  origin, which a node behind NAT cannot accept.
* Gossip arriving from a linked peer outside the active view (its ``NeighborReply`` or our
  ``Prune`` was lost) is taken as a yes, or answered with a prune, so both ends of a link
  agree (``one_sided``).

Identities per source host are capped (``reputation``'s Sybil caps), and banned node ids
are neither dialed nor kept as contacts.  Addresses are limited too (P10; node ids cost
nothing, so thirty made-up ids can name one victim's ``host:port``): a dial whose
handshake failed (``DialFailed``, or no answer within ``dial_timeout``) backs its
*address* off as well as its node id, with the same doubling, so another id at that
address is not dialed before it either; and one ``host:port`` is held by at most
``max_ids_per_address`` node ids, in the passive view and among dials and links.  The front tells the other protocol parts about
new active neighbours (``on_activate``: they are owed a heartbeat) and forgotten links
(``on_forget``), through the callbacks it passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import timing
from .context import NodeContext, Out, send
from .events import Dial, DialFailed, Disconnect, Introduced, LinkDown, LinkPinned, LinkUp
from .messages import (
    ForwardJoin,
    Join,
    Neighbor,
    NeighborReply,
    Prune,
    Shuffle,
    ShuffleReply,
)
from .reputation import (
    Penalty,
    Reputation,
    active_allowed,
    from_host,
    link_allowed,
    passive_allowed,
)
from .values import Contact


@dataclass(kw_only=True, slots=True)
class Link:
    """A link the shell reported up: where it comes from and how busy it is."""

    host: str
    inbound: bool
    since: float
    heard: float
    contact: Contact | None
    path: str = "tcp"  # ``links.PATH_KINDS``
    messages: int = 0  # this round
    #: The chunk swarm uses (or used) it: not idle while ``pinned``, its end no failure.
    pinned: bool = False
    swarm: bool = False


class Membership:
    """One node's views, links and pending requests.  See the module docstring.

    ``links``, ``active`` and ``passive`` are read by the other parts (who to push to,
    whom to count); only membership changes them.
    """

    def __init__(
        self,
        ctx: NodeContext,
        reputation: Reputation,
        *,
        now: float,
        on_activate: Callable[[str], None],
        on_forget: Callable[[str], None],
    ) -> None:
        self._ctx = ctx
        self._reputation = reputation
        self._on_activate = on_activate
        self._on_forget = on_forget
        self._next_shuffle = now + ctx.rng.uniform(*ctx.config.shuffle_interval)
        self.links: dict[str, Link] = {}
        self.active: dict[str, Contact | None] = {}
        self.passive: dict[str, Contact] = {}
        self._dialing: dict[str, tuple[str, float]] = {}  # node -> (purpose, since)
        self._asking: dict[str, float] = {}  # Neighbor/Join sent, reply pending
        self._shuffling: dict[str, tuple[tuple[Contact, ...], float]] = {}
        #: Contacts backing off: node -> (failures in a row, not dialed before this time).
        self._redial: dict[str, tuple[int, float]] = {}
        #: Peers whose active link was lost: node -> redials that failed since.
        self._lost: dict[str, int] = {}
        #: Where each pending dial goes: node -> (host, port).
        self._dial_addr: dict[str, tuple[str, int]] = {}
        #: Addresses backing off: (host, port) -> (handshakes failed in a row, not before).
        self._addr_redial: dict[tuple[str, int], tuple[int, float]] = {}

    # -- events -------------------------------------------------------------------------------

    def on_introduced(self, ev: Introduced, now: float, utc_now: int, out: Out) -> None:
        for c in ev.contacts:
            self.add_passive(c, now)

    def on_link_up(self, ev: LinkUp, now: float, utc_now: int, out: Out) -> None:
        peer = ev.peer
        if peer == self._ctx.node:
            out.append(Disconnect(peer=peer, reason="link to self"))
            return
        if self._reputation.is_banned(peer, now):
            out.append(Disconnect(peer=peer, reason="banned"))
            self._dialing.pop(peer, None)
            self._dial_addr.pop(peer, None)
            return
        link = self.links.get(peer)
        if link is None:
            same_host = from_host((lk.host for lk in self.links.values()), ev.host)
            if not link_allowed(same_host, self._ctx.config):
                self._dialing.pop(peer, None)
                self._dial_addr.pop(peer, None)
                out.append(
                    Disconnect(
                        peer=peer,
                        reason=f"sybil cap: {same_host} identities already linked from {ev.host}",
                    )
                )
                return
            link = Link(
                host=ev.host,
                inbound=ev.inbound,
                since=now,
                heard=now,
                contact=ev.contact,
                path=ev.path,
            )
            self.links[peer] = link
        else:  # the shell replaced the link (say, rtc for tcp): it reports the new path
            link.path = ev.path
            if ev.contact is not None and link.contact is None:
                link.contact = ev.contact
        self._lost.pop(peer, None)
        addr = self._dial_addr.pop(peer, None)
        if addr is not None:
            self._addr_redial.pop(addr, None)  # the handshake there worked
        dial = self._dialing.pop(peer, None)
        if dial is None:
            return  # inbound: the peer speaks first (Join / Neighbor)
        purpose = dial[0]
        if purpose == "join":
            self._asking[peer] = now
            send(peer, Join(me=self._ctx.contact), out)
        elif peer not in self.active:
            self._ask_neighbor(peer, now, out, high=purpose == "neighbor-high")

    def on_link_down(self, ev: LinkDown, now: float, utc_now: int, out: Out) -> None:
        peer = ev.peer
        link = self.links.get(peer)
        contact = self.active.get(peer)
        if link is not None and not link.swarm:
            if now - link.since < self._ctx.config.stable_link:
                self._failed(peer, now)
            else:
                self._redial.pop(peer, None)
        self.forget_link(peer)
        # HyParView drops a failed active peer and repairs from the passive view.  A lost
        # (not closed) link's contact goes back into it, so the peer itself is redialed too (with the
        # backoff, ``lost_redials`` times): a link cut by NAT rebinding or a router reboot
        # comes back, where a fleet of two would otherwise stay apart for good.
        if ev.lost and contact is not None and self._ctx.config.lost_redials > 0:
            self._lost[peer] = 0
            self.add_passive(contact, now)

    def on_link_pinned(self, ev: LinkPinned, now: float, utc_now: int, out: Out) -> None:
        link = self.links.get(ev.peer)
        if link is not None:
            link.pinned = ev.pinned
            link.swarm = True
            if not ev.pinned:
                link.since = max(link.since, now)  # idle from now, not from when it came up

    def on_dial_failed(self, ev: DialFailed, now: float, utc_now: int, out: Out) -> None:
        node = ev.node
        dial = self._dialing.pop(node, None)
        addr = self._dial_addr.pop(node, None)
        if dial is None:
            return
        self._failed(node, now)
        if addr is not None:
            self._failed_addr(addr, now, node)
        tries = self._lost.get(node)
        if tries is not None and tries + 1 < self._ctx.config.lost_redials:
            self._lost[node] = tries + 1  # a lost peer: kept, and redialed after the backoff
        else:
            self._lost.pop(node, None)
            self.passive.pop(node, None)

    def _failed(self, node: str, now: float) -> None:
        """One more failure in a row for ``node``: no dial before its backoff has passed."""
        cfg = self._ctx.config
        failures = self._redial.get(node, (0, now))[0]
        ceiling = timing.capped_exponential(cfg.redial_base, cfg.redial_cap, failures)
        wait = ceiling / 2.0 + (ceiling / 2.0) * self._ctx.rng.random()
        self._redial[node] = (failures + 1, now + wait)

    def _failed_addr(self, addr: tuple[str, int], now: float, node: str | None = None) -> None:
        """One more failed handshake at ``addr``: no dial there, for any id, before its
        backoff -- the same doubling as a node's, at least half its ceiling (no jitter
        drawn: the random stream, and so a seeded fleet, stays as it was), and never
        before the backoff of the ``node`` that failed there (one id at one address backs
        off exactly as before)."""
        cfg = self._ctx.config
        failures = self._addr_redial.get(addr, (0, now))[0]
        until = now + timing.capped_exponential(cfg.redial_base, cfg.redial_cap, failures) / 2
        if node is not None and node in self._redial:
            until = max(until, self._redial[node][1])
        self._addr_redial[addr] = (failures + 1, until)

    def _may_dial(self, contact: Contact, now: float) -> bool:
        """Whether ``contact``'s address may be dialed now: not backing off, and not
        already dialed or linked for ``max_ids_per_address`` other node ids."""
        addr = (contact.host, contact.port)
        entry = self._addr_redial.get(addr)
        if entry is not None and now < entry[1]:
            return False
        ids = {n for n, a in self._dial_addr.items() if a == addr}
        ids |= {
            p
            for p, lk in self.links.items()
            if lk.contact is not None and (lk.contact.host, lk.contact.port) == addr
        }
        ids.discard(contact.node)
        return len(ids) < self._ctx.config.max_ids_per_address

    def backing_off(self, node: str, now: float) -> bool:
        """Whether ``node`` may not be dialed yet (its last dial or link failed)."""
        entry = self._redial.get(node)
        return entry is not None and now < entry[1]

    def heard_from(self, peer: str, now: float) -> int | None:
        """Note a frame from ``peer``; its frames this round, or None without a link
        (a frame still in flight from a link we closed: nothing to act on)."""
        link = self.links.get(peer)
        if link is None:
            return None
        link.heard = now
        link.messages += 1
        return link.messages

    # -- messages -----------------------------------------------------------------------------

    def _check_contact(self, peer: str, contact: Contact) -> None:
        if contact.node != peer:
            raise Penalty("forged", "contact names another node than the linked one")

    def on_join(self, peer: str, msg: Join, now: float, utc_now: int, out: Out) -> None:
        self._check_contact(peer, msg.me)
        if not self._may_activate(peer, high=True):
            send(peer, self._refusal(peer), out)
            return
        self.links[peer].contact = msg.me
        self._add_active(peer, msg.me, now, out)
        send(peer, NeighborReply(ok=True), out)
        fj = ForwardJoin(who=msg.me, ttl=self._ctx.config.active_walk)
        for other in self.active:
            if other != peer:
                send(other, fj, out)

    def on_forward_join(
        self, peer: str, msg: ForwardJoin, now: float, utc_now: int, out: Out
    ) -> None:
        who = msg.who
        if who.node == self._ctx.node or who.node in self.active:
            return
        cfg = self._ctx.config
        if msg.ttl == 0 or len(self.active) <= 1:
            if who.node in self.links:
                if who.node not in self._asking:
                    self._ask_neighbor(who.node, now, out, high=True)
            elif (
                who.node not in self._dialing
                and not self._reputation.is_banned(who.node, now)
                and self._may_dial(who, now)
            ):
                self._dialing[who.node] = ("neighbor-high", now)
                self._dial_addr[who.node] = (who.host, who.port)
                out.append(Dial(contact=who))
            return
        if msg.ttl == cfg.passive_walk:
            self.add_passive(who, now)
        nexts = [p for p in self.active if p != peer and p != who.node]
        if not nexts:
            return
        nxt = self._ctx.choice(nexts)
        send(nxt, ForwardJoin(who=who, ttl=msg.ttl - 1), out)

    def on_neighbor(self, peer: str, msg: Neighbor, now: float, utc_now: int, out: Out) -> None:
        self._check_contact(peer, msg.me)
        link = self.links[peer]
        link.contact = msg.me
        if peer in self.active:
            send(peer, NeighborReply(ok=True), out)
            return
        if self._may_activate(peer, high=msg.high):
            self._add_active(peer, msg.me, now, out)
            send(peer, NeighborReply(ok=True), out)
        else:
            send(peer, self._refusal(peer), out)
            self.add_passive(msg.me, now)

    def on_neighbor_reply(
        self, peer: str, msg: NeighborReply, now: float, utc_now: int, out: Out
    ) -> None:
        if self._asking.pop(peer, None) is None:
            raise Penalty("unsolicited", "neighbor reply without a request")
        link = self.links[peer]
        if msg.ok:
            if peer not in self.active:
                self._add_active(peer, link.contact, now, out)
            return
        if link.contact is not None:
            self.add_passive(link.contact, now)  # still a good contact, just full
        for c in msg.peers:
            self.add_passive(c, now)
        if peer not in self.active and peer not in self._shuffling:
            self.close(peer, "neighbor request refused", out)

    def on_prune(self, peer: str, msg: Prune, now: float, utc_now: int, out: Out) -> None:
        contact = self.active.pop(peer, None)
        if contact is not None:
            self.add_passive(contact, now)
        self._asking.pop(peer, None)

    def on_shuffle(self, peer: str, msg: Shuffle, now: float, utc_now: int, out: Out) -> None:
        ctx = self._ctx
        k = len(msg.peers)
        theirs = {c.node for c in msg.peers}
        pool = [c for c in self.passive.values() if c.node != peer and c.node not in theirs]
        reply = ctx.sample(pool, min(k, len(pool)))
        if len(reply) < k:  # a young passive view: top up from the active one
            more = [
                c for p, c in self.active.items() if c is not None and p != peer and p not in theirs
            ]
            reply += ctx.sample(more, min(k - len(reply), len(more)))
        send(peer, ShuffleReply(peers=tuple(reply)), out)
        self._integrate(msg.peers, reply, now)

    def on_shuffle_reply(
        self, peer: str, msg: ShuffleReply, now: float, utc_now: int, out: Out
    ) -> None:
        pending = self._shuffling.pop(peer, None)
        if pending is None:
            raise Penalty("unsolicited", "shuffle reply without a shuffle")
        self._integrate(msg.peers, pending[0], now)

    # -- the views ----------------------------------------------------------------------------

    def host_of(self, peer: str) -> str | None:
        link = self.links.get(peer)
        if link is not None:
            return link.host
        c = self.passive.get(peer)
        return c.host if c is not None else None

    def _may_activate(self, peer: str, *, high: bool) -> bool:
        cfg = self._ctx.config
        host = self.links[peer].host
        same = from_host((self.host_of(p) for p in self.active if p != peer), host)
        if not active_allowed(same, cfg):
            return False
        if high:
            return True
        return len(self.active) + len(self._asking) < cfg.active_max

    def _add_active(self, peer: str, contact: Contact | None, now: float, out: Out) -> None:
        cfg = self._ctx.config
        if peer in self.active:
            if contact is not None:
                self.active[peer] = contact
            return
        while len(self.active) >= cfg.active_max:
            victims = [p for p in self.active if p != peer]
            victim = self._ctx.choice(victims)
            send(victim, Prune(), out)
            dropped = self.active[victim]
            self.close(victim, "evicted from a full active view", out)
            if dropped is not None:
                self.add_passive(dropped, now)
        self.active[peer] = contact
        self.passive.pop(peer, None)
        self._on_activate(peer)

    def add_passive(self, contact: Contact, now: float) -> None:
        node = contact.node
        if node == self._ctx.node or node in self.active or self._reputation.is_banned(node, now):
            return
        cfg = self._ctx.config
        old = self.passive.get(node)
        if old is None or (old.host, old.port) != (contact.host, contact.port):
            at = sum(
                1
                for n, c in self.passive.items()
                if n != node and c.port == contact.port and c.host == contact.host
            )
            if at >= cfg.max_ids_per_address:
                return  # that host:port already stands for enough node ids
        if node not in self.passive:
            same = from_host((c.host for c in self.passive.values()), contact.host)
            if not passive_allowed(same, cfg):
                return
            if len(self.passive) >= cfg.passive_max:
                victims = list(self.passive)
                del self.passive[self._ctx.choice(victims)]
        self.passive[node] = contact

    def _integrate(self, received: Iterable[Contact], sent: Iterable[Contact], now: float) -> None:
        """Shuffle result: add what we got, making room by dropping what we sent first."""
        cfg = self._ctx.config
        sent_ids = [c.node for c in sent if c.node in self.passive]
        for c in received:
            if c.node == self._ctx.node or c.node in self.active or c.node in self.passive:
                continue
            if len(self.passive) >= cfg.passive_max and sent_ids:
                self.passive.pop(sent_ids.pop(), None)
            self.add_passive(c, now)

    def one_sided(self, peer: str, now: float, out: Out) -> None:
        """``peer`` gossips to us as to an active neighbour, but it is not in our view.

        That happens when our request's ``NeighborReply`` was lost (or a ``Prune`` was):
        take the traffic as the answer if there is room, else prune the peer so both
        ends agree.  (Left alone, the peer would keep sending into a link we are about
        to close as idle, and push-sum mass sent on it would be lost with it.)
        """
        self._asking.pop(peer, None)
        if self._may_activate(peer, high=len(self.active) < self._ctx.config.active_min):
            self._add_active(peer, self.links[peer].contact, now, out)
        else:
            send(peer, Prune(), out)
            self.close(peer, "not in the active view", out)

    def _refusal(self, peer: str) -> NeighborReply:
        """No room here: suggest a few contacts (from both views) to try instead."""
        known = [c for p, c in self.active.items() if c is not None and p != peer]
        known += [c for p, c in self.passive.items() if p != peer]
        k = min(self._ctx.config.shuffle_passive, len(known))
        return NeighborReply(ok=False, peers=tuple(self._ctx.sample(known, k)))

    def _ask_neighbor(self, peer: str, now: float, out: Out, *, high: bool) -> None:
        self._asking[peer] = now
        send(peer, Neighbor(me=self._ctx.contact, high=high), out)

    # -- links --------------------------------------------------------------------------------

    def forget_link(self, peer: str) -> None:
        self.links.pop(peer, None)
        self.active.pop(peer, None)
        self._asking.pop(peer, None)
        self._shuffling.pop(peer, None)
        self._dialing.pop(peer, None)
        self._dial_addr.pop(peer, None)
        self._on_forget(peer)

    def close(self, peer: str, reason: str, out: Out, ban_until: float | None = None) -> None:
        self.forget_link(peer)
        out.append(Disconnect(peer=peer, reason=reason, ban_until=ban_until))

    def drop(self, peer: str, reason: str, out: Out, ban_until: float | None = None) -> None:
        """A sanctioned peer: out of the passive view too, and its link closed."""
        self.passive.pop(peer, None)
        self.close(peer, reason, out, ban_until=ban_until)

    # -- rounds -------------------------------------------------------------------------------

    def new_round(self) -> None:
        for link in self.links.values():
            link.messages = 0

    def maintain(self, now: float, out: Out) -> None:
        """Repair the active view from the passive view; join when we know too few."""
        ctx = self._ctx
        cfg = ctx.config
        pending = len(self._asking) + len(self._dialing)
        missing = min(
            cfg.active_target - len(self.active) - pending, cfg.parallel_requests - pending
        )
        if missing <= 0:
            return
        banned = self._reputation.is_banned
        candidates = [
            c
            for n, c in self.passive.items()
            if n not in self._dialing
            and n not in self._asking
            and not banned(n, now)
            and not self.backing_off(n, now)
            and self._may_dial(c, now)
        ]
        if not candidates:
            if self.active and not self._shuffling:
                self._shuffle(now, out)  # out of contacts: ask a neighbour for some now
            return
        lonely = not self.active and not pending
        if lonely and len(self.passive) < cfg.active_target:
            c = ctx.choice(candidates)
            self._connect(c, "join", now, out)
            return
        hosts: dict[str, int] = {}
        for p in self.active:
            h = self.host_of(p)
            if h is not None:
                hosts[h] = hosts.get(h, 0) + 1
        picks = ctx.sample(candidates, len(candidates))
        # Below active_min a node asks with high priority (the receiver makes room): with
        # "only when empty" (HyParView), a node whose contacts are all full stays short.
        projected = len(self.active) + pending
        for c in picks:
            if missing <= 0:
                break
            if not active_allowed(hosts.get(c.host, 0), cfg) or not self._may_dial(c, now):
                continue
            hosts[c.host] = hosts.get(c.host, 0) + 1
            high = projected < cfg.active_min
            self._connect(c, "neighbor-high" if high else "neighbor", now, out)
            projected += 1
            missing -= 1

    def _connect(self, contact: Contact, purpose: str, now: float, out: Out) -> None:
        node = contact.node
        if node in self.links:
            if purpose == "join":
                self._asking[node] = now
                send(node, Join(me=self._ctx.contact), out)
            else:
                self._ask_neighbor(node, now, out, high=purpose == "neighbor-high")
            return
        self._dialing[node] = (purpose, now)
        self._dial_addr[node] = (contact.host, contact.port)
        out.append(Dial(contact=contact))

    def shuffle_round(self, now: float, out: Out) -> None:
        """The periodic shuffle, when it is due."""
        if now >= self._next_shuffle:
            self._next_shuffle = now + self._ctx.rng.uniform(*self._ctx.config.shuffle_interval)
            self._shuffle(now, out)

    def _shuffle(self, now: float, out: Out) -> None:
        if not self.active:
            return
        ctx = self._ctx
        cfg = ctx.config
        actives = list(self.active)
        peer = ctx.choice(actives)
        known_active = [c for p, c in self.active.items() if c is not None and p != peer]
        sample = [ctx.contact]
        sample += ctx.sample(known_active, min(cfg.shuffle_active, len(known_active)))
        passive = [c for c in self.passive.values() if c.node != peer]
        sample += ctx.sample(passive, min(cfg.shuffle_passive, len(passive)))
        peers = tuple(sample)
        self._shuffling[peer] = (peers, now)
        send(peer, Shuffle(peers=peers), out)

    def expire_requests(self, now: float) -> None:
        """Forget dials, neighbour requests and shuffles that got no answer in time."""
        timeout = self._ctx.config.request_timeout
        if self._dialing:
            dial_timeout = self._ctx.config.dial_timeout
            for node in [n for n, (_, t) in self._dialing.items() if now - t > dial_timeout]:
                del self._dialing[node]
                addr = self._dial_addr.pop(node, None)
                if addr is not None:  # no handshake in time: that address backs off too
                    self._failed_addr(addr, now)
                self._lost.pop(node, None)
                self.passive.pop(node, None)
        if self._asking:
            for peer in [p for p, t in self._asking.items() if now - t > timeout]:
                del self._asking[peer]
        if self._shuffling:
            for peer in [p for p, (_, t) in self._shuffling.items() if now - t > timeout]:
                del self._shuffling[peer]
        if self._lost:  # a lost peer evicted from the passive view is no longer redialed
            for node in [n for n in self._lost if n not in self.passive and n not in self._dialing]:
                del self._lost[node]
        if self._redial:  # a failure long past is forgotten (and the table stays bounded)
            cap = self._ctx.config.redial_cap
            for node in [n for n, (_, t) in self._redial.items() if now - t > cap]:
                del self._redial[node]
        if self._addr_redial:
            cap = self._ctx.config.redial_cap
            for addr in [a for a, (_, t) in self._addr_redial.items() if now - t > cap]:
                del self._addr_redial[addr]

    def expire_links(self, now: float, out: Out) -> None:
        """Close silent active links and idle links that serve no view."""
        cfg = self._ctx.config
        for peer, link in list(self.links.items()):
            if peer in self.active:
                if now - link.heard > cfg.silence_timeout:
                    self.close(peer, "silent", out)
            elif (
                peer not in self._asking
                and peer not in self._shuffling
                and not link.pinned
                and now - link.since > cfg.idle_timeout
            ):
                self.close(peer, "idle", out)
