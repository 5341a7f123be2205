"""Artifact bytes from the origin (a replica's HTTP store) checked against their release.

Both ends use the one check: a replica refuses to store bytes that are not the release it
holds, and a node refuses to install bytes a replica served that are not it.  The release
record lists the chunk hashes, so the first wrong chunk is named; where the chunks lie is
``core.swarm.chunks.ChunkMap``'s to say (the one home of the cut).
"""

from __future__ import annotations

from . import documents as docs
from .errors import SchemaError
from .swarm.chunks import ChunkMap

__all__ = ["check_artifact"]


def check_artifact(data: bytes, release: docs.Release, limit: int) -> str:
    """Why ``data`` is not the artifact ``release`` describes ("" if it is)."""
    if len(data) > limit:
        return f"more than {limit} bytes"
    if len(data) != release.length:
        return f"{len(data)} bytes, the release says {release.length}"
    try:
        chunk_map = ChunkMap.of_release(release)
    except SchemaError as e:
        return e.message
    bad = chunk_map.first_bad(data)
    if bad is not None:
        return f"chunk {bad} does not match the release record"
    return ""
