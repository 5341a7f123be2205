"""Artifact bytes from the origin (a replica's HTTP store) checked against their release.

Both ends use the one check: a replica refuses to store bytes that are not the release it
holds, and a node refuses to install bytes a replica served that are not it.  The release
record lists the chunk hashes, so the first wrong chunk is named.
"""

from __future__ import annotations

import hashlib

from . import documents as docs

__all__ = ["check_artifact"]


def check_artifact(data: bytes, release: docs.Release, limit: int) -> str:
    """Why ``data`` is not the artifact ``release`` describes ("" if it is)."""
    if len(data) > limit:
        return f"more than {limit} bytes"
    if len(data) != release.length:
        return f"{len(data)} bytes, the release says {release.length}"
    for i, digest in enumerate(release.chunks):
        chunk = data[i * release.chunk_size : (i + 1) * release.chunk_size]
        if hashlib.sha256(chunk).digest() != digest:
            return f"chunk {i} does not match the release record"
    return ""
