"""P7 item 7: a replica catches up with the others, and status says where they disagree."""

from __future__ import annotations

import http.server as httpserver
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator.catchup import CatchUp, CatchUpConfig, PeerView, documents_answer
from coordinator.cli import render_status
from coordinator.service import Replica, ServiceConfig
from p2pupdate.core import timing

from .service_helpers import Network, ReplicaProcesses, artifact_of, http

DATA = b"new build" * 200
SHA = artifact_of(DATA)
BOUND = 15.0  # seconds: a fetch at start, or the next jittered one (interval 2 s) and backoff


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _publish(url: str, *documents: bytes) -> None:
    for doc in documents:
        code, answer = http("POST", f"{url}/v1/publish", doc)
        assert code == 200, answer


def _status(url: str) -> dict[str, Any]:
    code, st = http("GET", f"{url}/status")
    assert code == 200
    return st  # type: ignore[no-any-return]


def _wait_for(url: str, what: str, check: Any) -> tuple[dict[str, Any], float]:
    """Poll ``url``'s status until ``check(status)``; the status and the seconds it took."""
    start = time.monotonic()
    while True:
        st = _status(url)
        if check(st):
            return st, time.monotonic() - start
        if time.monotonic() - start > BOUND:
            raise AssertionError(f"{url}: not {what} within {BOUND} s: {st.get('replicas')}")
        time.sleep(0.1)


