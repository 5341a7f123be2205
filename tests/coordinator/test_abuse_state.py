"""P10's bounded state: what a stranger's asks and downloads may cost a replica.

* asks naming random artifacts do not grow ``/status`` (per-artifact rows only for the
  artifacts a document names, the rest summed under ``other_artifacts``);
* refused asks do not add one audit row each (``asks.RefusalAudit``: per node, artifact,
  gate and reason per minute, the repeats as one row), and nothing is lost: the counts
  come back whole after a restart;
* a chunk GET is read in a worker thread: a slow disk never stalls the event loop.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import trio

from coordinator.asks import REFUSE_REPEATED, repeated_count
from coordinator.statefiles import DB_FILE
from coordinator.store import AuditRow, Store

from .service_helpers import (
    LightNode,
    Network,
    ReplicaProcesses,
    ahttp,
    artifact_of,
    http,
    in_process,
)

A_BYTES = os.urandom(5000)
A = artifact_of(A_BYTES)


def _publish(net: Network, url: str) -> None:
    for doc in (net.release(A_BYTES, "v2", 2), net.allowlist(1, [A]), net.scope(A, serial=1)):
        code, answer = http("POST", f"{url}/v1/publish", doc)
        assert code == 200, answer


def _audit(db: Path) -> list[AuditRow]:
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT time, event, node, pool, artifact, gate, reason, detail FROM audit"
        ).fetchall()
    keys = ("time", "event", "node", "pool", "artifact", "gate", "reason", "detail")
    return [AuditRow(**dict(zip(keys, r, strict=True))) for r in rows]


async def test_asks_for_random_artifacts_grow_neither_status_nor_the_audit_log(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net)
    _publish(net, rp.url)
    one = LightNode(net, [rp.url])
    many = [LightNode(net, [rp.url]) for _ in range(80)]  # more than MAX_REFUSAL_KEYS ids
    async with trio.open_nursery() as nursery:
        for n in (one, *many):
            await n.start(nursery)
        for _ in range(10):
            r = await one.ask(os.urandom(32).hex())
            assert (r.gate, r.reason) == ("allowlist", "not-allowlisted")
        before = len((await trio.to_thread.run_sync(_raw_status, rp.url))[1])
        for _ in range(290):
            await one.ask(os.urandom(32).hex())
        for n in many:
            await n.ask(os.urandom(32).hex())
        code, raw = await trio.to_thread.run_sync(_raw_status, rp.url)
        nursery.cancel_scope.cancel()
    status = json.loads(raw)
    assert code == 200
    assert status["refusals"] == {"allowlist/not-allowlisted": 380}
    assert list(status["artifacts"]) == [A]  # no row per made-up artifact
    assert status["other_artifacts"]["refusals"] == {"allowlist/not-allowlisted": 380}
    assert len(raw) - before < 200, (before, len(raw))  # the same keys, larger counts

    rp.proc.send_signal(signal.SIGTERM)  # a clean stop writes the open interval's repeats
    assert rp.proc.wait(timeout=10) == 0
    rows = [r for r in _audit(net.dir / "replica-1" / DB_FILE) if r.event.startswith("refuse")]
    full = [r for r in rows if r.event == "refuse"]
    repeated = [r for r in rows if r.event == REFUSE_REPEATED]
    assert len(full) + sum(repeated_count(r) for r in repeated) == 380  # nothing lost
    assert one.node in {r.node for r in full}
    # per wall-clock minute (the replica's interval; a slow run may span two): the first
    # 64 (node, gate, reason) keys and one for the rest, each with at most one repeats row
    minutes = {int(r.time // 60) for r in full}
    for minute in minutes:
        assert sum(1 for r in full if int(r.time // 60) == minute) <= 65
    assert len(repeated) <= 2 * len(minutes)
    if len(minutes) == 1:  # the usual run: exactly so
        assert len(full) == 65
        assert sorted(repeated_count(r) for r in repeated) == [16, 299]

    again = replicas.start(net, first=False)  # the counts come back whole
    code, status = http("GET", f"{again.url}/status")
    assert status["refusals"] == {"allowlist/not-allowlisted": 380}


def _raw_status(url: str) -> tuple[int, bytes]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/status", timeout=10) as resp:
        return resp.status, resp.read()


async def test_a_chunk_is_read_off_the_event_loop(tmp_path: Path) -> None:
    """A disk that stalls a chunk read (the fault injected: the read waits until the test
    lets it go) stalls that request only: ``/healthz`` is answered meanwhile."""
    net = Network(tmp_path / "net")
    async with in_process(net) as (replica, url):
        for doc in (net.release(A_BYTES, "v2", 2), net.allowlist(1, [A])):
            assert (await ahttp("POST", f"{url}/v1/publish", doc))[0] == 200
        assert (await ahttp("PUT", f"{url}/v1/artifacts/{A}", A_BYTES))[0] == 200
        real = replica.documents.origin_bytes
        reading, release = threading.Event(), threading.Event()
        threads: list[threading.Thread] = []
        stalled_at: list[float] = []

        def stalled(artifact: str, chunk: int | None) -> bytes | None:
            threads.append(threading.current_thread())
            stalled_at.append(time.monotonic())
            reading.set()
            release.wait(5)  # on the event loop, this would hold every other request
            return real(artifact, chunk)

        replica.documents.origin_bytes = stalled  # type: ignore[method-assign]
        got: list[tuple[int, object]] = []

        async def fetch() -> None:
            got.append(await ahttp("GET", f"{url}/v1/artifacts/{A}/chunks/2"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            await trio.to_thread.run_sync(reading.wait, 5)
            assert await ahttp("GET", f"{url}/healthz") == (200, b"ok\n")
            took = time.monotonic() - stalled_at[0]  # the test shares the server's loop
            release.set()
        assert took < 2.0, f"/healthz waited {took:.1f} s for the stalled chunk read"
        assert got == [(200, A_BYTES[2048:3072])]
        assert threads and threads[0] is not threading.main_thread()


def test_the_audit_table_keeps_only_the_newest_refusals_and_every_grant(tmp_path: Path) -> None:
    """The size cap: a flood of refusals from made-up ids (each its own row) keeps only the
    refusals among the newest ``max_refusal_rows`` audit rows; grants (the breaker's lease
    nonces are rebuilt from them) are never dropped."""
    store = Store(tmp_path / DB_FILE, max_refusal_rows=5)
    store.audit(AuditRow(time=1.0, event="grant", node="n-grant", pool="p", artifact=A))
    for batch in range(4):
        for i in range(10):
            node = f"stranger-{batch}-{i}"
            store.audit(AuditRow(time=2.0 + batch, event="refuse", node=node, pool="p", artifact=A))
        store.flush()
    assert [r.node for r in store.audit_rows("refuse")] == [f"stranger-3-{i}" for i in range(5, 10)]
    assert store.refusal_counts() == [(A, "", "", 5)]
    store.audit(AuditRow(time=9.0, event="grant", node="n-late", pool="p", artifact=A))
    store.audit(AuditRow(time=10.0, event="refuse-repeated", node="x", pool="p", artifact=A))
    store.flush()
    kept = [r.node for r in store.audit_rows() if r.event in ("refuse", "refuse-repeated")]
    assert kept == ["stranger-3-7", "stranger-3-8", "stranger-3-9", "x"]  # 4 + the grant
    assert [r.node for r in store.audit_rows("grant")] == ["n-grant", "n-late"]
