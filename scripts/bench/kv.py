"""Benchmark the example KV service; prints one JSON object.

    .venv/bin/python scripts/bench/kv.py [--seconds S] [--value-bytes N]

Runs one node as a separate process (``python -m p2pupdate.work.kv``, state in a temp
directory on the same filesystem as ``--dir``) and drives it with one ``KVClient`` at
several concurrency levels.  Every put is acknowledged only after its log record was
fdatasync-ed, so ``puts_per_s`` is the durable write rate; group commit is what lets it
grow with concurrency.  Also reports the raw fdatasync latency of the directory's disk
(the floor for one unbatched durable write) and the read rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from p2pupdate.work.client import KVClient


def fdatasync_ms(directory: Path, rounds: int = 200) -> float:
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, b"x" * 128)
            os.fdatasync(fd)
        return (time.perf_counter() - start) / rounds * 1e3
    finally:
        os.close(fd)
        path.unlink()


async def drive(
    kv: KVClient, op: str, concurrency: int, seconds: float, value: bytes
) -> dict[str, float]:
    latencies: list[float] = []
    deadline = trio.current_time() + seconds

    keys_per_worker = max(1, 2000 // concurrency)  # 2000 keys in all: under the store cap

    async def worker(wid: int) -> None:
        n = 0
        while trio.current_time() < deadline:
            key = f"k{wid * keys_per_worker + n % keys_per_worker}"
            n += 1
            start = time.perf_counter()
            if op == "put":
                await kv.put(key, value)
            else:
                await kv.get(key)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for wid in range(concurrency):
            nursery.start_soon(worker, wid)
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "per_s": round(len(latencies) / elapsed),
        "p50_ms": round(statistics.median(latencies) * 1e3, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1e3, 2),
    }


async def bench(state_dir: Path, seconds: float, value_bytes: int) -> dict[str, object]:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "p2pupdate.work.kv", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        line += await proc.stdout.receive_some(256)
    _, host, port = line.decode().split()
    value = os.urandom(value_bytes)
    results: dict[str, object] = {}
    try:
        async with KVClient([(host, int(port))]) as kv:
            for concurrency in (1, 8, 64):
                results[f"put_c{concurrency}"] = await drive(kv, "put", concurrency, seconds, value)
            results["get_c8"] = await drive(kv, "get", 8, seconds, value)
    finally:
        proc.terminate()
        await proc.wait()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=None, help="where the state dir goes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out = {
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}",
            "value_bytes": args.value_bytes,
            "fdatasync_ms": round(fdatasync_ms(Path(tmp)), 3),
            **trio.run(bench, Path(tmp) / "kv", args.seconds, args.value_bytes),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
