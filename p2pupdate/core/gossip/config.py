"""Gossip's limits and knobs: the wire caps every message obeys, and ``GossipConfig``.

The defaults are README "Gossip and links"'s: fanout 3, rounds of 1 s, an active view of
6-8 peers and a passive view of ~5x as many, shuffles every 30-60 s, anti-entropy every
30 s, push-sum epochs of 50 rounds.  Durations are seconds of the monotonic ``now`` clock
unless a field says wall-clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .. import wire
from ..coordproto import MAX_SIGNAL

#: Gossip messages fit one unfragmented UDP/DTLS datagram (README "Gossip and links").
MAX_MESSAGE_BYTES: Final = 1200
#: A ``Doc`` (the answer to our ``IWant``) may carry any signed document.
MAX_DOC_MESSAGE_BYTES: Final = wire.DOCUMENT_LIMITS.max_bytes + 64
#: A ``Relay`` / ``Relayed`` carries one signaling blob of up to ``MAX_SIGNAL`` bytes (the
#: coordinator relay's own bound, so a blob fits either path).
MAX_RELAY_MESSAGE_BYTES: Final = MAX_SIGNAL + 64
#: Envelopes up to this size ride inside a ``Rumor``; larger ones are announced and pulled.
MAX_INLINE_DOC: Final = MAX_MESSAGE_BYTES - 32
#: Contacts per shuffle, shuffle reply or refusal.
MAX_CONTACTS: Final = 8
#: Rumor ids per ``IHave``, ``IWant`` or ``Digest``.
MAX_IDS: Final = 30
#: Pools per push-sum share: 8 pools with 64-character names still fit in 1,200 bytes.
MAX_POOLS: Final = 8
#: Versions counted by push-sum (``pushsum.VERSION_KEY`` entries of the same share, so
#: they count against ``MAX_POOLS`` on the wire): at most 4, so at least 4 pools remain.
MAX_VERSIONS: Final = 4
#: Longest ``ForwardJoin`` random walk.
MAX_TTL: Final = 16
#: Bytes of a node id (a key id) and of a rumor id (a sha256) on the wire.
ID_LEN: Final = 32
#: Most hops a heartbeat may be forwarded.
HEARTBEAT_HOPS_MAX: Final = 3


@dataclass(frozen=True, kw_only=True, slots=True)
class GossipConfig:
    """Defaults are README "Gossip and links"'s; durations in seconds of the ``now`` clock."""

    round_interval: float = 1.0
    #: Each round lasts ``round_interval * (1 +- round_jitter)`` so neighbours drift apart.
    round_jitter: float = 0.1
    fanout: int = 3
    active_min: int = 6
    active_target: int = 7
    active_max: int = 8
    passive_max: int = 35
    #: At most this many ``Neighbor``/``Join`` requests (and dials for them) at once: a node
    #: that asked for its whole view at once would be accepted everywhere and then have to
    #: evict the surplus (and every node restarting together would do it).
    parallel_requests: int = 3
    #: HyParView's random walk lengths: ARWL (active) and PRWL (passive).
    active_walk: int = 6
    passive_walk: int = 3
    shuffle_interval: tuple[float, float] = (30.0, 60.0)
    shuffle_active: int = 3
    shuffle_passive: int = 4
    heartbeat_interval: float = 10.0  # 0 disables heartbeats
    heartbeat_ttl: int = 120  # wall-clock seconds a heartbeat stays valid
    heartbeat_hops: int = 1
    max_known_nodes: int = 1024
    retransmit_mult: int = 4
    #: Network size assumed until the aggregates estimate one.
    assumed_size: int = 1000
    seen_max: int = 8192
    seen_ttl: float = 600.0
    held_max: int = 64
    anti_entropy_interval: float = 30.0
    want_timeout: float = 5.0
    max_wants: int = 64
    epoch_rounds: int = 50
    aggregate_fanout: int = 3
    #: Pending ``Dial``/``Neighbor``/``Shuffle`` are forgotten after this long.
    request_timeout: float = 10.0
    #: A linked peer in no view, with nothing pending, is let go after this long.
    idle_timeout: float = 30.0
    #: A contact whose dial failed, or whose link went down within ``stable_link`` of
    #: coming up, is not dialed again for ``redial_base`` doubling per failure in a row up
    #: to ``redial_cap`` (equal jitter); a link that stayed up ``stable_link`` clears it.
    redial_base: float = 2.0
    redial_cap: float = 120.0
    stable_link: float = 30.0
    #: An active peer silent this long is dropped (heartbeats and push-sum keep links busy).
    silence_timeout: float = 60.0
    max_messages_per_round: int = 200
    #: Signaling relays (``Relay`` and ``Relayed``, counted together) a peer may send per
    #: ``relay_window`` seconds; the first one over costs it ``flood``, the rest are dropped.
    #: A forwarder holds itself to the same budget per destination, so an honest relay
    #: never trips the limit of the node it forwards to.
    relay_budget: int = 16
    relay_window: float = 10.0
    #: Blobs remembered as relayed or delivered (a second copy is dropped: no loops, and one
    #: ``Signaled`` per blob however many peers carried it).
    relay_seen_max: int = 1024
    #: A lost link's contact is redialed (with the backoff above) this many times in a row
    #: before it is forgotten: a router that reboots is back in under a minute.
    lost_redials: int = 6
    #: A pending ``Dial`` is forgotten after this long (an rtc attempt, then tcp, may take
    #: this long; a dial answered later would come up as an inbound-looking link).
    dial_timeout: float = 30.0
    disconnect_score: float = 50.0
    ban_score: float = 100.0
    ban_seconds: float = 3600.0
    score_half_life: float = 300.0
    #: Sybil caps per source host: links, active-view and passive-view entries.
    max_links_per_host: int = 3
    max_active_per_host: int = 2
    max_passive_per_host: int = 4
    #: Node ids one ``host:port`` may stand for, in the passive view and among dials and
    #: links (an honest address is one node; two let a re-keyed node's new id in while its
    #: old one is still known).  Dials to an address whose handshake failed back off per
    #: address too (``redial_base`` .. ``redial_cap``), whatever node id they name.
    max_ids_per_address: int = 2

    def __post_init__(self) -> None:
        if not 0.0 < self.round_interval < float("inf"):
            raise ValueError("GossipConfig.round_interval must be positive")
        if not 0.0 <= self.round_jitter < 0.5:
            raise ValueError("GossipConfig.round_jitter must be in [0, 0.5)")
        if not 1 <= self.active_min <= self.active_target <= self.active_max:
            raise ValueError("GossipConfig: need 1 <= active_min <= active_target <= active_max")
        if self.fanout < 1 or self.aggregate_fanout < 1:
            raise ValueError("GossipConfig: fanouts must be >= 1")
        if not 0 <= self.passive_walk <= self.active_walk <= MAX_TTL:
            raise ValueError("GossipConfig: need 0 <= passive_walk <= active_walk <= 16")
        if not 0 <= self.heartbeat_hops <= HEARTBEAT_HOPS_MAX:
            raise ValueError(f"GossipConfig.heartbeat_hops must be in [0, {HEARTBEAT_HOPS_MAX}]")
        if self.shuffle_active + self.shuffle_passive + 1 > MAX_CONTACTS:
            raise ValueError(f"GossipConfig: a shuffle carries at most {MAX_CONTACTS} contacts")
        lo, hi = self.shuffle_interval
        if not 0.0 < lo <= hi:
            raise ValueError("GossipConfig.shuffle_interval must be (low, high), 0 < low <= high")
        if self.epoch_rounds < 2:
            raise ValueError("GossipConfig.epoch_rounds must be >= 2")
        if not 0.0 < self.redial_base <= self.redial_cap < float("inf"):
            raise ValueError("GossipConfig: need 0 < redial_base <= redial_cap (finite)")
        if not 0.0 <= self.stable_link < float("inf"):
            raise ValueError("GossipConfig.stable_link must be >= 0 and finite")
        if not 0.0 < self.disconnect_score <= self.ban_score:
            raise ValueError("GossipConfig: need 0 < disconnect_score <= ban_score")
        if self.relay_budget < 1 or not 0.0 < self.relay_window < float("inf"):
            raise ValueError("GossipConfig: need relay_budget >= 1 and a finite relay_window > 0")
        if self.relay_seen_max < 1 or self.lost_redials < 0:
            raise ValueError("GossipConfig: need relay_seen_max >= 1 and lost_redials >= 0")
        if not 0.0 < self.dial_timeout < float("inf"):
            raise ValueError("GossipConfig.dial_timeout must be positive and finite")
        if (
            min(
                self.max_links_per_host,
                self.max_active_per_host,
                self.max_passive_per_host,
                self.max_ids_per_address,
            )
            < 1
        ):
            raise ValueError("GossipConfig: per-host caps must be >= 1")
