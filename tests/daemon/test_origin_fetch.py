"""A node's fetch from the origin, chunk by chunk into its store, against real replicas.

Real ``p2pupdate-coordinator serve`` processes (or an in-process replica on a real
socket, where the test needs a short downloader window), real HTTP, a real SIGKILL.
What the replica served is counted by the replica itself (``/status`` ``origin``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio

from coordinator.origin import NODE_HEADER, OriginConfig
from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.core.trust import TrustStore
from p2pupdate.daemon import replica as rep
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.daemon.replica import QuorumClient
from tests.coordinator.service_helpers import (
    REPO,
    Network,
    ReplicaProcesses,
    artifact_of,
    http,
    in_process,
    replicas,  # noqa: F401 - the fixture
)

CHUNKS = 160
DATA = random.Random(7).randbytes(CHUNKS * 1024 - 300)  # the last chunk is short
ART = artifact_of(DATA)

#: The fetching node, as its own process: prints one line per chunk it stored.
CHILD = """
import sys, time, trio
from pathlib import Path
from p2pupdate.core import crypto, documents as docs
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.core.trust import TrustStore
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.daemon.replica import QuorumClient

url, store_dir, root, release = sys.argv[1:5]
now = int(time.time())
trust = TrustStore.from_root(Path(root).read_bytes(), now)
rel = trust.verify(docs.Release, Path(release).read_bytes(), now).doc
cmap = ChunkMap.of_release(rel)

class Loud(ChunkStore):
    def put_chunk(self, artifact, index, data):
        ok = super().put_chunk(artifact, index, data)
        print(f"stored {index}", flush=True)
        return ok

