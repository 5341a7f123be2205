"""``Gossip``: one node's gossip, a thin front over the protocol parts, and the dispatch tables.

The front owns nothing of the protocols' state.  It builds the parts around one
``NodeContext`` (membership, heartbeats, rumors, push-sum, reputation, relays), runs a round in a
fixed order (``handle_timer``), and routes every event and every decoded message to the
one handler ``EVENT_HANDLERS`` / ``MESSAGE_HANDLERS`` names for it.  It is also where a
message's fault becomes a penalty: a frame that does not decode, a handler that raises
``reputation.Penalty``, or a flood of frames costs the sender points, and the sanction
its score earns (if any) is carried out by membership.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

from ..crypto import SigningKey
from ..documents import Heartbeat
from ..errors import P2PUpdateError
from .config import GossipConfig
from .context import NodeContext, Out
from .events import (
    DialFailed,
    Effect,
    Event,
    Introduced,
    LinkDown,
    LinkPinned,
    LinkUp,
    PeerBanned,
    Publish,
    Received,
    SendSignal,
    StatusChanged,
)
from .heartbeats import Heartbeats
from .membership import Membership
from .messages import (
    MESSAGE_TYPES,
    Aggregate,
    Digest,
    Doc,
    ForwardJoin,
    HeartbeatMessage,
    IHave,
    IWant,
    Join,
    Message,
    Neighbor,
    NeighborReply,
    Prune,
    Relay,
    Relayed,
    Rumor,
    Shuffle,
    ShuffleReply,
    decode_message,
)
from .pushsum import PushSum
from .relay import Relays
from .reputation import Penalty, Reputation, rule_for
from .rumors import Rumors
from .values import AggregateEstimate, Contact, Rng, Status, Verifier

#: ``handler(gossip, peer, message, now, utc_now, out)``: one per message kind.
MessageHandler = Callable[["Gossip", str, Any, float, int, Out], None]
#: ``handler(gossip, event, now, utc_now, out)``: one per event kind.
EventHandler = Callable[["Gossip", Any, float, int, Out], None]
M = TypeVar("M", bound=Message)
E = TypeVar("E", bound=Event)
P = TypeVar("P")


class Gossip:
    """One node's gossip: views, heartbeats, rumors, aggregates.  See the package docstring.

    ``now`` (monotonic seconds) starts the clock: the first round is due at once.
    """

    def __init__(
        self,
        *,
        key: SigningKey,
        contact: Contact,
        status: Status,
        rng: Rng,
        verify: Verifier,
        now: float,
        config: GossipConfig | None = None,
    ) -> None:
        ctx = NodeContext(
            key=key,
            contact=contact,
            config=config if config is not None else GossipConfig(),
            rng=rng,
            status=status,
        )
        self._ctx = ctx
        self._round = 0
        self._next_round = now
        # Built in this order on purpose: membership, then rumors, draw their first timers
        # from the rng (a run is reproducible from its seed).
        self._reputation = Reputation(ctx.config)
        self._membership = Membership(
            ctx,
            self._reputation,
            now=now,
            on_activate=self._activated,
            on_forget=self._link_forgotten,
        )
        self._rumors = Rumors(
            ctx, self._membership, verify, now=now, network_size=lambda: self.network_size
        )
        self._heartbeats = Heartbeats(ctx, self._membership, now=now)
        self._push_sum = PushSum(ctx, self._membership)
        self._relays = Relays(ctx, self._membership)

    # -- read-only views ----------------------------------------------------------------------

    @property
    def node(self) -> str:
        return self._ctx.node

    @property
    def contact(self) -> Contact:
        return self._ctx.contact

    @property
    def config(self) -> GossipConfig:
        return self._ctx.config

    @property
    def rounds(self) -> int:
        """Rounds run so far."""
        return self._round

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(self._membership.active)

    @property
    def passive(self) -> tuple[str, ...]:
        return tuple(self._membership.passive)

    @property
    def linked(self) -> tuple[str, ...]:
        return tuple(self._membership.links)

    @property
    def paths(self) -> Mapping[str, str]:
        """Each linked peer's path (``links.PATH_KINDS``: ``tcp``, or an rtc link's selected
        candidate pair kind, ``relay`` being a TURN server's)."""
        return {p: link.path for p, link in self._membership.links.items()}

    def contact_of(self, node: str) -> Contact | None:
        """Where ``node`` can be dialed, as far as this node knows: its active-view entry,
        its link's contact, or its passive-view entry (introductions land there)."""
        m = self._membership
        got = m.active.get(node)
        if got is None and node in m.links:
            got = m.links[node].contact
        return got if got is not None else m.passive.get(node)

    def can_relay(self, to: str) -> bool:
        """Whether a linked peer could relay a signaling blob to ``to`` (a ``SendSignal``
        would go somewhere): one of the signaling paths ``links.link_plan`` asks about."""
        return self._relays.paths(to)

    @property
    def heartbeats(self) -> Mapping[str, Heartbeat]:
        """The newest verified heartbeat of each node known (this one excluded)."""
        return self._heartbeats.known

    def holders(self, artifact: str) -> list[tuple[str, str, int]]:
        """``(node, state, fraction)`` of the known nodes that say they hold or are fetching
        ``artifact`` (``state`` "held" or "fetching", ``fraction`` chunks held of 255):
        whom a swarm session for it may ask.  This node is not among them."""
        return self._heartbeats.holders(artifact)

    @property
    def held(self) -> Mapping[str, bytes]:
        """The newest document per slot: what anti-entropy advertises."""
        return self._rumors.held

    def has_seen(self, doc_or_id: bytes) -> bool:
        """True once this rumor (envelope bytes or its 32-byte id) has been received."""
        return self._rumors.has_seen(doc_or_id)

    def score(self, peer: str, now: float) -> float:
        return self._reputation.score(peer, now)

    def is_banned(self, peer: str, now: float) -> bool:
        return self._reputation.is_banned(peer, now)

    @property
    def network_size(self) -> int:
        """N for the retransmit limit: the last epoch's node count (else ``assumed_size``),
        and never fewer than the nodes this one knows of directly."""
        membership = self._membership
        known = 1 + len(membership.active) + len(membership.passive)
        known += self._heartbeats.known_count
        est = self._push_sum.estimate
        if est is None or est.nodes < 1.0:
            return max(known, self._ctx.config.assumed_size)
        return max(known, round(est.nodes))

    @property
    def estimate(self) -> AggregateEstimate | None:
        """The last complete epoch's estimate (what status reports carry)."""
        return self._push_sum.estimate

    @property
    def live_estimate(self) -> AggregateEstimate | None:
        """The running epoch's estimate so far (None until this node holds weight)."""
        return self._push_sum.live_estimate

    @property
    def epoch(self) -> int:
        return self._push_sum.epoch

    @property
    def epoch_leader(self) -> str:
        """The push-sum candidate this node follows in the running epoch."""
        return self._push_sum.leader

    # -- the sans-IO interface ----------------------------------------------------------------

    def handle(self, event: Event, now: float, utc_now: int) -> list[Effect]:
        """Feed one event; return the effects to perform, in order."""
        handler = EVENT_HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"gossip has no handler for event {type(event).__name__}")
        out: Out = []
        handler(self, event, now, utc_now, out)
        return out

    def get_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (monotonic seconds)."""
        return self._next_round

    def handle_timer(self, now: float, utc_now: int) -> list[Effect]:
        """One gossip round.  An early or spurious call does nothing."""
        if now < self._next_round:
            return []
        cfg = self._ctx.config
        jitter = cfg.round_jitter
        step = cfg.round_interval
        if jitter:
            step *= 1.0 + jitter * (2.0 * self._ctx.rng.random() - 1.0)
        self._next_round = now + step
        self._round += 1
        out: Out = []
        membership = self._membership
        membership.new_round()
        # Forget what timed out (each sweep is skipped when empty).
        membership.expire_requests(now)
        self._rumors.expire_wants(now)
        self._reputation.expire_bans(now)
        if self._round % 4 == 0:  # coarse: these timeouts are tens of seconds
            membership.expire_links(now, out)
            self._heartbeats.expire_known(now)
        self._rumors.expire_seen(now)
        membership.maintain(now, out)
        self._rumors.push_rumors(now, out)
        self._push_sum.round(utc_now, out)
        self._heartbeats.round(now, utc_now, out)
        membership.shuffle_round(now, out)
        self._rumors.digest_round(now, out)
        return out

    def start_epoch(self) -> None:
        """Begin the next aggregation epoch now, ahead of the clock.

        The daemon never needs this (epochs follow the wall clock); simulations and tests
        use it to line measurements up with an epoch start.  Peers follow a share at most
        one epoch ahead of their own clock, so this works once per clock epoch.
        """
        self._push_sum.start_epoch()

    # -- what the front itself handles ----------------------------------------------------------

    def _on_received(self, ev: Received, now: float, utc_now: int, out: Out) -> None:
        peer = ev.peer
        messages = self._membership.heard_from(peer, now)
        if messages is None:
            return  # a frame still in flight from a link we closed: nothing to act on
        limit = self._ctx.config.max_messages_per_round
        if messages > limit:
            if messages == limit + 1:
                self._penalise(peer, "flood", "too many messages in one round", now, out)
            return
        try:
            msg = decode_message(ev.data)
        except P2PUpdateError as exc:
            self._penalise(peer, rule_for(exc), exc.message, now, out)
            return
        handler = MESSAGE_HANDLERS[type(msg)]
        try:
            handler(self, peer, msg, now, utc_now, out)
        except Penalty as p:
            self._penalise(peer, p.rule, p.detail, now, out)
            return
        membership = self._membership
        if type(msg) in _ACTIVE_ONLY and peer not in membership.active and peer in membership.links:
            membership.one_sided(peer, now, out)

    def _on_status(self, ev: StatusChanged, now: float, utc_now: int, out: Out) -> None:
        self._ctx.status = ev.status

    def _penalise(self, peer: str, rule: str, detail: str, now: float, out: Out) -> None:
        sanction = self._reputation.penalise(peer, rule, detail, now, out)
        if sanction is not None:
            self._membership.drop(peer, sanction.reason, out, ban_until=sanction.ban_until)

    def _on_banned(self, ev: PeerBanned, now: float, utc_now: int, out: Out) -> None:
        """A ban the swarm proved: refused here too, out of the views, its link closed."""
        self._reputation.ban(ev.peer, ev.until)
        if ev.peer in self._membership.links or ev.peer in self._membership.passive:
            self._membership.drop(ev.peer, f"banned: {ev.reason}", out, ban_until=ev.until)

    def _activated(self, peer: str) -> None:
        self._heartbeats.owe(peer)

    def _link_forgotten(self, peer: str) -> None:
        self._rumors.forget(peer)
        self._heartbeats.forget(peer)
        self._relays.forget(peer)


# -- dispatch -----------------------------------------------------------------------------------


def _membership(g: Gossip) -> Membership:
    return g._membership


def _heartbeats(g: Gossip) -> Heartbeats:
    return g._heartbeats


def _rumors(g: Gossip) -> Rumors:
    return g._rumors


def _push_sum(g: Gossip) -> PushSum:
    return g._push_sum


def _relays(g: Gossip) -> Relays:
    return g._relays


def _mrow(
    cls: type[M],
    part: Callable[[Gossip], P],
    handler: Callable[[P, str, M, float, int, Out], None],
) -> tuple[type[Message], MessageHandler]:
    """One row: messages of kind ``cls`` go to ``handler`` of the part ``part`` picks."""

    def run(g: Gossip, peer: str, msg: M, now: float, utc_now: int, out: Out) -> None:
        handler(part(g), peer, msg, now, utc_now, out)

    return cls, cast(MessageHandler, run)


def _erow(
    cls: type[E],
    part: Callable[[Gossip], P],
    handler: Callable[[P, E, float, int, Out], None],
) -> tuple[type[Event], EventHandler]:
    """One row: events of kind ``cls`` go to ``handler`` of the part ``part`` picks."""

    def run(g: Gossip, ev: E, now: float, utc_now: int, out: Out) -> None:
        handler(part(g), ev, now, utc_now, out)

    return cls, cast(EventHandler, run)


def _front(g: Gossip) -> Gossip:
    return g


#: Every message kind and the one handler that runs for it.
MESSAGE_HANDLERS: Final[Mapping[type[Message], MessageHandler]] = dict(
    [
        _mrow(Join, _membership, Membership.on_join),
        _mrow(ForwardJoin, _membership, Membership.on_forward_join),
        _mrow(Neighbor, _membership, Membership.on_neighbor),
        _mrow(NeighborReply, _membership, Membership.on_neighbor_reply),
        _mrow(Prune, _membership, Membership.on_prune),
        _mrow(Shuffle, _membership, Membership.on_shuffle),
        _mrow(ShuffleReply, _membership, Membership.on_shuffle_reply),
        _mrow(HeartbeatMessage, _heartbeats, Heartbeats.on_heartbeat),
        _mrow(Rumor, _rumors, Rumors.on_rumor),
        _mrow(IHave, _rumors, Rumors.on_ihave),
        _mrow(IWant, _rumors, Rumors.on_iwant),
        _mrow(Digest, _rumors, Rumors.on_digest),
        _mrow(Doc, _rumors, Rumors.on_doc),
        _mrow(Aggregate, _push_sum, PushSum.on_aggregate),
        _mrow(Relay, _relays, Relays.on_relay),
        _mrow(Relayed, _relays, Relays.on_relayed),
    ]
)
assert set(MESSAGE_HANDLERS) == set(MESSAGE_TYPES.values())

#: Kinds that only ever travel to active neighbours (the evidence ``one_sided`` uses).
_ACTIVE_ONLY: Final = frozenset({Aggregate, Rumor, HeartbeatMessage, Digest, Shuffle})

#: Every event and its handler.
EVENT_HANDLERS: Final[Mapping[type[Event], EventHandler]] = dict(
    [
        _erow(Introduced, _membership, Membership.on_introduced),
        _erow(LinkUp, _membership, Membership.on_link_up),
        _erow(LinkDown, _membership, Membership.on_link_down),
        _erow(LinkPinned, _membership, Membership.on_link_pinned),
        _erow(PeerBanned, _front, Gossip._on_banned),
        _erow(DialFailed, _membership, Membership.on_dial_failed),
        _erow(Received, _front, Gossip._on_received),
        _erow(Publish, _rumors, Rumors.on_publish),
        _erow(SendSignal, _relays, Relays.on_send_signal),
        _erow(StatusChanged, _front, Gossip._on_status),
    ]
)
