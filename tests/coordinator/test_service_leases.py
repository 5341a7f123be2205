"""Leases with real processes: a dead node frees its lease at TTL; a quorum of replicas,
one of them killed mid-test, never lets more tokens be alive than the global budget."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from p2pupdate.core import departure

from .service_helpers import (
    REPO,
    LightNode,
    Network,
    ReplicaProcesses,
    ahttp,
    artifact_of,
    in_process,
)

DATA = os.urandom(4000)
TO = artifact_of(DATA)


async def publish_all(net: Network, urls: list[str]) -> None:
    for url in urls:
        for data in (net.release(DATA, "v2", 2), net.allowlist(1, [TO]), net.scope(TO, serial=1)):
            code, answer = await ahttp("POST", f"{url}/v1/publish", data)
            assert code == 200, answer


async def test_a_node_killed_holding_a_lease_frees_it_at_ttl(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    # Long enough that the holder's kill and the second node's connect fit inside it on a
    # loaded machine (at 3 s the lease had sometimes lapsed before the first ask).
    ttl = 8
    # max_skew 1: the holder and the replica read whole seconds of one wall clock, so a
    # token can look issued 1 s "in the future" (cc27 saw clock-skew at max_skew 0).
    async with in_process(net, token_ttl=ttl, max_skew=1, max_concurrent=1, min_serving=0) as (
        replica,
        url,
    ):
        await publish_all(net, [url])
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.coordinator.holder",
                url,
                str(net.dir / "root.msgpack"),
                TO,
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            with trio.fail_after(30):
                line = await trio.to_thread.run_sync(proc.stdout.readline)
            holder, verdict = line.split()
            assert verdict == "GRANTED", line
            granted_at = trio.current_time()
            os.killpg(proc.pid, signal.SIGKILL)  # dies holding the lease: no rejoin, no return
            proc.wait(timeout=10)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

        other = LightNode(net, [url])
        async with trio.open_nursery() as nursery:
            await other.start(nursery)
            await other.status()
            refused = await other.ask(TO)
            assert (refused.gate, refused.reason) == ("capacity", "lease-budget")
            st = replica.status()
            assert [lease["node"] for lease in st["pools"]["default"]["leases"]] == [holder]
            # no stuck lock: the lease lapses at TTL and the capacity is free again
            while True:
                outcome = await other.ask(TO)
                if outcome.token is not None:
                    break
                assert outcome.reason == "lease-budget", outcome
                assert trio.current_time() - granted_at < ttl + 2.0, "lease outlived its TTL"
                await trio.sleep(0.1)
            freed_after = trio.current_time() - granted_at
            assert ttl - 0.5 <= freed_after <= ttl + 2.0, freed_after
            nursery.cancel_scope.cancel()


async def test_quorum_never_exceeds_the_global_budget_when_a_replica_dies(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """3 replicas, q = 2, max_concurrent = 4, 50 nodes asking at once; replica 3 is
    SIGKILLed mid-test and restarted (it warms up).  Every token is checked (two replica
    signatures over the node's own payload) and its life is the node's time away: from
    when it held the token until it sent its rejoin (or the token expired).  That span lies
    inside the lease every one of its signing replicas holds for it (granted before the
    answer left, freed after the rejoin arrived), so no more than the budget may overlap.
    (Measuring from the ask's send to the rejoin's acknowledgement counted round trips as
    life: under load it saw 5 where the replicas held 3.)"""
    net = Network(tmp_path / "net", replicas=3, quorum=2)
    ttl = 4
    args = (
        "--lease-ttl",
        str(ttl),
        "--max-skew",
        "1",
        "--max-concurrent",
        "4",
        "--min-serving",
        "0",
    )
    ports = [_free_port() for _ in range(3)]
    procs = [replicas.start(net, i + 1, *args, port=ports[i]) for i in range(3)]
    urls = [p.url for p in procs]
    await publish_all(net, urls)
    nodes = [LightNode(net, urls) for _ in range(50)]
    lives: list[tuple[float, float, str]] = []  # (start, end, node), wall clock
    kill_at = 2.5
    run_for = 11.0
    start = time.time()
    rng = random.Random(7)

    async def node_loop(n: LightNode, index: int) -> None:
        await n.status()
        while time.time() - start < run_for:
            outcome = await n.ask(TO)
            held = time.time()
            if outcome.token is None:
                wait = min(outcome.retry_after or 1.0, 1.0)
                await trio.sleep(wait * rng.uniform(0.5, 1.5))
                continue
            tok = departure.verify_departure(
                n.store,
                outcome.token,
                departure.Binding(
                    node=n.node,
                    pool="default",
                    from_artifact="0" * 64,
                    to_artifact=TO,
                    allowlist_version=1,
                    scope_serial=1,
                ),
                now_wall=time.time(),
            )
            signers = {k for k, _s in _sigs(outcome.token)}
            assert len(signers) >= 2
            if index % 10 == 0:  # these die holding their token: it lives until expiry
                lives.append((held, tok.expires + 1.0, n.node))
                return
            await trio.sleep(rng.uniform(0.1, 0.6))
            lives.append((held, time.time(), n.node))
            await n.rejoined(TO, outcome.token)
            return

    async def chaos() -> None:
        await trio.sleep(kill_at)
        procs[2].kill()
        await trio.sleep(1.0)
        procs[2] = replicas.start(net, 3, *args, port=ports[2], first=False)
        code, st = await ahttp("GET", f"{procs[2].url}/status")
        assert code == 200 and st["replica"]["warming_up_for"] > 0

    async with trio.open_nursery() as nursery:
        for n in nodes:
            await n.start(nursery)
        async with trio.open_nursery() as inner:
            inner.start_soon(chaos)
            for i, n in enumerate(nodes):
                inner.start_soon(node_loop, n, i)
        nursery.cancel_scope.cancel()

    assert len(lives) >= 12, f"only {len(lives)} tokens in {run_for} s"
    after_kill = [s for s, _e, _n in lives if s > start + kill_at]
    assert after_kill, "no token was granted after the replica died"
    peak = _max_overlap(lives)
    print(f"quorum test: {len(lives)} tokens, {len(after_kill)} after the kill, peak {peak}")
    assert peak <= 4, f"{peak} tokens alive at once"


def _sigs(token: bytes) -> tuple[tuple[str, bytes], ...]:
    from p2pupdate.core.crypto import Envelope

    return Envelope.from_wire(token).signatures


def _max_overlap(lives: list[tuple[float, float, str]]) -> int:
    events = sorted([(s, 1) for s, _e, _n in lives] + [(e, -1) for _s, e, _n in lives])
    alive = peak = 0
    for _t, delta in events:
        alive += delta
        peak = max(peak, alive)
    return peak


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