def test_a_restarted_replica_catches_up_and_status_shows_who_disagrees(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net", replicas=3, quorum=2)
    ports = [_free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]

    def start(i: int, *, follow: bool = True) -> Any:
        peers = [a for u in urls if u != urls[i - 1] for a in ("--peer", u)] if follow else []
        return replicas.start(net, i, *peers, "--peer-interval", "2s", port=ports[i - 1])

    procs = [start(i) for i in (1, 2, 3)]
    first = (net.release(DATA, "v2", 2), net.allowlist(1, [SHA]), net.scope(SHA, serial=1))
    for url in urls:
        _publish(url, *first)
    procs[2].kill()
    _publish(urls[0], net.scope(SHA, serial=2))
    _publish(urls[1], net.scope(SHA, serial=2))

    # replica 3 is down: replica 1 says so, in the JSON and in the table
    st, _ = _wait_for(
        urls[0],
        "showing replica 3 down and replica 2 agreeing",
        lambda s: (
            s["replicas"][urls[2]]["state"] == "down"
            and s["replicas"][urls[1]]["state"] == "agrees"
        ),
    )
    assert "unreachable" in st["replicas"][urls[2]]["error"]
    assert f"{urls[2]}: DOWN: unreachable" in render_status(urls[0], st)
    _code, metrics = http("GET", f"{urls[0]}/metrics")
    assert b'p2pupdate_coordinator_peer_replicas{state="down"} 1.0' in metrics
    assert any(urls[2] in w for w in st["warnings"])

    # replica 3 back, but following nobody: it is behind, and replica 1 shows how
    behind = start(3, follow=False)
    st, _ = _wait_for(
        urls[0], "showing replica 3 behind", lambda s: s["replicas"][urls[2]]["state"] == "differs"
    )
    assert st["replicas"][urls[2]]["differs"] == {"scope": {"here": 2, "there": 1}}
    assert f"peer replica 3 {urls[2]}: DIFFERS: scope here 2, there 1" in render_status(urls[0], st)
    assert _status(urls[2])["documents"]["scope"]["serial"] == 1
    behind.kill()

    # replica 3 restarted following the others: it serves the new scope within the bound
    again = start(3)
    _st3, took = _wait_for(
        urls[2], "serving scope 2", lambda s: (s["documents"]["scope"] or {}).get("serial") == 2
    )
    print(f"replica 3 served scope serial 2 {took:.2f} s after its restart")
    assert took < BOUND
    assert "caught up from replica" in again.log.read_text()
    st1, _ = _wait_for(
        urls[0], "seeing replica 3 agree", lambda s: s["replicas"][urls[2]]["state"] == "agrees"
    )
    assert st1["warnings"] == []
    for p in (*procs[:2], again):
        assert "Traceback" not in p.log.read_text()


def test_an_older_document_from_a_replica_behind_is_refused_by_the_floors(
    tmp_path: Path,
) -> None:
    """Catching up is a publish: a scope below the one held is refused, never installed."""
    net = Network(tmp_path / "net")
    older, newer = net.scope(SHA, serial=1), net.scope(SHA, serial=2)
    replica = Replica(ServiceConfig(network_dir=net.dir, first_start=True))
    try:
        assert replica.publish(newer)[0] == 200
        kind, status, answer = replica.documents.catch_up(older) or ("", 0, {})
        assert (kind, status, answer["error"]) == ("scope", 400, "rollback")
        assert replica.scope is not None and replica.scope.doc.serial == 2
        assert replica.documents.catch_up(newer) is None  # held already: not published again
    finally:
        replica.store.close()


class _Garbage(httpserver.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>not a replica</html>"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def garbage_url() -> Iterator[str]:
    server = httpserver.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_peer_that_answers_garbage_is_one_line_and_backs_off(
    tmp_path: Path, garbage_url: str
) -> None:
    net = Network(tmp_path / "net")
    replica = Replica(ServiceConfig(network_dir=net.dir, first_start=True))
    lines: list[str] = []
    config = CatchUpConfig(interval=60.0, retry_base=1.0)
    catchup = CatchUp(
        documents=replica.documents,
        peers=[garbage_url],
        index=1,
        keyid=replica.keyid,
        wall=time.time,
        rng=random.Random(7),
        config=config,
        log=lines.append,
    )
    peer: PeerView = catchup.peers[garbage_url]
    try:
        for n in range(1, 6):
            await catchup.check(peer)
            assert peer.failures == n
            d = timing.capped_exponential(1.0, 60.0, n - 1)
            assert d / 2 <= catchup.next_wait(peer) <= d
        assert len(lines) == 1, lines
        assert garbage_url in lines[0] and "not a replica's documents" in lines[0]
        view = catchup.view()[garbage_url]
        assert view["state"] == "down" and "not a replica's documents" in view["error"]
        peer.failures = 10**6  # however long it has failed: capped, and no overflow
        assert 30.0 <= catchup.next_wait(peer) <= 60.0
    finally:
        replica.store.close()


def test_a_replica_named_as_its_own_peer_is_not_followed(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    port = _free_port()
    me = f"http://127.0.0.1:{port}"
    rp = replicas.start(net, 1, "--peer", me, port=port)
    deadline = time.monotonic() + BOUND
    while "is this replica itself" not in rp.log.read_text():
        assert time.monotonic() < deadline, rp.log.read_text()
        time.sleep(0.1)
    assert _status(me)["replicas"] == {}


async def test_catchup_runs_under_trio(tmp_path: Path) -> None:
    """``run`` asks each peer at once (nothing to wait for first)."""
    net = Network(tmp_path / "net")
    replica = Replica(ServiceConfig(network_dir=net.dir, first_start=True))
    asked: list[str] = []

    def fetch(url: str, _timeout: float) -> bytes:
        asked.append(url)
        return b""

    catchup = CatchUp(
        documents=replica.documents,
        peers=["http://a", "http://b"],
        index=1,
        keyid=replica.keyid,
        wall=time.time,
        rng=random.Random(1),
        fetch=fetch,
    )
    try:
        with trio.move_on_after(0.5):
            await catchup.run()
        assert sorted(set(asked)) == ["http://a", "http://b"]
    finally:
        replica.store.close()


def test_a_replica_emptied_by_damage_gets_its_documents_back_from_a_peer(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """Items 6 and 7 together: the database is quarantined, the replica starts empty and
    says so, and serves the documents again as soon as it has asked its peer."""
    net = Network(tmp_path / "net", replicas=2, quorum=1)
    ports = [_free_port() for _ in range(2)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    peer = replicas.start(net, 1, port=ports[0])
    second = replicas.start(net, 2, port=ports[1])
    docs = (net.release(DATA, "v2", 2), net.allowlist(1, [SHA]), net.scope(SHA, serial=3))
    _publish(peer.url, *docs)
    _publish(second.url, *docs)
    second.kill()
    with (net.dir / "replica-2" / "state.sqlite").open("r+b") as f:
        f.write(b"\x00" * 100)  # the header
    again = replicas.start(net, 2, "--peer", urls[0], port=ports[1])
    st, took = _wait_for(
        urls[1],
        "serving scope 3 again",
        lambda s: (s["documents"]["scope"] or {}).get("serial") == 3,
    )
    print(f"emptied replica served its scope again {took:.2f} s after its start")
    assert st["documents"]["allowlist"]["version"] == 1
    assert [r["artifact"] for r in st["documents"]["releases"]] == [SHA]
    assert any("state damaged" in w and "started empty" in w for w in st["warnings"])
    assert st["replicas"][urls[0]]["state"] == "agrees"
    assert "Traceback" not in again.log.read_text()


async def test_a_replica_of_another_network_is_not_taken_for_a_peer(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    replica = Replica(ServiceConfig(network_dir=net.dir, first_start=True))
    lines: list[str] = []
    stranger = "ab" * 32
    catchup = CatchUp(
        documents=replica.documents,
        peers=["http://other"],
        index=1,
        keyid=replica.keyid,
        wall=time.time,
        rng=random.Random(1),
        log=lines.append,
        fetch=lambda _url, _timeout: documents_answer(1, stranger, [net.scope(SHA, serial=9)]),
    )
    try:
        await catchup.check(catchup.peers["http://other"])
        assert len(lines) == 1 and "not a replica of this root" in lines[0], lines
        assert replica.scope is None  # nothing taken from it
    finally:
        replica.store.close()
