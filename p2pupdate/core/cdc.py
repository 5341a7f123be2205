"""Content-defined chunking (FastCDC): bytes in, chunk boundaries out.

Why: a release record that lists fixed-size chunks of the artifact changes every chunk after
the first changed byte, so an update moves nearly the whole build.  Cutting where the
*content* says (a rolling hash of the last 64 bytes hits a bit pattern) puts the cuts back in
the same places right after a change, so unchanged files make the same chunks, with the same
hashes, in every release -- and a node fetches only the chunks it lacks (issue P12).

The algorithm is FastCDC (Xia et al., "FastCDC: a Fast and Efficient Content-Defined Chunking
Approach for Data Deduplication", USENIX ATC 2016):

* **Gear hash.**  ``h = (h << 1) + GEAR[byte]`` modulo 2**64.  Every shift pushes a byte's
  contribution one bit up, so after 64 bytes it has left the word: ``h`` at position ``i`` is
  ``sum(GEAR[data[i - k]] << k for k in range(64))`` -- a function of the 64 bytes ending at
  ``i`` and nothing else.  Our hash is that windowed sum, never reset at a chunk start (bytes
  before the input count as absent).  Since ``min_size >= 64``, the hash tested at any cut
  lies wholly inside the chunk: a chunk's end depends only on its start and its own bytes.
* **Cut-point skipping.**  No cut is tested before ``min_size`` bytes.
* **Normalized chunking** (level ``normalization``, 2 by default as in the paper): until the
  chunk reaches ``avg_size`` a cut needs ``log2(avg) + level`` zero bits (``mask_small``,
  harder), after it ``log2(avg) - level`` (``mask_large``, easier); at ``max_size`` the
  chunk is cut regardless.  This narrows the size distribution around the average.
* **Masks** spread their one-bits over the top 48 bits of the word (bit ``63 - j*48//n`` for
  ``j < n``), so each tested bit depends on at least the last 17 bytes (low bits of a gear
  hash see only the last few bytes).

**Gear table** (fixed forever: changing it changes every chunk of every release):
``GEAR[b]`` is the first 8 bytes, big-endian, of ``sha256(b"p2pupdate/cdc/gear/v1" +
bytes([b]))``.  tests/core/test_cdc.py pins its sha256 and some known boundaries.

Two implementations compute the same boundaries: ``boundaries_reference`` (plain Python, a
byte at a time; the definition, fast enough for tests) and ``boundaries`` (numpy, used for
builds: the windowed hash of a whole block in six shift-and-add passes -- ``H_2w[i] = H_w[i] +
(H_w[i - w] << w)`` -- then the few candidate cuts walked in Python).  Tests prove they agree.
numpy is imported inside ``boundaries`` only, so importing this module costs nothing.

``split_stream`` cuts a stream given as blocks (a file read a few MiB at a time) into the
same chunks as ``split`` of the whole, holding one block and one unfinished chunk: every
cut before the end of what it holds is final (a chunk's end depends only on its start and
its own bytes), and the last one waits for more bytes or the end.

Pure (README "Architecture"): no IO, no clock, no randomness; input sizes are capped by
``CdcParams.max_input_bytes`` and bad parameters are a typed ``CdcParamsError``.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from .errors import P2PUpdateError

__all__ = [
    "DEFAULT_PARAMS",
    "GEAR",
    "WINDOW",
    "CdcError",
    "CdcInputError",
    "CdcParams",
    "boundaries",
    "boundaries_reference",
    "split",
    "split_stream",
]

#: Bytes the gear hash sees (the word is 64 bits and shifts by one per byte).
WINDOW: Final = 64
_M64: Final = (1 << 64) - 1
_GEAR_SEED: Final = b"p2pupdate/cdc/gear/v1"
#: The gear table (see the module docstring for how it is made).
GEAR: Final[tuple[int, ...]] = tuple(
    int.from_bytes(hashlib.sha256(_GEAR_SEED + bytes([b])).digest()[:8], "big") for b in range(256)
)
#: Bits a mask may use: the top 48 of the word.
_MASK_SPAN: Final = 48
#: Bytes hashed per numpy block (8 B of hash per byte: 8 MiB arrays stay nearer the caches;
#: 1 MiB measured ~1.5x faster than 4 MiB).
_BLOCK: Final = 1024 * 1024


class CdcError(P2PUpdateError):
    """Chunking was asked for something it does not do.  The caller's mistake (local): the
    bytes being cut are our own build, never a peer's."""

    rule = "cdc"


