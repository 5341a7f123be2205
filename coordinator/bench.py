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

Each client connects from its own loopback address in its own /24 (``client_address``:
127.0.N.1), as the nodes of a fleet come from many subnets: the replica's per-subnet caps
(P10, ``admission.DEFAULT_CAPS``: 4 leases per /24) would otherwise refuse all but 4 of the
clients' asks (``capacity/subnet-leases``, counted in ``refused``), and the figure would
be of refusals, not of grants.

``--sessions N`` first opens N more node sessions (real hellos, one status report each,
then idle; ``session_address``: each from its own address in its own /24, 127.S.T.1, so
no /24 comes near ``subnet_nodes`` ids) and reads the replica child's resident memory
(``VmRSS``) before and after them: ``rss_per_session_kib``; the asks then run with them
open (``ask_p99_ms``).  The bench raises its own open-file limit to what the sockets need
(the child inherits it) and the replica's ``--max-connections`` with it.

The clients check a sample of the grants (each node's first: signature by the replica's
key over exactly the proposed payload) instead of all: a real node verifies every token
it uses, but that is the node's CPU, and here it would be taken from the server's core.

``sign_verify_floor_per_s`` is Ed25519 sign + verify pairs per second of one core on a
token-sized message, measured in this run before the asks start.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from functools import partial
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
#: Ask clients: one loopback /24 each (127.0.1.1 ... 127.0.255.1).
MAX_CONCURRENCY = 255
#: Idle sessions: 127.1.1.1 ... (200 per second octet, second octets 1..250).
SESSIONS_PER_OCTET = 200
MAX_SESSIONS = SESSIONS_PER_OCTET * 250
#: Idle sessions whose hellos are in flight at once (each costs the replica a verify).
OPENING_AT_ONCE = 64
#: Seconds a batch of idle sessions has to connect and report.
OPEN_TIMEOUT = 60.0
#: Connections the replica needs beyond the nodes' (publish, status).
SPARE_CONNECTIONS = 64
#: The throwaway network's root lifetime (``init``'s default): a year.
NETWORK_LIFETIME = 365 * 86400


class BenchError(RuntimeError):
    """The bench could not measure (a replica that did not start, sessions not let in,
    too few open files): ``bench`` prints it on one line and exits 1."""


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


def client_address(i: int) -> str:
    """Ask client ``i``'s source address: its own /24 of 127.0.0.0/16."""
    if not 0 <= i < MAX_CONCURRENCY:
        raise ValueError(f"at most {MAX_CONCURRENCY} ask clients")
    return f"127.0.{1 + i}.1"


def session_address(i: int) -> str:
    """Idle session ``i``'s source address: its own /24, outside the ask clients' /16."""
    if not 0 <= i < MAX_SESSIONS:
        raise ValueError(f"at most {MAX_SESSIONS} sessions")
    return f"127.{1 + i // SESSIONS_PER_OCTET}.{1 + i % SESSIONS_PER_OCTET}.1"


