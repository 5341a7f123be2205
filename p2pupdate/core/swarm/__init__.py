"""The chunk swarm: nodes fetch an artifact's chunks from each other, the origin as fallback.

Pure (sans-IO) like ``core.gossip``: time and randomness are arguments, events go in and
effects come out; the shell (daemon) moves the bytes.  README "Artifacts peer to peer".
"""

from __future__ import annotations

from .chunks import Chunk, ChunkMap

__all__ = ["Chunk", "ChunkMap"]