class CdcParamsError(CdcError):
    """Chunk-size parameters that break a rule (min < avg < max, avg a power of two, ...)."""

    rule = "cdc-params"


class CdcInputError(CdcError):
    """Input over ``max_input_bytes``."""

    rule = "cdc-input"


def _spread_mask(bits: int) -> int:
    """``bits`` one-bits spread evenly over the top ``_MASK_SPAN`` bits, highest first."""
    return sum(1 << (63 - (j * _MASK_SPAN) // bits) for j in range(bits))


@dataclass(frozen=True, slots=True, kw_only=True)
class CdcParams:
    """Chunk sizes (bytes) and the input cap.  Defaults: 16 KiB / 64 KiB / 256 KiB, level 2.

    Part of what makes a chunk's hash: builds that should share chunks must use the same
    parameters (a release record will name them).
    """

    min_size: int = 16 * 1024
    avg_size: int = 64 * 1024
    max_size: int = 256 * 1024
    normalization: int = 2
    max_input_bytes: int = 4 * 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("min_size", "avg_size", "max_size", "normalization", "max_input_bytes"):
            if type(getattr(self, name)) is not int:
                raise CdcParamsError(f"{name} must be an int")
        if not WINDOW <= self.min_size < self.avg_size < self.max_size <= 1 << 30:
            raise CdcParamsError(
                f"need {WINDOW} <= min_size < avg_size < max_size <= 2**30, got "
                f"{self.min_size} / {self.avg_size} / {self.max_size}"
            )
        if self.avg_size & (self.avg_size - 1):
            raise CdcParamsError(f"avg_size {self.avg_size} is not a power of two")
        if not 0 <= self.normalization <= 3:
            raise CdcParamsError(f"normalization {self.normalization} is not 0..3")
        if self.avg_bits - self.normalization < 1:
            raise CdcParamsError(f"avg_size {self.avg_size} too small for the normalization")
        if not 0 < self.max_input_bytes <= 1 << 40:
            raise CdcParamsError(f"max_input_bytes {self.max_input_bytes} is not in 1..2**40")

    @property
    def avg_bits(self) -> int:
        return self.avg_size.bit_length() - 1

    @property
    def mask_small(self) -> int:
        """Tested while the chunk is shorter than ``avg_size`` (more bits: cuts are rarer)."""
        return _spread_mask(self.avg_bits + self.normalization)

    @property
    def mask_large(self) -> int:
        """Tested from ``avg_size`` to ``max_size`` (fewer bits: cuts are likelier)."""
        return _spread_mask(self.avg_bits - self.normalization)


DEFAULT_PARAMS: Final = CdcParams()


def _check_input(data: bytes | bytearray | memoryview, params: CdcParams) -> int:
    if not isinstance(params, CdcParams):
        raise CdcParamsError(f"params must be CdcParams, not {type(params).__name__}")
    n = len(data)
    if n > params.max_input_bytes:
        raise CdcInputError(f"input of {n} B is over max_input_bytes {params.max_input_bytes}")
    return n


def _cut_reference(data: bytes | bytearray | memoryview, start: int, p: CdcParams) -> int:
    """End (exclusive) of the chunk starting at ``start``: the definition, byte by byte."""
    n = len(data)
    if n - start <= p.min_size:
        return n
    gear, mask_s, mask_l = GEAR, p.mask_small, p.mask_large
    c = start + p.min_size  # the first cut tested; it tests the hash of data[c - 64 : c]
    h = 0
    for j in range(c - WINDOW, c - 1):  # the window's first 63 bytes
        h = ((h << 1) + gear[data[j]]) & _M64
    small_end = min(start + p.avg_size - 1, n)
    while c <= small_end:
        h = ((h << 1) + gear[data[c - 1]]) & _M64
        if not h & mask_s:
            return c
        c += 1
    large_end = min(start + p.max_size - 1, n)
    while c <= large_end:
        h = ((h << 1) + gear[data[c - 1]]) & _M64
        if not h & mask_l:
            return c
        c += 1
    return min(start + p.max_size, n)


def boundaries_reference(
    data: bytes | bytearray | memoryview, params: CdcParams = DEFAULT_PARAMS
) -> tuple[int, ...]:
    """The chunk ends (exclusive offsets, increasing, the last one ``len(data)``; ``()`` for
    empty input), computed a byte at a time.  ~5 MB/s: the definition, for tests."""
    n = _check_input(data, params)
    ends: list[int] = []
    start = 0
    while start < n:
        start = _cut_reference(data, start, params)
        ends.append(start)
    return tuple(ends)


def _candidates(
    data: bytes | bytearray | memoryview, params: CdcParams
) -> tuple[list[int], list[int]]:
    """Every cut ``c`` (1..len) whose window hash passes ``mask_small`` / ``mask_large``."""
    import numpy as np

    gear = np.array(GEAR, dtype=np.uint64)
    raw = np.frombuffer(data, dtype=np.uint8)
    mask_s, mask_l = np.uint64(params.mask_small), np.uint64(params.mask_large)
    zero = np.uint64(0)
    small: list[int] = []
    large: list[int] = []
    for b0 in range(0, len(raw), _BLOCK):
        lead = min(b0, WINDOW - 1)  # earlier bytes the first windows of this block need
        h = gear[raw[b0 - lead : b0 + _BLOCK]]
        w = 1
        while w < WINDOW:  # H_2w[i] = H_w[i] + (H_w[i - w] << w), wrapping modulo 2**64
            h[w:] += h[:-w] << np.uint64(w)
            w *= 2
        h = h[lead:]
        base = b0 + 1  # the cut after byte b0 + i is b0 + i + 1
        small.extend((np.flatnonzero((h & mask_s) == zero) + base).tolist())
        large.extend((np.flatnonzero((h & mask_l) == zero) + base).tolist())
    return small, large


def boundaries(
    data: bytes | bytearray | memoryview, params: CdcParams = DEFAULT_PARAMS
) -> tuple[int, ...]:
    """The same chunk ends as ``boundaries_reference``, computed with numpy (~100x faster)."""
    n = _check_input(data, params)
    if n == 0:
        return ()
    small, large = _candidates(data, params)
    return tuple(_walk(n, small, large, params))


def _walk(n: int, small: Sequence[int], large: Sequence[int], p: CdcParams) -> list[int]:
    """Pick the cuts from the candidates, a chunk at a time (the rule of ``_cut_reference``)."""
    ends: list[int] = []
    start = 0
    while start < n:
        if n - start <= p.min_size:
            cut = n
        else:
            k = bisect_left(small, start + p.min_size)
            if k < len(small) and small[k] <= start + p.avg_size - 1:
                cut = small[k]
            else:
                k = bisect_left(large, start + p.avg_size)
                if k < len(large) and large[k] <= start + p.max_size - 1:
                    cut = large[k]
                else:
                    cut = min(start + p.max_size, n)
        ends.append(cut)
        start = cut
    return ends


def split(data: bytes, params: CdcParams = DEFAULT_PARAMS) -> list[bytes]:
    """``data`` cut into its chunks (``b"".join(split(data)) == data``)."""
    out: list[bytes] = []
    start = 0
    for end in boundaries(data, params):
        out.append(data[start:end])
        start = end
    return out


def split_stream(blocks: Iterable[bytes], params: CdcParams = DEFAULT_PARAMS) -> Iterator[bytes]:
    """The chunks of the concatenation of ``blocks`` -- exactly ``split(b"".join(blocks))``
    -- holding at most one block plus one chunk at a time.  ``max_input_bytes`` caps the
    whole stream."""
    _check_input(b"", params)
    pending = b""
    total = 0
    for block in blocks:
        if not block:
            continue
        total += len(block)
        if total > params.max_input_bytes:
            raise CdcInputError(f"input over max_input_bytes {params.max_input_bytes}")
        pending = pending + block if pending else bytes(block)
        if len(pending) < 2 * params.max_size:
            continue  # too little to be worth a pass (and no cut could be final yet)
        start = 0
        for end in boundaries(pending, params)[:-1]:  # the last cut is where the bytes end
            yield pending[start:end]
            start = end
        pending = pending[start:]
    start = 0
    for end in boundaries(pending, params):
        yield pending[start:end]
        start = end
