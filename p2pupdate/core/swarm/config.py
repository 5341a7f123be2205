"""``SwarmConfig``: the knobs of one node's swarm, and the upload rate they imply.

The defaults suit a home uplink: blocks of 64 KiB (well under a link's ~1 MiB frame; a
block is one frame, so ``max_block`` must be at most a link's frame limit less
``messages.BLOCK_OVERHEAD``: ``check_frame_limit``; 64 KiB rather than 16 because the
node's cost is per frame: measured on the swarm bench, 24 nodes spent 80 CPU s instead of
96 and finished in 53.6 s instead of 63.4; an rtc link cuts frames into 64 KiB messages
anyway), six requests in flight per peer,
and half of the measured uplink for uploads so a release never makes a stranger's machine
stutter (``upload_rate``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .messages import BLOCK_OVERHEAD, MAX_BLOCK


@dataclass(frozen=True, kw_only=True, slots=True)
class SwarmConfig:
    """Downloader, uploader and penalty knobs (seconds are monotonic, rates bytes/s)."""

    #: Bytes per block (one request, one frame).
    max_block: int = 64 * 1024
    #: Requests in flight per peer.
    pipeline: int = 6
    #: Chunks picked at random before rarest-first takes over (a newcomer with nothing
    #: needs any whole chunk fast, to have something to trade).
    random_first: int = 4
    #: A block not answered within this is asked of another peer (a trickler).
    request_timeout: float = 10.0
    #: A peer that misses this many deadlines in a row is dropped.
    max_misses: int = 3
    #: A chunk no connected peer has for this long is fetched from the origin.
    origin_grace: float = 5.0
    #: ... or at once, when no peer had anything for us to ask for this long (release day:
    #: every node starts with nothing, so waiting the grace only wastes the origin).
    origin_idle: float = 1.0
    #: Chunks one download has at the origin at once, each picked at random among those no
    #: connected peer has: nodes that go to the origin together fetch different chunks,
    #: which they then trade, and the origin's downloader cap is shared fairly.
    origin_parallel: int = 2
    #: After a ``choked``/``busy`` reject, leave that peer alone for this long.
    reject_backoff: float = 2.0
    #: Download rates are measured over this window (for the overall deadline).
    rate_window: float = 10.0
    #: Peers served at once; others' requests are rejected ``choked``.
    upload_slots: int = 4
    #: Requests queued per served peer; beyond it ``busy`` (and ``flood`` points).
    upload_queue: int = 16
    #: Share of the measured uplink uploads may use, and a hard cap (bytes/s, None: none).
    upload_fraction: float = 0.5
    upload_cap: float | None = None
    #: Used until the shell has measured the uplink.
    default_uplink: float = 1024 * 1024
    #: The bucket counts bytes on the wire: each block's TCP/IP and Ethernet headers and
    #: the ACKs our uplink sends for what we download (``upload.wire_bytes``,
    #: ``upload.ack_bytes``).  False: payload only (the swarm simulator, whose links carry
    #: payload at their rates and no headers).
    wire_headers: bool = True
    #: Score at which a peer's sessions are dropped / it is banned; the half-life of scores.
    drop_score: float = 50.0
    ban_score: float = 100.0
    score_half_life: float = 600.0
    ban_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_block <= MAX_BLOCK:
            raise ValueError(f"SwarmConfig.max_block must be in [1, {MAX_BLOCK}]")
        if self.pipeline < 1 or self.upload_slots < 1 or self.upload_queue < 1:
            raise ValueError("SwarmConfig: pipeline, upload_slots, upload_queue must be >= 1")
        if self.origin_parallel < 1 or self.origin_idle < 0 or self.origin_grace < 0:
            raise ValueError("SwarmConfig: origin_parallel >= 1, origin_idle/grace >= 0")
        if self.max_misses < 1 or self.request_timeout <= 0 or self.rate_window <= 0:
            raise ValueError("SwarmConfig: max_misses, request_timeout, rate_window must be > 0")
        if not 0.0 < self.upload_fraction <= 1.0:
            raise ValueError("SwarmConfig.upload_fraction must be in (0, 1]")
        if not 0 < self.drop_score <= self.ban_score:
            raise ValueError("SwarmConfig: 0 < drop_score <= ban_score")

    def check_frame_limit(self, max_frame: int) -> None:
        """Refuse a block size a link of frame limit ``max_frame`` cannot carry."""
        if self.max_block + BLOCK_OVERHEAD > max_frame:
            raise ValueError(
                f"SwarmConfig.max_block {self.max_block} + {BLOCK_OVERHEAD} exceeds the "
                f"link's frame limit {max_frame}"
            )


def upload_rate(config: SwarmConfig, measured_uplink: float | None) -> float:
    """Bytes/s uploads may use: a fraction of the measured uplink, at most the cap."""
    uplink = config.default_uplink if measured_uplink is None else measured_uplink
    rate = max(1.0, uplink * config.upload_fraction)
    return rate if config.upload_cap is None else min(rate, config.upload_cap)
