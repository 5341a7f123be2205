"""Gossip: a partial-view overlay, rumors, anti-entropy and push-sum aggregates, sans-IO.

README "Gossip and links".  One ``Gossip`` object is one node's view of the overlay.  Like
the updater it does no IO (README "Architecture"): the shell feeds it events (``LinkUp``,
``Received``, ...) with a monotonic ``now`` and a wall-clock ``utc_now``, calls
``handle_timer`` when ``get_timer()`` says so, and performs the effects it returns
(``Send``, ``Dial``, ``Disconnect``, ``Deliver``, ``Penalised``).  Randomness comes from an
``Rng`` given to the constructor; signed documents other than heartbeats are judged by a
``Verifier`` the shell supplies (its ``TrustStore``), so the core needs no notion of roots
or floors.  Everything that arrives is a message of one of the kinds in ``MESSAGE_TYPES``
and is handled by the one handler the ``MESSAGE_HANDLERS`` table names for it; events
likewise go through ``EVENT_HANDLERS``.

One module per concern; each module's docstring holds its protocol's detail:

==================  ========================================================================
``config``          the wire caps (``MAX_MESSAGE_BYTES``, ...) and ``GossipConfig``
``values``          ``Contact``, ``Status`` (with its ``Holding``s), the estimates, ``Rng``,
                    ``Verifier``, ``rumor_id``
``messages``        one frozen class per message kind, ``MESSAGE_TYPES``, ``decode_message``
``events``          events in (shell -> gossip) and effects out (gossip -> shell)
``context``         ``NodeContext``: identity, config, status and randomness the parts share
``membership``      active and passive views, joins, neighbour requests, shuffles (HyParView)
``heartbeats``      signed status heartbeats, a few hops through the active views
``rumors``          signed documents pushed, pulled when large, repaired by anti-entropy
``pushsum``         per-pool aggregates by push-sum, restarted every epoch
``reputation``      penalties, scores and bans, the Sybil caps per source host
``relay``           signaling blobs (rtc offers, answers) passed through a common peer
``links``           which transport a dial tries (``link_plan``), the path kinds, ``--rtc``
``front``           ``Gossip``, composing the parts, and the dispatch tables
==================  ========================================================================

Known limits: push-sum values are not authenticated (see ``pushsum``), and a shell must
hand over at most one link per peer id.
"""

from __future__ import annotations

from ..documents import MAX_HOLDINGS, Holding
from .config import (
    MAX_CONTACTS,
    MAX_DOC_MESSAGE_BYTES,
    MAX_IDS,
    MAX_INLINE_DOC,
    MAX_MESSAGE_BYTES,
    MAX_POOLS,
    MAX_RELAY_MESSAGE_BYTES,
    MAX_TTL,
    MAX_VERSIONS,
    GossipConfig,
)
from .context import Out
from .events import (
    Deliver,
    Dial,
    DialFailed,
    Disconnect,
    Effect,
    Event,
    Introduced,
    LinkDown,
    LinkPinned,
    LinkUp,
    PeerBanned,
    Penalised,
    Publish,
    Received,
    Send,
    SendSignal,
    Signaled,
    StatusChanged,
)
from .front import EVENT_HANDLERS, MESSAGE_HANDLERS, EventHandler, Gossip, MessageHandler
from .links import PATH_KINDS, RTC_MODES, TRANSPORTS, is_loopback, link_plan, rtc_enabled
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
from .pushsum import leader_priority
from .reputation import PENALTIES
from .rumors import RUMOR_TYPES, retransmit_limit
from .values import (
    Accepted,
    AggregateEstimate,
    Contact,
    PoolTotals,
    Rng,
    Status,
    Verifier,
    holdings_from_summary,
    rumor_id,
)

__all__ = [
    "EVENT_HANDLERS",
    "MAX_CONTACTS",
    "MAX_DOC_MESSAGE_BYTES",
    "MAX_HOLDINGS",
    "MAX_IDS",
    "MAX_INLINE_DOC",
    "MAX_MESSAGE_BYTES",
    "MAX_POOLS",
    "MAX_RELAY_MESSAGE_BYTES",
    "MAX_TTL",
    "MAX_VERSIONS",
    "MESSAGE_HANDLERS",
    "MESSAGE_TYPES",
    "PATH_KINDS",
    "PENALTIES",
    "RTC_MODES",
    "RUMOR_TYPES",
    "TRANSPORTS",
    "Accepted",
    "Aggregate",
    "AggregateEstimate",
    "Contact",
    "Deliver",
    "Dial",
    "DialFailed",
    "Digest",
    "Disconnect",
    "Doc",
    "Effect",
    "Event",
    "EventHandler",
    "ForwardJoin",
    "Gossip",
    "GossipConfig",
    "HeartbeatMessage",
    "Holding",
    "IHave",
    "IWant",
    "Introduced",
    "Join",
    "LinkDown",
    "LinkPinned",
    "LinkUp",
    "Message",
    "MessageHandler",
    "Neighbor",
    "NeighborReply",
    "Out",
    "PeerBanned",
    "Penalised",
    "PoolTotals",
    "Prune",
    "Publish",
    "Received",
    "Relay",
    "Relayed",
    "Rng",
    "Rumor",
    "Send",
    "SendSignal",
    "Shuffle",
    "ShuffleReply",
    "Signaled",
    "Status",
    "StatusChanged",
    "Verifier",
    "decode_message",
    "holdings_from_summary",
    "is_loopback",
    "leader_priority",
    "link_plan",
    "retransmit_limit",
    "rtc_enabled",
    "rumor_id",
]
