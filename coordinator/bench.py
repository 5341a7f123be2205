"""``p2pupdate-coordinator bench``: asks per second through a real replica on loopback.

A throwaway network (keys, root: :func:`coordinator.network.init_network`, as ``init``
makes one, in a temp dir) gets a release, an allowlist and an everyone-scope; a replica of
it runs as a child process (``serve --listen 127.0.0.1:0``), so server and client do not
share an interpreter (and a GIL).  ``C`` nodes, each with its own key, connect over the
real node channel (challenge, signed requests), report a status with a large aggregate
estimate, and then loop: propose a token and ask (timed), and -- granted -- report
"rejoined", which ends the lease, so the pool never holds more than ``C`` leases, as in a
real fleet.  The server's work per ask is the issue's floor and more: verify the signed
request, parse and check the proposed token, gates 1-3, sign the token, audit, answer.

The clients check a sample of the grants (each node's first: signature by the replica's
key over exactly the proposed payload) instead of all: a real node verifies every token
it uses, but that is the node's CPU, and here it would be taken from the server's core.

``sign_verify_floor_per_s`` is Ed25519 sign + verify pairs per second of one core on a
token-sized message, measured in this run before the asks start.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto, departure
from p2pupdate.core import documents as docs
from p2pupdate.net.replica_link import ReplicaLink

from .network import ROOT_FILE, SMALLEST, init_network

FLOOR_SECONDS = 1.0
#: The throwaway network's root lifetime (``init``'s default): a year.
NETWORK_LIFETIME = 365 * 86400


def sign_verify_floor(seconds: float = FLOOR_SECONDS) -> float:
    """Ed25519 sign + verify pairs per second (PyNaCl, one core)."""
    key = nacl.signing.SigningKey(os.urandom(32))
    verify = key.verify_key.verify
    message = crypto.signing_input("departure", os.urandom(300))
    count = 0
    start = time.perf_counter()
    while True:
        for _ in range(200):
            verify(message, key.sign(message).signature)
        count += 200
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def make_network(d: Path) -> tuple[list[bytes], str, str]:
    """A network in ``d`` with a release, allowlist and scope: (documents, from, to)."""
    now = int(time.time())
    init_network(d, SMALLEST, network="bench", expires=NETWORK_LIFETIME, now=now)
    root_bytes = (d / ROOT_FILE).read_bytes()
    root = docs.open_root(root_bytes).doc

    def key(role: str) -> crypto.SigningKey:
        return crypto.private_key_from_pem((d / "keys" / f"{role}-1.pem").read_bytes())

    data = os.urandom(4096)
    release = docs.Release.for_bytes(
        data, name="bench", counter=2, chunk_size=1024, issued=now, expires=now + 86400
    )
    allow = docs.Allowlist(
        version=1, issued=now, expires=now + 86400, artifacts=(release.artifact,)
    )
    scope = docs.Scope(
        serial=1, issued=now, expires=now + 86400, artifact=release.artifact, kind="everyone"
    )
    assert root.network == "bench"
    documents = [
        release.sign([key("release")]).to_wire(),
        allow.sign([key("coordinator")]).to_wire(),
        scope.sign([key("operator")]).to_wire(),
    ]
    return documents, "0" * 64, release.artifact


def start_server(d: Path, profile: str | None) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += [
        "-m",
        "coordinator.cli",
        "serve",
        "--dir",
        str(d),
        "--listen",
        "127.0.0.1:0",
        "--max-concurrent",
        "1000000",
        "--min-serving",
        "0",
        "--first-start",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"bench: the replica did not start: {line!r}")
    return proc, m.group(1)


def publish(url: str, documents: list[bytes]) -> None:
    for data in documents:
        req = urllib.request.Request(f"{url}/v1/publish", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            if resp.status != 200:
                raise RuntimeError(f"bench: publish failed: {resp.read()!r}")


async def drive(
    url: str, asks: int, concurrency: int, from_a: str, to_a: str, root_bytes: bytes
) -> dict[str, Any]:
    root = docs.open_root(root_bytes).doc
    coordinators = root.role_keys("coordinator")
    links = [
        ReplicaLink(
            url, crypto.SigningKey.from_seed(os.urandom(32)), replica_keys=lambda: coordinators
        )
        for _ in range(concurrency)
    ]
    latencies: list[float] = []
    granted = 0
    remaining = asks
    checked = 0

    async def node(link: ReplicaLink, ready: trio.Event, go: trio.Event) -> None:
        nonlocal remaining, granted, checked
        await link.connected.wait()
        estimate = proto.Estimate(capacity=1e12, load=0.0, serving=1_000_000, age=0.0)
        await link.send(
            proto.StatusReport(
                version="bench",
                artifact=from_a,
                state="serving",
                pool="bench",
                estimate=estimate,
                held=None,
                addrs=(),
            )
        )
        ready.set()
        await go.wait()
        first = True
        while remaining > 0:
            remaining -= 1
            token = departure.propose_token(
                departure.Binding(
                    node=link.node,
                    pool="bench",
                    from_artifact=from_a,
                    to_artifact=to_a,
                    allowlist_version=1,
                    scope_serial=1,
                ),
                ttl=link.ttl,
                now_wall=time.time(),
                nonce=os.urandom(proto.TOKEN_NONCE_LEN),
            )
            payload = token.to_payload()
            t0 = time.perf_counter()
            answer = await link.send(proto.AskRequest(token=payload, capacity=1.0, load=0.0))
            latencies.append(time.perf_counter() - t0)
            if not isinstance(answer, proto.AskGrant):
                continue
            granted += 1
            if first:
                first = False
                pub = pubs.get(answer.replica)
                if pub is None or not crypto.verify_signature(
                    pub, "departure", payload, answer.sig
                ):
                    raise RuntimeError("bench: a grant whose signature does not verify")
                checked += 1
            await link.send(proto.RejoinedReport(artifact=to_a, nonce=token.nonce))

    pubs: dict[str, bytes] = coordinators
    async with trio.open_nursery() as links_nursery:
        for link in links:
            await links_nursery.start(link.run)
        go = trio.Event()
        readies = [trio.Event() for _ in links]
        async with trio.open_nursery() as nursery:
            for link, ready in zip(links, readies, strict=True):
                nursery.start_soon(node, link, ready, go)
            for ready in readies:
                await ready.wait()
            start = time.perf_counter()
            go.set()
        elapsed = time.perf_counter() - start
        links_nursery.cancel_scope.cancel()
    latencies.sort()
    return {
        "asks": len(latencies),
        "granted": granted,
        "grants_verified": checked,
        "seconds": round(elapsed, 3),
        "asks_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
    }


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_bench(*, asks: int, concurrency: int, profile: str | None = None) -> dict[str, Any]:
    floor = sign_verify_floor()
    d = Path(tempfile.mkdtemp(prefix="p2pupdate-bench-"))
    proc: subprocess.Popen[str] | None = None
    try:
        documents, from_a, to_a = make_network(d / "net")
        root_bytes = (d / "net" / ROOT_FILE).read_bytes()
        proc, url = start_server(d / "net", profile)
        publish(url, documents)
        server_before, client_before = _cpu(proc.pid), _own_cpu()
        result = trio.run(drive, url, asks, concurrency, from_a, to_a, root_bytes)
        result["server_cpu_s"] = round(_cpu(proc.pid) - server_before, 3)
        result["client_cpu_s"] = round(_own_cpu() - client_before, 3)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(d, ignore_errors=True)
    result["sign_verify_floor_per_s"] = round(floor, 1)
    result["concurrency"] = concurrency
    result["ratio_to_floor"] = round(result["asks_per_s"] / floor, 3)
    return result