store = Loud(Path(store_dir))
store.open(cmap)
client = QuorumClient([url], crypto.SigningKey.from_seed(bytes(32)), lambda: trust)
trio.run(client.fetch_artifact, store, cmap)
print("done", flush=True)
"""


def _publish(net: Network, url: str, tmp: Path) -> Path:
    release = net.release(DATA, "v2", 2)
    for doc in (release, net.allowlist(1, [ART])):
        code, answer = http("POST", f"{url}/v1/publish", doc)
        assert code == 200, answer
    assert http("PUT", f"{url}/v1/artifacts/{ART}", DATA)[0] == 200
    path = tmp / "release"
    path.write_bytes(release)
    return path


def _chunk_map(net: Network, release: Path) -> ChunkMap:
    now = int(time.time())
    rel = TrustStore.from_root(net.root_bytes, now).verify(docs.Release, release.read_bytes(), now)
    return ChunkMap.of_release(rel.doc)


def _origin(url: str) -> dict[str, int]:
    code, status = http("GET", f"{url}/status")
    assert code == 200
    entry: dict[str, int] = status["origin"]["artifacts"].get(
        ART, {"bytes": 0, "requests": 0, "refused": 0}
    )
    return entry


def _client(net: Network, urls: list[str], log: list[str]) -> QuorumClient:
    trust = net.trust()
    key = crypto.SigningKey.from_seed(os.urandom(32))
    return QuorumClient(urls, key, lambda: trust, log=log.append, rng=random.Random(1))


def test_a_download_killed_midway_resumes_with_only_the_missing_chunks(
    tmp_path: Path,
    replicas: ReplicaProcesses,  # noqa: F811
) -> None:
    net = Network(tmp_path / "net")
    url = replicas.start(net).url
    release = _publish(net, url, tmp_path)
    store_dir = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(store_dir), str(net.dir / "root.msgpack"), release],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert child.stdout is not None
    try:
        seen = 0
        while seen < CHUNKS // 3:
            line = child.stdout.readline()
            assert line.startswith("stored"), line
            seen += 1
        os.killpg(child.pid, signal.SIGKILL)  # mid-way, wherever it is
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    served_before = _origin(url)["requests"]
    assert CHUNKS // 3 <= served_before < CHUNKS, "the kill must land mid-way"

    cmap = _chunk_map(net, release)
    lines: list[str] = []
    store = ChunkStore(store_dir, log=lines.append)  # the node restarted
    held = store.open(cmap)
    # everything the replica sent was kept, but at most the chunk being written at the kill
    assert served_before - 1 <= len(held) <= served_before
    assert not store.path(ART).exists()

    fetched = trio.run(_client(net, [url], lines).fetch_artifact, store, cmap)
    assert fetched == CHUNKS - len(held)
    after = _origin(url)
    assert after["requests"] - served_before == fetched  # nothing verified fetched twice
    assert after["requests"] <= CHUNKS + 1
    assert store.path(ART).read_bytes() == DATA
    assert after["bytes"] >= len(DATA)


def test_a_chunk_corrupted_on_disk_is_fetched_again_after_restart(
    tmp_path: Path,
    replicas: ReplicaProcesses,  # noqa: F811
) -> None:
    net = Network(tmp_path / "net")
    url = replicas.start(net).url
    cmap = _chunk_map(net, _publish(net, url, tmp_path))
    store_dir = tmp_path / "store"
    lines: list[str] = []
    store = ChunkStore(store_dir, log=lines.append)
    store.open(cmap)
    assert trio.run(_client(net, [url], lines).fetch_artifact, store, cmap) == CHUNKS
    assert _origin(url)["requests"] == CHUNKS
    with store.path(ART).open("r+b") as f:  # bit rot in chunk 42
        f.seek(cmap.chunks[42].offset + 5)
        f.write(b"\x00\x01\x02")

    lines.clear()
    again = ChunkStore(store_dir, log=lines.append)
    assert again.open(cmap) == frozenset(range(CHUNKS)) - {42}
    assert [m for m in lines if "no longer match" in m] and "(42)" in lines[0]
    assert trio.run(_client(net, [url], lines).fetch_artifact, again, cmap) == 1
    assert _origin(url)["requests"] == CHUNKS + 1  # exactly the bad chunk, once
    assert again.path(ART).read_bytes() == DATA


def test_a_replica_serving_a_bad_chunk_is_skipped_for_the_next(
    tmp_path: Path,
    replicas: ReplicaProcesses,  # noqa: F811
) -> None:
    net = Network(tmp_path / "net", replicas=2, quorum=1)
    one, two = replicas.start(net, 1).url, replicas.start(net, 2).url
    release = _publish(net, one, tmp_path)
    _publish(net, two, tmp_path)
    # replica one's copy rots on its disk after it was checked in: it serves what it has
    stored = net.dir / "replica-1" / "artifacts" / ART
    raw = bytearray(stored.read_bytes())
    raw[3 * 1024 + 1] ^= 0xFF
    stored.write_bytes(bytes(raw))
    cmap = _chunk_map(net, release)
    lines: list[str] = []
    store = ChunkStore(tmp_path / "store", log=lines.append)
    store.open(cmap)
    trio.run(_client(net, [one, two], lines).fetch_artifact, store, cmap)
    assert store.path(ART).read_bytes() == DATA
    assert _origin(two)["requests"] >= 1


def _get(url: str, node: str) -> tuple[int, bytes, str | None]:
    request = urllib.request.Request(url, headers={NODE_HEADER: node})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read(), None
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read(), exc.headers.get("retry-after")


def test_serve_flag_caps_downloaders_and_answers_try_peers(
    tmp_path: Path,
    replicas: ReplicaProcesses,  # noqa: F811
) -> None:
    net = Network(tmp_path / "net")
    url = replicas.start(net, 1, "--origin-max-downloaders", "2").url
    _publish(net, url, tmp_path)
    chunk = f"{url}/v1/artifacts/{ART}/chunks/"
    assert _get(chunk + "0", "a" * 64)[0] == 200
    assert _get(chunk + "1", "b" * 64)[0] == 200
    assert _get(chunk + "0", "a" * 64)[0] == 200  # one already counted is never cut off
    code, body, after = _get(chunk + "2", "c" * 64)
    assert code == 503
    answer = json.loads(body)
    assert answer["error"] == "try-peers" and 1 <= answer["retry_after"] <= 5
    assert answer["why"] == "downloader-cap"
    assert after == str(answer["retry_after"])
    assert _get(f"{url}/v1/artifacts/{ART}", "d" * 64)[0] == 503  # the whole GET too
    code, body, after = _get(chunk + "0", "b" * 64)  # a's chunk 0, within the window
    assert code == 503 and json.loads(body) == {
        "error": "try-peers", "retry_after": 1, "why": "just-sent"
    }  # fmt: skip
    origin = http("GET", f"{url}/status")[1]["origin"]
    assert origin["max_downloaders"] == 2 and origin["repeat_window"] == 2
    assert origin["artifacts"][ART]["refused"] == 3
    assert origin["artifacts"][ART]["repeats_refused"] == 1
    assert origin["artifacts"][ART]["bytes"] == 3 * 1024
    code, metrics = http("GET", f"{url}/metrics")
    text = metrics.decode()
    assert f'p2pupdate_coordinator_origin_bytes_total{{artifact="{ART}"}} 3072.0' in text
    assert f'p2pupdate_coordinator_origin_refused_total{{artifact="{ART}"}} 3.0' in text
    assert "unknown" not in text.split("origin_bytes_total")[1][:200]


async def test_the_node_waits_out_try_peers_then_gets_the_artifact(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    cap_only = OriginConfig(max_downloaders=1, window=1.0, repeat_window=0.0)
    async with in_process(net, origin=cap_only) as (
        replica,
        url,
    ):
        release = await trio.to_thread.run_sync(_publish, net, url, tmp_path)
        chunk = f"{url}/v1/artifacts/{ART}/chunks/0"
        assert (await trio.to_thread.run_sync(_get, chunk, "e" * 64))[0] == 200  # takes the slot
        cmap = _chunk_map(net, release)
        lines: list[str] = []
        store = ChunkStore(tmp_path / "store", log=lines.append)
        store.open(cmap)
        started = trio.current_time()
        got = await _client(net, [url], lines).fetch_artifact(store, cmap)
        waited = trio.current_time() - started
        assert got == CHUNKS and store.path(ART).read_bytes() == DATA
        waits = [m for m in lines if "try-peers" in m]
        assert len(waits) == 1, lines  # one line per wait, and one wait was enough
        assert "waiting" in waits[0] and "downloader cap" in waits[0]
        assert waited >= 1.0  # the retry_after (never shortened by the jitter)
        origin = replica.status()["origin"]["artifacts"][ART]
        assert origin["refused"] == 1 and origin["requests"] == CHUNKS + 1


def test_try_peers_answers_parse_strictly() -> None:
    ok = rep._try_peers("u", b'{"error": "try-peers", "retry_after": 3}')
    assert ok == rep.TryPeers(base="u", retry_after=3.0)
    assert rep._try_peers("u", b'{"error": "try-peers", "retry_after": 1e9}') == rep.TryPeers(
        base="u", retry_after=rep.MAX_RETRY_AFTER
    )
    for body in (b"", b"[]", b'{"error": "x", "retry_after": 1}', b'{"error": "try-peers"}'):
        assert rep._try_peers("u", body) is None
    assert rep._try_peers("u", b'{"error": "try-peers", "retry_after": true}') is None
    assert NODE_HEADER == rep.ORIGIN_NODE_HEADER == proto.ORIGIN_NODE_HEADER  # one home


async def test_only_the_chunks_asked_for_come_from_the_origin(tmp_path: Path) -> None:
    """The swarm hands the origin fetch the chunks no reachable peer has: only those."""
    net = Network(tmp_path / "net")
    async with in_process(net) as (replica, url):
        release = await trio.to_thread.run_sync(_publish, net, url, tmp_path)
        cmap = _chunk_map(net, release)
        store = ChunkStore(tmp_path / "store")
        store.open(cmap)
        client = _client(net, [url], [])
        assert await client.fetch_artifact(store, cmap, chunks=[3, 150, 3]) == 2
        assert store.have(ART) == {3, 150}
        assert await client.fetch_artifact(store, cmap, chunks=[3]) == 0  # held: not again
        with pytest.raises(ValueError, match="not chunks"):
            await client.fetch_artifact(store, cmap, chunks=[CHUNKS])
        served = replica.status()["origin"]["artifacts"][ART]
        assert served["requests"] == 2
        assert served["bytes"] == cmap.chunks[3].length + cmap.chunks[150].length


async def test_a_replica_that_hangs_up_mid_chunk_is_skipped_for_the_next(tmp_path: Path) -> None:
    """A replica that promises a chunk and closes half-way (``IncompleteRead``, which is no
    ``OSError``) is one replica unavailable, not a crashed prefetch."""
    net = Network(tmp_path / "net")

    async def truncating(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n400\r\n"
        await stream.send_all(head + b"x" * 10)
        await stream.aclose()

    async with in_process(net) as (_replica, url), trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, truncating, 0, host="127.0.0.1")
        )
        liar = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        release = await trio.to_thread.run_sync(_publish, net, url, tmp_path)
        cmap = _chunk_map(net, release)
        store = ChunkStore(tmp_path / "store")
        store.open(cmap)
        assert await _client(net, [liar, url], []).fetch_artifact(store, cmap, chunks=[0]) == 1
        assert store.have(ART) == {0}
        nursery.cancel_scope.cancel()
