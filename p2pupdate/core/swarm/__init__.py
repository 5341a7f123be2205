"""The chunk swarm: nodes fetch an artifact's chunks from each other, the origin as fallback.

README "Artifacts peer to peer".  Pure (sans-IO) like ``core.gossip``: one ``Swarm`` is one
node's side of the swarm over every artifact it holds or fetches.  The shell feeds it
events (``Opened``, ``Received``, ``PeerGone``, ``OriginChunk``, ...) with a monotonic
``now``, calls ``handle_timer`` when ``get_timer()`` says so, and performs the effects it
returns (``Send``, ``Serve``, ``ChunkVerified``, ``FetchFromOrigin``, ``OriginRefused``, ``Completed``,
``Penalised``, ``Drop``, ``Ban``).  Randomness comes from an ``Rng`` given to the
constructor.  Every message names its artifact; every chunk is checked against the
release record's hash before it is stored or served.

One module per concern; each module's docstring holds its detail:

==============  =======================================================================
``chunks``      ``Chunk``, ``ChunkMap``: how a release record cuts its artifact (one home)
``messages``    one frozen class per message kind, ``MESSAGE_TYPES``, ``decode_message``
``config``      ``SwarmConfig`` and ``upload_rate``
``events``      events in (shell -> swarm) and effects out (swarm -> shell)
``penalties``   the points of each fault (``PENALTIES``), ``Scores``
``download``    one artifact's download: picker, pipelining, deadlines, endgame, blame
``upload``      upload slots, queues, the token bucket
``front``       ``Swarm``, composing the parts, and the dispatch tables
==============  =======================================================================

Costs: the picker keeps per-chunk holder counts and the pool of chunks to start as
things change (no per-request scan of the chunk list); ``get_timer`` costs the number of
peers.  Known limit: the shell must give each peer one link.
"""

from __future__ import annotations

from .chunks import Chunk, ChunkMap
from .config import SwarmConfig, upload_rate
from .events import (
    Ban,
    ChunkVerified,
    Completed,
    Drop,
    Effect,
    Event,
    FetchFromOrigin,
    HolderDialed,
    HolderKnown,
    Opened,
    OriginChunk,
    OriginFailed,
    OriginRefused,
    PeerGone,
    Penalised,
    Received,
    Send,
    Serve,
    UplinkMeasured,
)
from .front import EVENT_HANDLERS, MESSAGE_HANDLERS, ArtifactStatus, Swarm
from .messages import (
    MESSAGE_TYPES,
    Bitfield,
    Block,
    Cancel,
    Have,
    Message,
    Reject,
    Request,
    decode_message,
    is_swarm_kind,
)
from .penalties import PENALTIES

__all__ = [
    "EVENT_HANDLERS",
    "MESSAGE_HANDLERS",
    "MESSAGE_TYPES",
    "PENALTIES",
    "ArtifactStatus",
    "Ban",
    "Bitfield",
    "Block",
    "Cancel",
    "Chunk",
    "ChunkMap",
    "ChunkVerified",
    "Completed",
    "Drop",
    "Effect",
    "Event",
    "FetchFromOrigin",
    "Have",
    "HolderDialed",
    "HolderKnown",
    "Message",
    "Opened",
    "OriginChunk",
    "OriginFailed",
    "OriginRefused",
    "PeerGone",
    "Penalised",
    "Received",
    "Reject",
    "Request",
    "Send",
    "Serve",
    "Swarm",
    "SwarmConfig",
    "UplinkMeasured",
    "decode_message",
    "is_swarm_kind",
    "upload_rate",
]
