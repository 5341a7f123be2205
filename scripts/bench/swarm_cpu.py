"""The swarm's CPU cost per MiB: real daemon-side services over real tcp on loopback.

One process, one trio run: a seed and ``--fetchers`` fetchers (``GossipService`` and
``SwarmService`` each, real ``ChunkStore``s in a temporary directory, tcp links on
127.0.0.x; every fetcher dials the seed and the fetchers before it), one artifact of
``--artifact-mib`` MiB (seeded random bytes) in ``--chunk-kib`` chunks, no origin.  The
fetchers start together once every pair is linked; the bench ends when all hold it.

CPU time (``time.process_time``: this process, worker threads included) is the figure to
trust on a shared machine; the wall time is printed but depends on what else runs.

``--shape RATE`` (root) runs it in a network namespace of its own (``bcpu<pid>``, removed
after) whose loopback has the mtu of an ethernet (1500) and an ``htb`` class per node's
address at RATE: each node's uplink is shaped as in the swarm bench, so its frames arrive
as a trickle of small segments (the unshaped loopback hands 64 KiB at a time, which
hides the per-segment cost).

    python scripts/bench/swarm_cpu.py --json [--fetchers 2] [--artifact-mib 16]
        [--chunk-kib 256] [--upload-cap RATE (1G)] [--shape RATE] [--idle S] [--profile FILE]

One JSON object: ``cpu_s``, ``wall_s``, ``delivered_bytes`` (fetchers x artifact),
``uploaded_bytes`` (the services' ``bytes_up``), ``waste_ratio`` (uploaded / delivered),
``cpu_s_per_mib_delivered``, ``cpu_s_per_mib_uploaded``, ``frames_out``, ``frames_in``,
``swarm_frames_in``, ``dup_blocks`` / ``cancels`` / ``timeouts`` (the fetchers' cores'
counts).  ``--profile FILE`` writes a cProfile of the run (``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.core import gossip as g
from p2pupdate.core import swarm as sw
from p2pupdate.core.swarm.chunks import Chunk, ChunkMap
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.daemon.gossip import GossipService
from p2pupdate.daemon.options import rate
from p2pupdate.daemon.swarm import SwarmService

RUNNING = "ab" * 32


def chunk_map(data: bytes, chunk: int) -> ChunkMap:
    chunks = tuple(
        Chunk(
            index=i,
            offset=off,
            length=min(chunk, len(data) - off),
            digest=hashlib.sha256(data[off : off + chunk]).digest(),
        )
        for i, off in enumerate(range(0, len(data), chunk))
    )
    return ChunkMap(artifact=hashlib.sha256(data).hexdigest(), length=len(data), chunks=chunks)


def _refuse(_data: bytes) -> g.Accepted:
    raise AssertionError("no rumors in this bench")


def _status() -> g.Status:
    return g.Status(
        version="1.0",
        artifact=RUNNING,
        state="serving",
        pool="default",
        load=1.0,
        capacity=10.0,
        holdings=(),
    )


async def _node(
    nursery: trio.Nursery,
    d: Path,
    i: int,
    peers: list[tuple[str, int]],
    config: sw.SwarmConfig,
) -> tuple[GossipService, SwarmService, ChunkStore]:
    store = ChunkStore(d / f"store-{i}")
    key = crypto.SigningKey.from_seed(bytes([i + 1]) * 32)
    gossip = GossipService(
        key=key,
        status=_status,
        clock=SYSTEM,
        verify=_refuse,
        listen=(f"127.0.0.{i + 1}", 0),
        peers=peers,
        rng=random.Random(i),
        config=g.GossipConfig(),  # the node's defaults
    )
    swarm = SwarmService(
        links=gossip, store=store, clock=SYSTEM, config=config, rng=random.Random(100 + i)
    )
    gossip.swarm = swarm
    await nursery.start(gossip.run)
    await nursery.start(swarm.run)
    return gossip, swarm, store


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data = random.Random(7).randbytes(args.artifact_mib << 20)
    cmap = chunk_map(data, args.chunk_kib << 10)
    config = sw.SwarmConfig(
        origin_grace=3600.0,
        origin_idle=3600.0,
        upload_fraction=1.0,
        default_uplink=args.upload_cap,
    )
    with tempfile.TemporaryDirectory(prefix="swarm-cpu-") as tmp:
        d = Path(tmp)
        async with trio.open_nursery() as nursery:
            nodes = []
            seed = await _node(nursery, d, 0, [], config)
            seed[2].open(cmap)
            for c in cmap.chunks:
                seed[2].put_chunk(cmap.artifact, c.index, cmap.slice(data, c.index), durable=False)
            seed[2].sync(cmap.artifact)
            assert await seed[1].seed(cmap)
            nodes.append(seed)
            for i in range(1, args.fetchers + 1):
                peers = [(f"127.0.0.{j + 1}", nodes[j][0].port) for j in range(i)]
                nodes.append(await _node(nursery, d, i, peers, config))
            with trio.fail_after(30):
                for a in nodes:
                    while len(a[0].linked()) < len(nodes) - 1:
                        await trio.sleep(0.02)
            fetchers = nodes[1:]
            idle_cpu = None
            if args.idle > 0:  # the cost of linked nodes doing nothing, per second
                cpu0 = time.process_time()
                await trio.sleep(args.idle)
                idle_cpu = (time.process_time() - cpu0) / args.idle
            before = [(n[0].stats.frames_out, n[0].stats.frames_in, n[0].stats.swarm_frames_in,
                       n[1].bytes_up) for n in nodes]  # fmt: skip
            prof = cProfile.Profile() if args.profile else None
            cpu0, wall0 = time.process_time(), time.monotonic()
            if prof is not None:
                prof.enable()
            async with trio.open_nursery() as fetching:
                for f in fetchers:
                    fetching.start_soon(f[1].fetch, cmap)
            if prof is not None:
                prof.disable()
                prof.dump_stats(args.profile)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            for f in fetchers:
                assert f[2].path(cmap.artifact).read_bytes() == data
            stats: dict[str, int] = {}
            for f in fetchers:
                core = f[1].core
                assert core is not None
                for k, v in core.counters().items():
                    stats[k] = stats.get(k, 0) + v
            frames_out = sum(
                n[0].stats.frames_out - b[0] for n, b in zip(nodes, before, strict=True)
            )
            frames_in = sum(n[0].stats.frames_in - b[1] for n, b in zip(nodes, before, strict=True))
            swarm_in = sum(
                n[0].stats.swarm_frames_in - b[2] for n, b in zip(nodes, before, strict=True)
            )
            uploaded = sum(n[1].bytes_up - b[3] for n, b in zip(nodes, before, strict=True))
            nursery.cancel_scope.cancel()
    delivered = args.fetchers * len(data)
    mib = 1 << 20
    return {
        "fetchers": args.fetchers,
        "artifact_bytes": len(data),
        "chunk_bytes": args.chunk_kib << 10,
        "max_block": config.max_block,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "delivered_bytes": delivered,
        "uploaded_bytes": uploaded,
        "waste_ratio": round(uploaded / delivered, 4),
        "cpu_s_per_mib_delivered": round(cpu / (delivered / mib), 5),
        "cpu_s_per_mib_uploaded": round(cpu / max(1, uploaded / mib), 5),
        "idle_cpu_s_per_s": None if idle_cpu is None else round(idle_cpu, 4),
        "frames_out": frames_out,
        "frames_in": frames_in,
        "swarm_frames_in": swarm_in,
        **stats,
    }


def _in_shaped_netns(argv: list[str], shape: float, nodes: int) -> int:
    """Re-run this script (without ``--shape``) in a namespace of its own, shaped."""
    ns = f"bcpu{os.getpid()}"
    rate_bit = int(shape * 8)

    def ip(*cmd: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)

    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ip("ip", "link", "set", "lo", "mtu", "1500", "up")
        ip("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "999")
        ip("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:999", "htb",
           "rate", "10gbit", "quantum", "60000")  # fmt: skip
        for i in range(nodes):
            cls = f"1:{10 + i}"
            ip("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", cls, "htb",
               "rate", f"{rate_bit}bit", "ceil", f"{rate_bit}bit", "quantum", "1514")  # fmt: skip
            ip("tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio",
               "1", "u32", "match", "ip", "src", f"127.0.0.{i + 1}/32", "flowid", cls)  # fmt: skip
        cmd = ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), *argv]
        return subprocess.run(cmd, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON object (the default)")
    ap.add_argument("--fetchers", type=int, default=2)
    ap.add_argument("--artifact-mib", type=int, default=16)
    ap.add_argument("--chunk-kib", type=int, default=256)
    ap.add_argument(
        "--upload-cap", type=rate, default=float(1 << 30), help="per node, bytes/s (1G)"
    )
    ap.add_argument("--profile", default=None, help="write a cProfile here")
    ap.add_argument("--idle", type=float, default=0.0, help="first measure S s of idling")
    ap.add_argument("--shape", type=rate, default=None, help="each node's uplink (root)")
    args = ap.parse_args(argv)
    if args.shape is not None:
        rest = list(sys.argv[1:] if argv is None else argv)
        at = rest.index("--shape")
        del rest[at : at + 2]
        return _in_shaped_netns(rest, args.shape, args.fetchers + 1)
    out = trio.run(run, args)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