def raise_open_files(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to ``needed`` (at most the hard limit);
    the replica child inherits it.  Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def rss_kib(pid: int) -> int:
    """A process's resident memory in KiB (Linux /proc/PID/status ``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"bench: no VmRSS for process {pid}")


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


def start_server(
    d: Path, profile: str | None, max_connections: int
) -> tuple[subprocess.Popen[str], str]:
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
        "--max-connections",
        str(max_connections),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        raise BenchError(f"bench: the replica did not start: {line!r}")
    return proc, m.group(1)


def publish(url: str, documents: list[bytes]) -> None:
    for data in documents:
        req = urllib.request.Request(f"{url}/v1/publish", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            if resp.status != 200:
                raise BenchError(f"bench: publish failed: {resp.read()!r}")


def _status(from_a: str) -> proto.StatusReport:
    estimate = proto.Estimate(capacity=1e12, load=0.0, serving=1_000_000, age=0.0)
    return proto.StatusReport(
        version="bench",
        artifact=from_a,
        state="serving",
        pool="bench",
        estimate=estimate,
        held=None,
        addrs=(),
    )


async def open_sessions(
    nursery: trio.Nursery,
    url: str,
    count: int,
    from_a: str,
    coordinators: dict[str, bytes],
) -> list[ReplicaLink]:
    """``count`` idle node sessions, each connected and its status reported (in batches
    of ``OPENING_AT_ONCE``; a batch not up within ``OPEN_TIMEOUT`` is an error)."""
    links: list[ReplicaLink] = []
    status = _status(from_a)

    async def one(link: ReplicaLink) -> None:
        await nursery.start(link.run)
        await link.connected.wait()
        await link.send(status)

    for first in range(0, count, OPENING_AT_ONCE):
        batch = [
            ReplicaLink(
                url,
                crypto.SigningKey.from_seed(os.urandom(32)),
                replica_keys=lambda: coordinators,
                local_address=session_address(i),
            )
            for i in range(first, min(count, first + OPENING_AT_ONCE))
        ]
        with trio.move_on_after(OPEN_TIMEOUT) as scope:
            async with trio.open_nursery() as opening:
                for link in batch:
                    opening.start_soon(one, link)
        if scope.cancelled_caught:
            up = sum(link.connects > 0 for link in batch)
            refused = {str(link.refused) for link in batch if link.refused is not None}
            raise BenchError(
                f"bench: sessions {first}-{first + len(batch) - 1}: {up} of {len(batch)} up "
                f"in {OPEN_TIMEOUT:g} s (refused: {sorted(refused) or 'none'})"
            )
        links += batch
    return links


async def drive(
    url: str,
    asks: int,
    concurrency: int,
    from_a: str,
    to_a: str,
    root_bytes: bytes,
    *,
    server_pid: int,
    sessions: int = 0,
) -> dict[str, Any]:
    root = docs.open_root(root_bytes).doc
    coordinators = root.role_keys("coordinator")
    links = [
        ReplicaLink(
            url,
            crypto.SigningKey.from_seed(os.urandom(32)),
            replica_keys=lambda: coordinators,
            local_address=client_address(i),
        )
        for i in range(concurrency)
    ]
    latencies: list[float] = []
    granted = 0
    remaining = asks
    checked = 0
    refused: dict[str, int] = {}
    memory: dict[str, Any] = {}
    idle: list[ReplicaLink] = []

    async def node(link: ReplicaLink, ready: trio.Event, go: trio.Event) -> None:
        nonlocal remaining, granted, checked
        await link.connected.wait()
        await link.send(_status(from_a))
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
                why = (
                    f"{answer.gate}/{answer.reason}"
                    if isinstance(answer, proto.AskRefusal)
                    else f"error/{getattr(answer, 'error', type(answer).__name__)}"
                )
                refused[why] = refused.get(why, 0) + 1
                continue
            granted += 1
            if first:
                first = False
                pub = pubs.get(answer.replica)
                if pub is None or not crypto.verify_signature(
                    pub, "departure", payload, answer.sig
                ):
                    raise BenchError("bench: a grant whose signature does not verify")
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
            if sessions:
                before = rss_kib(server_pid)
                t0 = time.perf_counter()
                idle = await open_sessions(links_nursery, url, sessions, from_a, coordinators)
                memory["sessions_open_s"] = round(time.perf_counter() - t0, 3)
                after = rss_kib(server_pid)
                memory["replica_rss_kib_before"] = before
                memory["replica_rss_kib_sessions"] = after
                memory["rss_per_session_kib"] = round((after - before) / sessions, 2)
            server_before, client_before = _cpu(server_pid), _own_cpu()
            start = time.perf_counter()
            go.set()
        elapsed = time.perf_counter() - start
        server_cpu, client_cpu = _cpu(server_pid) - server_before, _own_cpu() - client_before
        if sessions:
            # the idle sessions were open through the asks (a session lost and redialed
            # would have shown as a second connect)
            memory["sessions_kept"] = sum(link.is_connected and link.connects == 1 for link in idle)
        links_nursery.cancel_scope.cancel()
    latencies.sort()
    p99 = round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3)
    return {
        "asks": len(latencies),
        "granted": granted,
        "refused": refused,
        "grants_verified": checked,
        "seconds": round(elapsed, 3),
        "asks_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": p99,
        "server_cpu_s": round(server_cpu, 3),
        "client_cpu_s": round(client_cpu, 3),
        "sessions": sessions,
        "ask_p99_ms": p99,
        **memory,
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


def run_bench(
    *, asks: int, concurrency: int, sessions: int = 0, profile: str | None = None
) -> dict[str, Any]:
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"bench: concurrency must be 1..{MAX_CONCURRENCY}")
    if not 0 <= sessions <= MAX_SESSIONS:
        raise ValueError(f"bench: sessions must be 0..{MAX_SESSIONS}")
    max_connections = max(1000, concurrency + sessions + SPARE_CONNECTIONS)
    # this process holds one socket per node, the replica one per node and its files
    nofile = raise_open_files(max_connections + SPARE_CONNECTIONS)
    if nofile < max_connections + SPARE_CONNECTIONS:
        raise BenchError(
            f"bench: {concurrency + sessions} nodes need ~{max_connections + SPARE_CONNECTIONS}"
            f" open files, at most {nofile} here (raise ulimit -Hn)"
        )
    floor = sign_verify_floor()
    d = Path(tempfile.mkdtemp(prefix="p2pupdate-bench-"))
    proc: subprocess.Popen[str] | None = None
    try:
        documents, from_a, to_a = make_network(d / "net")
        root_bytes = (d / "net" / ROOT_FILE).read_bytes()
        proc, url = start_server(d / "net", profile, max_connections)
        publish(url, documents)
        result = trio.run(
            partial(drive, sessions=sessions, server_pid=proc.pid),
            url,
            asks,
            concurrency,
            from_a,
            to_a,
            root_bytes,
        )
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
