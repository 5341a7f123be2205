"""How a release record cuts its artifact into chunks, and the check of one chunk.

This module is the one home of that cut: the swarm (which fetches and serves chunks),
the node's chunk store, and ``core.origin.check_artifact`` (the whole-artifact check both
ends of the origin use) all take their chunk boundaries from :meth:`ChunkMap.of_release`.
Nothing downstream assumes chunks are of one size: every consumer reads
:attr:`Chunk.offset` and :attr:`Chunk.length`, so a release that cuts at content-defined
boundaries (its ``sizes`` field, ``core.cdc``) changes :meth:`ChunkMap.of_release` and
nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .. import documents as docs
from ..errors import SchemaError

__all__ = ["Chunk", "ChunkMap"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Chunk:
    """One chunk: where it sits in the artifact, how long it is, the sha256 of its bytes."""

    index: int
    offset: int
    length: int
    digest: bytes

    def check(self, data: bytes) -> bool:
        """Whether ``data`` is exactly this chunk (length first: hashing is the costly part)."""
        return len(data) == self.length and hashlib.sha256(data).digest() == self.digest


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkMap:
    """An artifact (its hex sha256, as the release names it) as a sequence of chunks.

    The chunks cover ``[0, length)`` in order, without gaps or overlap; :meth:`of_release`
    builds only such maps and ``__post_init__`` refuses any other (``SchemaError``: a
    release whose chunk list does not fit its length), so a consumer may rely on it.
    """

    artifact: str
    length: int
    chunks: tuple[Chunk, ...]

    def __post_init__(self) -> None:
        at = 0
        for i, chunk in enumerate(self.chunks):
            if chunk.index != i or chunk.offset != at or chunk.length < 1:
                raise SchemaError(f"chunk map of {self.artifact}: chunk {i} out of place")
            if len(chunk.digest) != 32:
                raise SchemaError(f"chunk map of {self.artifact}: chunk {i} digest is not 32 bytes")
            at += chunk.length
        if at != self.length:
            raise SchemaError(
                f"chunk map of {self.artifact}: chunks cover {at} of {self.length} bytes"
            )

    @classmethod
    def of_release(cls, release: docs.Release) -> ChunkMap:
        """The chunks a (validated) release record lists.

        With ``sizes`` (a content-defined layout, ``core.cdc``): chunk ``i`` is ``sizes[i]``
        bytes long, right after chunk ``i - 1``.  Without: fixed ``chunk_size``, the last one
        short.  The map's own check refuses a list that does not cover ``length`` exactly.
        """
        if release.sizes:
            if len(release.sizes) != len(release.chunks):
                raise SchemaError(
                    f"chunk map of {release.artifact}: {len(release.sizes)} sizes for "
                    f"{len(release.chunks)} chunks"
                )
            spans: list[tuple[int, int]] = []
            at = 0
            for n in release.sizes:
                spans.append((at, n))
                at += n
        else:
            size = release.chunk_size
            spans = [
                (i * size, min(size, release.length - i * size)) for i in range(len(release.chunks))
            ]
        chunks = tuple(
            Chunk(index=i, offset=offset, length=length, digest=digest)
            for i, ((offset, length), digest) in enumerate(zip(spans, release.chunks, strict=True))
        )
        return cls(artifact=release.artifact, length=release.length, chunks=chunks)

    @property
    def layout(self) -> bytes:
        """The sha256 of the cut itself (every chunk's offset, length and digest).

        The same artifact may be cut two ways (two release records of one build with other
        chunk sizes, or fixed and content-defined chunks): peers trade chunks only when
        their layouts match, or an honest peer's right bytes would fail our hash.
        """
        h = hashlib.sha256(self.length.to_bytes(8, "big"))
        for c in self.chunks:
            h.update(c.offset.to_bytes(8, "big") + c.length.to_bytes(8, "big") + c.digest)
        return h.digest()

    @property
    def count(self) -> int:
        """How many chunks the artifact has."""
        return len(self.chunks)

    def check(self, index: int, data: bytes) -> bool:
        """Whether ``data`` is exactly chunk ``index`` (exact length and sha256).

        An index outside the map is simply not a chunk of it: ``False``, not an exception,
        since the index usually comes from a peer.
        """
        if not 0 <= index < len(self.chunks):
            return False
        return self.chunks[index].check(data)

    def slice(self, data: bytes, index: int) -> bytes:
        """Chunk ``index`` cut out of the whole artifact ``data``."""
        chunk = self.chunks[index]
        return data[chunk.offset : chunk.offset + chunk.length]

    def first_bad(self, data: bytes) -> int | None:
        """The index of the first chunk of the whole artifact ``data`` that does not match."""
        for chunk in self.chunks:
            if not chunk.check(data[chunk.offset : chunk.offset + chunk.length]):
                return chunk.index
        return None
