"""Bytes on the wire compressed: the one home of the codec (zstd, one frame per payload).

Chunks are addressed and stored by their uncompressed bytes; only the wire carries them
compressed, and only when that is smaller (``compress`` says None otherwise, so the sender
can remember that a chunk does not shrink and not try again).  ``decompress`` is bounded
before it allocates: the frame must declare exactly the length the receiver asked for
(a frame without a content size, with another size, truncated, with bytes after it, or no
frame at all is a ``BadFrame``: the sender's fault, like any malformed message).  Pure:
zstandard does no IO.  Each call makes its own (de)compressor: zstandard's are not safe to
share between threads (the coordinator compresses chunks in worker threads, a node
decompresses them in its fetch threads; one shared compressor answered "Src size is
incorrect" to two nodes at once, and crashed the interpreter with four threads).
"""

from __future__ import annotations

from typing import Final

import zstandard

from ..errors import WireError

#: The name of the codec, as HTTP says it (``Content-Encoding: zstd``).
CODEC: Final = "zstd"
#: Fast and already most of the gain on code and wheels (level 3 is zstd's default).
LEVEL: Final = 3


class BadFrame(WireError):
    """Compressed bytes that are not exactly one frame of the expected length."""

    rule = "bad-compression"


def compress(raw: bytes) -> bytes | None:
    """One zstd frame of ``raw`` if it is smaller than ``raw``; None if it does not shrink."""
    frame = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True).compress(raw)
    return frame if len(frame) < len(raw) else None


def decompress(frame: bytes, length: int) -> bytes:
    """Exactly ``length`` bytes from one frame, or ``BadFrame`` (nothing larger is ever
    allocated: the declared size is checked first, and zstd checks the content against it)."""
    if not 1 <= len(frame) < length:  # a frame is sent only when it is smaller
        raise BadFrame(f"zstd frame of {len(frame)} bytes for {length} bytes")
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise BadFrame(f"not a zstd frame: {exc}") from None
    if declared != length:
        raise BadFrame(f"zstd frame declares {declared} bytes, {length} expected")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(frame)
    except zstandard.ZstdError as exc:
        raise BadFrame(f"bad zstd frame: {exc}") from None
    if not dobj.eof or dobj.unused_data or len(out) != length:
        raise BadFrame(f"zstd frame gave {len(out)} of {length} bytes, or not one whole frame")
    return out
