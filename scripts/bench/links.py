"""Measure the per-frame cost of a ``StreamLink``: frames/s over memory links; prints JSON.

    .venv/bin/python scripts/bench/links.py [--seconds 2] [--sizes 1024,16384]

One process, no sockets: ``memory_link_pair`` (the real handshake, framing and, since the
link session key, the per-frame MAC) with one task sending frames of each size as fast as
it can and one receiving them, for ``--seconds`` per size.  What this isolates is the
link's own work per frame (framing, the MAC on both ends, trio's memory streams); a real
transport adds its cost on top.  Figures per size: ``frames_per_s``, ``mbit_s``,
``us_per_frame`` (wall time per frame, both ends on one core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from p2pupdate.core.crypto import SigningKey  # noqa: E402
from p2pupdate.net.memory import memory_link_pair  # noqa: E402

A = SigningKey.from_seed(b"A" * 32)
B = SigningKey.from_seed(b"B" * 32)


async def one(size: int, seconds: float) -> dict[str, float]:
    a, b = await memory_link_pair(A, B)
    payload = bytes(size)
    sent = got = 0
    stop = False

    async def sender() -> None:
        nonlocal sent
        while not stop:
            for _ in range(64):
                await a.send(payload)
            sent += 64

    async def receiver() -> None:
        nonlocal got
        while True:
            await b.receive()
            got += 1

    async with trio.open_nursery() as n:
        n.start_soon(sender)
        n.start_soon(receiver)
        t0 = time.perf_counter()
        await trio.sleep(seconds)
        stop = True
        frames0 = got
        t1 = time.perf_counter()
        n.cancel_scope.cancel()
    await a.aclose()
    await b.aclose()
    rate = frames0 / (t1 - t0)
    return {
        "frames_per_s": round(rate),
        "mbit_s": round(rate * size * 8 / 1e6, 1),
        "us_per_frame": round(1e6 / rate, 2),
    }


async def main_async(sizes: list[int], seconds: float) -> dict[str, object]:
    return {str(size): await one(size, seconds) for size in sizes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--sizes", default="1024,16384")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(json.dumps(trio.run(main_async, sizes, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
