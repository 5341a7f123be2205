"""Chunks leave the origin zstd-compressed when the node asks for it and they shrink:
real HTTP against an in-process replica on a real socket, and the node's real fetch."""

from __future__ import annotations

import http.server as httpd
import os
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import zstandard

from coordinator.origin import NODE_HEADER, OriginConfig, WireCache, accepts
from p2pupdate.core import crypto
from p2pupdate.core import documents as docs
from p2pupdate.core.swarm import packing
from p2pupdate.core.swarm.chunks import ChunkMap
from p2pupdate.core.trust import TrustStore
from p2pupdate.daemon import replica as rep
from p2pupdate.daemon.chunkstore import ChunkStore
from p2pupdate.daemon.replica import QuorumClient
from tests.coordinator.service_helpers import Network, artifact_of, http, in_process

CHUNKS = 160
#: Half source code (shrinks), half noise (does not): like a build's code and its wheels.
_CODE = b"".join(
    b"def handler_%d(request):\n    return respond(request, %d)\n" % (i, i) for i in range(3000)
)
DATA = _CODE[: 80 * 1024] + random.Random(7).randbytes(80 * 1024 - 300)
ART = artifact_of(DATA)
NODE = "ab" * 16


def _publish(net: Network, url: str) -> bytes:
    release = net.release(DATA, "v2", 2)
    for doc in (release, net.allowlist(1, [ART])):
        code, answer = http("POST", f"{url}/v1/publish", doc)
        assert code == 200, answer
    assert http("PUT", f"{url}/v1/artifacts/{ART}", DATA)[0] == 200
    return release


def _chunk_map(net: Network, release: bytes) -> ChunkMap:
    now = int(time.time())
    rel = TrustStore.from_root(net.root_bytes, now).verify(docs.Release, release, now)
    return ChunkMap.of_release(rel.doc)


def _get(url: str, *, zstd: bool) -> tuple[bytes, str | None]:
    headers = {NODE_HEADER: NODE, **({"Accept-Encoding": "gzip, zstd"} if zstd else {})}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return r.read(), r.headers.get("Content-Encoding")


async def test_a_chunk_goes_compressed_only_when_asked_and_smaller(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net, origin=OriginConfig(repeat_window=0.0)) as (replica, url):
        release = await trio.to_thread.run_sync(_publish, net, url)
        cmap = _chunk_map(net, release)
        code, noise = cmap.chunks[3], cmap.chunks[120]
        base = f"{url}/v1/artifacts/{ART}/chunks"
        raw, enc = await trio.to_thread.run_sync(lambda: _get(f"{base}/3", zstd=False))
        assert enc is None and raw == DATA[code.offset : code.offset + code.length]
        frame, enc = await trio.to_thread.run_sync(lambda: _get(f"{base}/3", zstd=True))
        assert enc == "zstd" and len(frame) < code.length // 2
        assert packing.decompress(frame, code.length) == raw
        again, _ = await trio.to_thread.run_sync(lambda: _get(f"{base}/3", zstd=True))
        assert again == frame and replica.origin.wire.get(ART, 3) == (True, frame)
        body, enc = await trio.to_thread.run_sync(lambda: _get(f"{base}/120", zstd=True))
        assert enc is None and body == DATA[noise.offset : noise.offset + noise.length]
        assert replica.origin.wire.get(ART, 120) == (True, None)  # remembered: not again
        served = replica.status()["origin"]["artifacts"][ART]
        assert served["bytes"] == code.length + 2 * len(frame) + noise.length  # as sent


async def test_the_nodes_fetch_moves_fewer_bytes_and_stores_the_raw_artifact(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net")
    async with in_process(net, origin=OriginConfig(repeat_window=0.0)) as (replica, url):
        release = await trio.to_thread.run_sync(_publish, net, url)
        cmap = _chunk_map(net, release)
        store = ChunkStore(tmp_path / "store")
        store.open(cmap)
        trust = net.trust()
        client = QuorumClient(
            [url], crypto.SigningKey.from_seed(os.urandom(32)), lambda: trust,
            rng=random.Random(1),
        )  # fmt: skip
        assert await client.fetch_artifact(store, cmap) == cmap.count
        assert store.path(ART).read_bytes() == DATA
        sent = replica.status()["origin"]["artifacts"][ART]["bytes"]
        # the code half shrinks many times, the noise half not at all
        assert sent < 0.6 * len(DATA)


class _Evil(httpd.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Encoding", "zstd")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def evil() -> Iterator[tuple[str, type[_Evil]]]:
    handler = type("Handler", (_Evil,), {})
    server = httpd.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize(
    "body",
    [
        zstandard.ZstdCompressor().compress(bytes(64 * 1024 * 1024)),  # a bomb
        zstandard.ZstdCompressor().compress(b"a" * 999),  # one byte short
        b"\x28\xb5\x2f\xfd garbage",
    ],
    ids=["bomb", "short", "garbage"],
)
def test_a_bad_frame_is_the_replicas_fault(evil: tuple[str, type[_Evil]], body: bytes) -> None:
    url, handler = evil
    handler.body = body
    with pytest.raises(rep.BadChunk):
        rep.get_chunk(url, "00" * 32, 0, NODE, 1000)


def test_accept_encoding_is_read_strictly() -> None:
    assert accepts(b"zstd", "zstd")
    assert accepts(b"gzip, ZSTD;q=0.5", "zstd")
    assert not accepts(b"zstd;q=0", "zstd")
    assert not accepts(b"zstd;q=0.0", "zstd")
    assert not accepts(b"gzip, br", "zstd")
    assert not accepts(None, "zstd")
    assert not accepts(b"zstd," + b" " * 300, "zstd")


def test_wire_cache_is_bounded_in_bytes() -> None:
    cache = WireCache(max_bytes=100)
    cache.put("a", 0, b"x" * 60)
    cache.put("a", 1, None)
    cache.put("a", 2, b"y" * 60)  # evicts chunk 0, the least recently used
    assert cache.get("a", 0) == (False, None)
    assert cache.get("a", 1) == (True, None)
    assert cache.get("a", 2) == (True, b"y" * 60)
    assert cache.bytes == 60
    cache.put("a", 3, b"z" * 101)  # larger than the cache: not kept
    assert cache.get("a", 3) == (False, None) and cache.bytes == 60
