"""A staged ramp is halted by the breaker like any scope (README "A staged ramp in one
signed scope"; P14).

One replica, in-process, with the real ``Asks``, ``Breakers`` and ``policy`` code and a
wall clock the test moves: one signed ramp scope (10% now, 40% at +60 s, everyone at
+120 s).  Stage 1's nodes are granted, stage 2 widens the grants to exactly its new nodes,
their failed probations trip the breaker, and from then on the ramp stops widening: at
+120 s gate 2 says yes to every node (the ramp is at 100%) but gate 3 refuses every ask
with the breaker's pause.  Only a newer operator scope resumes the rollout.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from coordinator.policy import GATE_BREAKER, PolicyConfig
from coordinator.service import Replica, ServiceConfig
from p2pupdate.core import admission, crypto, departure, gates
from p2pupdate.core import coordproto as proto
from p2pupdate.core import documents as docs

from .service_helpers import ZERO, Network, artifact_of

V2 = os.urandom(3000)
A = artifact_of(V2)
SEED = bytes.fromhex("5eed0000000000000000000000000001")
RAMP = ((0, 0.1), (60, 0.4), (120, 1.0))
NODES = 40


class Clocks:
    """The replica's wall and monotonic clocks, moved together by the test."""

    def __init__(self, wall: float) -> None:
        self.offset = 0.0
        self.base_wall = wall

    def wall(self) -> float:
        return self.base_wall + self.offset

    def clock(self) -> float:
        return 1000.0 + self.offset


def _signed_scope(net: Network, serial: int, issued: int, **how: object) -> bytes:
    doc = docs.Scope(serial=serial, issued=issued, expires=issued + 3600, artifact=A, **how)  # type: ignore[arg-type]
    return doc.sign([net.key("operator")]).to_wire()


def _status(replica: Replica, node: str) -> None:
    replica.on_status(
        node,
        proto.StatusReport(
            version="v1",
            artifact=ZERO,
            state="serving",
            pool="default",
            estimate=proto.Estimate(capacity=4000.0, load=100.0, serving=NODES, age=0.0),
            held=None,
            addrs=(),
            versions=None,
        ),
    )


def _ask(replica: Replica, clocks: Clocks, node: str, serial: int) -> tuple[bool, str, str, bytes]:
    """One ask as a node makes it: granted?, gate, reason, and the token's nonce."""
    nonce = os.urandom(proto.TOKEN_NONCE_LEN)
    token = departure.propose_token(
        departure.Binding(
            node=node,
            pool="default",
            from_artifact=ZERO,
            to_artifact=A,
            allowlist_version=1,
            scope_serial=serial,
        ),
        ttl=replica.config.token_ttl,
        now_wall=clocks.wall(),
        nonce=nonce,
    )
    answer = replica.ask(node, proto.AskRequest(token=token.to_payload(), capacity=100.0, load=5.0))
    return answer.granted, answer.gate, answer.reason, nonce


def test_the_breaker_halts_a_ramp_and_only_a_newer_scope_resumes_it(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    # the documents are signed at real times; the replica's clocks start there and move
    clocks = Clocks(float(int(time.time())))
    config = ServiceConfig(
        network_dir=net.dir,
        first_start=True,
        policy=PolicyConfig(max_concurrent=NODES, min_serving=0),
    )
    replica = Replica(config, clock=clocks.clock, wall=clocks.wall)
    try:
        issued = int(clocks.wall())
        for doc in (
            net.release(V2, "v2", 2),
            net.allowlist(1, [A]),
            _signed_scope(net, 1, issued, kind="fraction", fraction=1.0, seed=SEED, ramp=RAMP),
        ):
            code, answer = replica.publish(doc)
            assert code == 200, answer
        scope = replica.scope
        assert scope is not None and scope.doc.ramp == RAMP

        # fixed node ids: random ones left stage 1 empty in ~1.5% of runs (0.9 ** 40)
        ids = [
            crypto.SigningKey.from_seed(hashlib.sha256(b"ramp-node %d" % i).digest()).keyid
            for i in range(NODES)
        ]
        for i, node in enumerate(ids):  # each from its own /24: no subnet cap in the way
            assert isinstance(
                replica.admit(node, None, f"10.{i // 250}.{i % 250}.1:4000"),
                admission.Admitted,
            )
            _status(replica, node)

        def members(fraction: float) -> set[str]:
            return {n for n in ids if gates.in_fraction(SEED, n, fraction)}

        stage1, stage2 = members(0.1), members(0.4)
        assert 1 <= len(stage1) < len(stage2) < NODES  # the seed spreads them as a ramp should

        def ask_all(waiting: set[str]) -> dict[str, tuple[bool, str, str, bytes]]:
            for node in ids:
                _status(replica, node)  # fresh estimates at every step
            return {node: _ask(replica, clocks, node, 1) for node in sorted(waiting)}

        # stage 1 (10%): exactly its nodes are granted; they move and rejoin
        waiting = set(ids)
        answers = ask_all(waiting)
        assert {n for n, a in answers.items() if a[0]} == stage1
        assert {a[2] for n, a in answers.items() if not a[0]} == {"outside-fraction"}
        for node in stage1:
            replica.on_rejoined(node, proto.RejoinedReport(artifact=A, nonce=answers[node][3]))
        waiting -= stage1

        # stage 2 (40%, +60 s): the ramp widens by exactly the new nodes ...
        clocks.offset = 60.0
        answers = ask_all(waiting)
        widened = {n for n, a in answers.items() if a[0]}
        assert widened == stage2 - stage1
        # ... whose probations fail: the breaker pauses the artifact
        paused = [
            replica.on_failed(
                node,
                proto.FailedReport(
                    artifact=A, counter=2, reason="health check failed", nonce=answers[node][3]
                ),
            )
            for node in sorted(widened)
        ]
        assert paused[-1] is True
        threshold = max(2, -(-len(stage2) * 5 // 100))  # 2 nodes or 5% of those that moved
        assert paused.index(True) == threshold - 1  # it tripped at the threshold, not before
        breaker = replica.breakers.breakers[A]
        assert breaker.paused and breaker.scope_serial == 1
        waiting -= widened

        # stage 3 (everyone, +120 s): gate 2 admits every waiting node, gate 3 none
        clocks.offset = 120.0
        now = int(clocks.wall())
        assert gates.fraction_in_force(scope.doc, now) == 1.0
        assert all(gates.in_scope(n, A, scope=scope.doc, now=now).ok for n in waiting)
        answers = ask_all(waiting)
        assert not any(a[0] for a in answers.values()), "the ramp widened past the breaker"
        assert {(a[1], a[2]) for a in answers.values()} == {(GATE_BREAKER, "paused")}
        status = replica.status()["artifacts"][A]
        assert status["paused"] and "circuit breaker" in status["paused_reason"]

        # still paused later in the same scope: time alone never resumes it
        clocks.offset = 600.0
        assert not any(a[0] for a in ask_all(waiting).values())

        # a newer operator scope (serial 2: everyone) resumes; the rest are granted
        code, answer = replica.publish(_signed_scope(net, 2, int(clocks.wall()), kind="everyone"))
        assert code == 200, answer
        assert not replica.breakers.breakers[A].paused
        resumed = {n: _ask(replica, clocks, n, 2) for n in sorted(waiting)}
        assert all(a[0] for a in resumed.values()), {n: a[1:3] for n, a in resumed.items()}
    finally:
        replica.store.close()
