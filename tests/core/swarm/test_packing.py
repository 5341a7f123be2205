"""The wire codec (``core/swarm/packing``): compressed only when smaller, decompressed
exactly to the length asked for, anything else the sender's fault."""

from __future__ import annotations

import hashlib

import pytest
import zstandard

from p2pupdate.core.swarm import packing, penalties
from p2pupdate.core.swarm.packing import BadFrame


def _noise(n: int) -> bytes:
    out = b""
    seed = b"noise"
    while len(out) < n:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return out[:n]


def test_compressible_round_trip() -> None:
    raw = b"def f(x):\n    return x + 1\n" * 2000
    frame = packing.compress(raw)
    assert frame is not None and len(frame) < len(raw) // 10
    assert packing.decompress(frame, len(raw)) == raw


def test_incompressible_is_not_compressed() -> None:
    assert packing.compress(_noise(64 * 1024)) is None
    assert packing.compress(b"x") is None  # a frame is never smaller than one byte


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_wrong_length_is_a_bad_frame(delta: int) -> None:
    raw = b"a" * 10_000
    frame = packing.compress(raw)
    assert frame is not None
    with pytest.raises(BadFrame):
        packing.decompress(frame, len(raw) + delta)


def test_decompression_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(64 * 1024 * 1024))  # 64 MiB of zeros
    assert len(bomb) < 4096
    with pytest.raises(BadFrame, match="declares"):
        packing.decompress(bomb, 4096)


def test_frame_without_content_size_is_refused() -> None:
    raw = b"b" * 10_000
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    with pytest.raises(BadFrame):
        packing.decompress(frame, len(raw))


@pytest.mark.parametrize("how", ["trailing", "second-frame", "truncated", "garbage", "empty"])
def test_malformed_frames(how: str) -> None:
    raw = b"c" * 10_000
    frame = packing.compress(raw)
    assert frame is not None
    bad = {
        "trailing": frame + b"x",
        "second-frame": frame + frame,
        "truncated": frame[:-3],
        "garbage": b"\x00" * 64,
        "empty": b"",
    }[how]
    with pytest.raises(BadFrame):
        packing.decompress(bad, len(raw))


def test_a_bad_frame_is_the_senders_fault() -> None:
    """A ``BadFrame`` is a ``WireError``: the swarm charges it like any malformed message."""
    try:
        packing.decompress(b"junk", 100)
    except BadFrame as exc:
        assert penalties.rule_for(exc) == "malformed"
    else:
        pytest.fail("no BadFrame")


def test_threads_compress_and_decompress_at_once() -> None:
    """The coordinator compresses chunks in worker threads and a node decompresses them in
    its fetch threads: calls at once must not share a zstd context (one shared compressor
    answered "Src size is incorrect", and with four threads crashed the interpreter)."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [_noise(500) * (64 + i) for i in range(8)]

    def work(k: int) -> int:
        good = 0
        for j in range(100):
            raw = chunks[(k + j) % len(chunks)]
            frame = packing.compress(raw)
            assert frame is not None
            good += packing.decompress(frame, len(raw)) == raw
        return good

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(work, range(4))) == 400
