"""A swarm in memory: real ``Swarm`` cores and scripted peers on a virtual clock.

Beside ``tests/core/harness.py`` (the trust core's repository simulator), this one stages
attacks on the chunk swarm (README "Artifacts peer to peer").  A ``Net`` holds nodes --
real cores (``CoreNode``) and scripted peers (``Scripted`` subclasses that lie, corrupt,
trickle, replay, flood or vanish) -- and delivers every frame after ``latency`` virtual
seconds, in order; a core's timers fire at the virtual time its ``get_timer`` names.  The
shell's work (reading a served block from the store, storing a verified chunk, fetching
from the origin, closing a dropped or banned peer's link) is done here as a daemon would,
so a test watches exactly what the core asked for: which peer it penalised, banned or
dropped, how many chunks it wanted from the origin, and the bytes it ended with.

The network, the clock and ``CoreNode`` live in ``simulations/swarm.py`` (the swarm
simulator runs the same ones at fleet scale); this file adds the scripted attackers.
Nothing here reads a clock, sleeps or opens a socket; randomness is a seeded
``random.Random`` per core.  A run of a few hundred virtual seconds takes milliseconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from p2pupdate.core.swarm import messages as m
from p2pupdate.core.swarm.chunks import ChunkMap

# The in-memory swarm network has one home, the simulator; the attackers below use it.
from simulations.swarm import (  # noqa: F401  (re-exported for the tests)
    LATENCY,
    MAX_STEPS,
    NOW,
    ORIGIN_DELAY,
    CoreNode,
    Net,
    Node,
    artifact_bytes,
    chunk_map_of,
    fleet_run,
    peer_id,
)

# -- scripted peers ---------------------------------------------------------------------


@dataclass(kw_only=True, eq=False)
class Scripted(Node):
    """A peer that speaks the wire format but follows its own script.

    By default it claims every chunk (``claims``) and answers a request with the true
    bytes (``answer``); subclasses change one thing each.
    """

    data: bytes
    cmap: ChunkMap
    claims: frozenset[int] | None = None
    requests_seen: int = 0

    def opened(self, peer: str, artifact: str) -> None:
        held = self.claims if self.claims is not None else frozenset(range(self.cmap.count))
        self.send(peer, m.Bitfield.of(self.cmap, held).to_wire())

    def received(self, peer: str, data: bytes) -> None:
        msg = m.decode_message(data)
        if isinstance(msg, m.Request):
            self.requests_seen += 1
            self.answer(peer, msg)

    def true_block(self, req: m.Request) -> bytes:
        start = self.cmap.chunks[req.chunk].offset + req.offset
        return self.data[start : start + req.length]

    def block(self, req: m.Request, data: bytes, artifact: str | None = None) -> bytes:
        return m.Block(
            artifact=artifact or req.artifact, chunk=req.chunk, offset=req.offset, data=data
        ).to_wire()

    def answer(self, peer: str, req: m.Request) -> None:
        self.send(peer, self.block(req, self.true_block(req)))


@dataclass(kw_only=True, eq=False)
class Corrupt(Scripted):
    """Serves every block with one byte flipped."""

    def answer(self, peer: str, req: m.Request) -> None:
        good = bytearray(self.true_block(req))
        good[0] ^= 0xFF
        self.send(peer, self.block(req, bytes(good)))


@dataclass(kw_only=True, eq=False)
class Trickler(Scripted):
    """Answers correctly, but each answer takes ``delay`` (longer than the deadline)."""

    delay: float = 60.0

    def answer(self, peer: str, req: m.Request) -> None:
        assert self.net is not None
        frame = self.block(req, self.true_block(req))
        self.net.at(self.net.now + self.delay, lambda: self.send(peer, frame))


@dataclass(kw_only=True, eq=False)
class Liar(Scripted):
    """Claims every chunk in its bitfield, then rejects every request as ``missing``."""

    def answer(self, peer: str, req: m.Request) -> None:
        rej = m.Reject(
            artifact=req.artifact,
            chunk=req.chunk,
            offset=req.offset,
            length=req.length,
            reason="missing",
        )
        self.send(peer, rej.to_wire())


@dataclass(kw_only=True, eq=False)
class Replayer(Scripted):
    """Answers with the blocks of another artifact (``other``): named as ours
    (``relabel``) or as what they really are."""

    other: bytes = b""
    relabel: bool = True

    def answer(self, peer: str, req: m.Request) -> None:
        start = self.cmap.chunks[req.chunk].offset + req.offset
        data = self.other[start : start + req.length]
        other_artifact = hashlib.sha256(self.other).hexdigest()
        self.send(peer, self.block(req, data, None if self.relabel else other_artifact))


@dataclass(kw_only=True, eq=False)
class Flooder(Scripted):
    """Holds nothing; on session start floods the peer with ``count`` requests."""

    count: int = 200

    def opened(self, peer: str, artifact: str) -> None:
        self.send(peer, m.Bitfield.of(self.cmap, ()).to_wire())
        for n in range(self.count):
            i = n % self.cmap.count
            req = m.Request(
                artifact=self.cmap.artifact,
                chunk=i,
                offset=0,
                length=min(1024, self.cmap.chunks[i].length),
            )
            self.send(peer, req.to_wire())

    def received(self, peer: str, data: bytes) -> None:
        pass


@dataclass(kw_only=True, eq=False)
class Vanisher(Scripted):
    """Answers ``blocks`` requests truly, then drops the link in the middle of a chunk."""

    blocks: int = 3
    answered: int = 0

    def answer(self, peer: str, req: m.Request) -> None:
        assert self.net is not None
        if self.answered >= self.blocks:
            net = self.net
            net.at(net.now, lambda: net.unlink(self.id, peer))
            return
        self.answered += 1
        super().answer(peer, req)


if __name__ == "__main__":  # python -m tests.core.swarm_harness [NODES [MIB [CHUNK_KIB]]]
    import json
    import sys

    args = [float(a) for a in sys.argv[1:4]] + [24, 4.0, 256][len(sys.argv) - 1 :]
    n, mib, chunk_kib = args[:3]
    print(json.dumps(fleet_run(nodes=int(n), artifact_mib=mib, chunk_size=int(chunk_kib * 1024))))
