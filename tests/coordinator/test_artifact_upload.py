"""P10 item 5: an artifact upload streams to disk, each chunk checked as it completes.

The writer (``Documents.begin_upload``) is tried in-process on a real replica's state dir;
one real ``p2pupdate-coordinator serve`` proves that a 64 MiB upload costs the process a
few MiB, not the artifact's size (its peak RSS, ``VmHWM``), and that a bad chunk is
refused before the rest of the body is sent.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.errors import StateUnwritable
from coordinator.publishing import ArtifactRefused, ArtifactUpload
from coordinator.service import Replica, ServiceConfig
from p2pupdate.core import documents as docs
from p2pupdate.core.swarm.chunks import Chunk, ChunkMap

from .service_helpers import Network, ReplicaProcesses, artifact_of, http
from .test_abuse_limits import _answer, _connect

DATA = os.urandom(5000)  # chunks of 1024 (``Network.release``), the last one 904 bytes
SHA = artifact_of(DATA)


def _replica(tmp_path: Path) -> tuple[Replica, Path]:
    net = Network(tmp_path / "net")
    replica = Replica(ServiceConfig(network_dir=net.dir, replica=1, first_start=True))
    assert replica.publish(net.release(DATA, "v2", 2))[0] == 200
    return replica, net.dir / "replica-1" / "artifacts"


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_a_good_upload_lands_only_when_finished(tmp_path: Path) -> None:
    replica, artifacts = _replica(tmp_path)
    try:
        upload = replica.documents.begin_upload(SHA)
        for piece in _pieces(DATA, 777):  # pieces that straddle the chunks' edges
            upload.feed(piece)
        assert [p.name for p in artifacts.iterdir()] == [upload.staged.tmp.name]  # not yet there
        assert upload.finish() == len(DATA)
        assert [p.name for p in artifacts.iterdir()] == [SHA]
        assert (artifacts / SHA).read_bytes() == DATA
        # the in-memory wrapper is the same writer
        assert replica.put_artifact(SHA, DATA) == (
            200,
            {"ok": True, "artifact": SHA, "length": 5000},
        )
    finally:
        replica.store.close()


def test_a_bad_chunk_is_refused_as_it_completes_and_nothing_is_stored(tmp_path: Path) -> None:
    replica, artifacts = _replica(tmp_path)
    try:
        assert replica.put_artifact(SHA, DATA)[0] == 200
        stored = (artifacts / SHA).stat()
        bad = bytearray(DATA)
        bad[2 * 1024 + 7] ^= 1  # chunk 2
        upload = replica.documents.begin_upload(SHA)
        upload.feed(bytes(bad[: 3 * 1024 - 1]))  # chunk 2 not complete yet: not judged
        with pytest.raises(ArtifactRefused) as refused:
            upload.feed(bytes(bad[3 * 1024 - 1 : 3 * 1024]))
        assert (refused.value.rule, refused.value.chunk) == ("artifact-mismatch", 2)
        assert "chunk 2 does not match the release record" in str(refused.value)
        assert [p.name for p in artifacts.iterdir()] == [SHA]  # the temp file is gone
        after = (artifacts / SHA).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stored.st_ino, stored.st_mtime_ns)
        assert (artifacts / SHA).read_bytes() == DATA
        code, answer = replica.put_artifact(SHA, bytes(bad))
        assert (code, answer["error"]) == (400, "artifact-mismatch"), answer
        assert "chunk 2" in answer["reason"]
        code, answer = replica.put_artifact(artifact_of(b"other"), DATA)
        assert (code, answer["error"]) == (400, "no-release-record")
    finally:
        replica.store.close()


def test_a_cut_or_short_upload_leaves_no_file(tmp_path: Path) -> None:
    replica, artifacts = _replica(tmp_path)
    try:
        upload = replica.documents.begin_upload(SHA)
        upload.feed(DATA[:3000])
        upload.abort()  # the connection was cut
        upload.abort()
        assert list(artifacts.iterdir()) == []
        short = pytest.raises(ArtifactRefused, match="4999 bytes, the release says 5000")
        with short, replica.documents.begin_upload(SHA) as upload:
            upload.feed(DATA[:-1])
            upload.finish()
        long = pytest.raises(ArtifactRefused, match="more than the 5000 bytes")
        with long, replica.documents.begin_upload(SHA) as upload:
            upload.feed(DATA + b"x")
        with pytest.raises(KeyboardInterrupt), replica.documents.begin_upload(SHA) as upload:
            upload.feed(DATA)
            raise KeyboardInterrupt
        assert list(artifacts.iterdir()) == []
        artifacts.rmdir()  # the disk's fault, not the uploader's
        with pytest.raises(StateUnwritable, match="No such file"):
            replica.documents.begin_upload(SHA)
    finally:
        replica.store.close()


def test_chunks_of_other_sizes_are_cut_where_the_map_says(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    cuts = [(0, 100), (100, 5000), (5100, 1), (5101, 4899)]
    chunk_map = ChunkMap(
        artifact=artifact_of(data),
        length=len(data),
        chunks=tuple(
            Chunk(index=i, offset=o, length=n, digest=hashlib.sha256(data[o : o + n]).digest())
            for i, (o, n) in enumerate(cuts)
        ),
    )
    upload = ArtifactUpload(chunk_map, tmp_path / chunk_map.artifact)
    for piece in _pieces(data, 3000):
        upload.feed(piece)
    upload.finish()
    assert (tmp_path / chunk_map.artifact).read_bytes() == data
    bad = bytearray(data)
    bad[5100] ^= 1  # the one-byte chunk 2
    upload = ArtifactUpload(chunk_map, tmp_path / "again")
    with pytest.raises(ArtifactRefused) as refused:
        upload.feed(bytes(bad[:5101]))
    assert refused.value.chunk == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [chunk_map.artifact]


def _wait_for(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not done():
        assert time.monotonic() < deadline, f"no {what} in 5 s"
        time.sleep(0.02)


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_64_mib_upload_streams_in_bounded_memory(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net)
    data = os.urandom(64 << 20) + os.urandom(12345)  # a short last chunk
    now = int(time.time())
    release = docs.Release.for_bytes(
        data, name="big", counter=3, chunk_size=1 << 20, issued=now, expires=now + 86400
    )
    sha = release.artifact
    assert (
        http("POST", f"{rp.url}/v1/publish", release.sign([net.key("release")]).to_wire())[0] == 200
    )
    before = _peak_rss(rp.proc.pid)
    assert http("PUT", f"{rp.url}/v1/artifacts/{sha}", data) == (
        200,
        {"ok": True, "artifact": sha, "length": len(data)},
    )
    grew = _peak_rss(rp.proc.pid) - before
    assert grew < 16 << 20, f"peak RSS grew by {grew >> 20} MiB for a 64 MiB upload"
    artifacts = net.dir / "replica-1" / "artifacts"
    with (artifacts / sha).open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == sha

    # chunk 3 wrong: the upload is dropped (its temp file gone) while 60 MiB are unsent;
    # the rest is read and dropped, then the 400 names the chunk (urllib reads it then)
    bad = bytearray(data)
    bad[(3 << 20) + 5] ^= 1
    s = _connect(rp.url)
    s.sendall(
        f"PUT /v1/artifacts/{sha} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n"
        "connection: close\r\n\r\n".encode()
    )
    _wait_for(lambda: len(list(artifacts.iterdir())) == 2, "the upload's temp file")
    s.sendall(bad[: 4 << 20])
    _wait_for(lambda: [p.name for p in artifacts.iterdir()] == [sha], "the refusal")
    s.sendall(bad[4 << 20 :])
    answer = _answer(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"artifact-mismatch" in answer and b"chunk 3 does not match" in answer, answer
    assert _peak_rss(rp.proc.pid) - before < 16 << 20

    # cut off halfway: the temp file goes with the connection
    s = _connect(rp.url)
    s.sendall(
        f"PUT /v1/artifacts/{sha} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n"
        "\r\n".encode()
        + data[: 5 << 19]
    )
    s.close()
    _wait_for(
        lambda: http("GET", f"{rp.url}/status")[1]["server"]["protocol_errors"] == 1,
        "the cut upload noticed",
    )
    assert [p.name for p in artifacts.iterdir()] == [sha]
    with (artifacts / sha).open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == sha
