#!/usr/bin/env python3
"""The local fleet demo: four real nodes update themselves from v1 to v2 under load.

    python scripts/fleet_demo.py WORKDIR [--timeout 180] [--max-concurrent 1] [--code-only]

Steps, narrated on stdout: init a network; build v1 and v2 of this tree
(``scripts/build-artifact``); sign their release records; allowlist both; start one real
coordinator replica on 127.0.0.1 and publish the documents and the v2 artifact; start four
real ``p2pupdate node`` processes from v1 serving the example KV service, gossiping with
each other (each on its own loopback address, 127.0.0.2-5, introduced by the replica), so
v2 moves between them peer to peer and the origin serves only what no peer has; run a KV
client load over the four nodes in the background; publish an ``--everyone`` scope for v2
and a nudge; follow the rollout (versions per node, leases, refusals) until every node runs
v2; check the client saw 0 failed requests and that every acknowledged write is still
readable on the node that acknowledged it; print the replica's status table and the origin
share (the replica's origin bytes for v2 / (nodes x v2's size)); stop everything.

Every child runs in its own process group and is stopped on exit, Ctrl-C, SIGTERM or
failure.  Servers bind to 127.0.0.1 only.  Exit codes: 0 the rollout completed with 0 failed
requests and no lost write, 1 it did not (the message says why), 2 usage mistake, 130
stopped by Ctrl-C or SIGTERM.

``--code-only`` builds v1 and v2 of our code alone (``build-artifact --code-only``: the
daemon runs on the launcher's environment), not self-contained: the same steps in about
half the time (hashing, publishing and staging 2 MB builds instead of ~230 MB ones), for a
test that needs the fleet running, not what a self-contained build proves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from p2pupdate.work.client import KVClient, KVClientError  # noqa: E402

NODES = 4
MAX_CONCURRENT = 1  # default: departures in flight at once (the rolling update's width)
LEASE_TTL = 20  # seconds: a refused node retries when the blocking lease would lapse
#: Node timings: check often, short probation, so the demo takes about a minute.
NODE_TIMINGS = [
    "--check-interval",
    "2",
    "--probation",
    "30",
    "--health-checks",
    "3",
    "--health-interval",
    "0.5",
    "--drain-timeout",
    "5",
    "--swap-margin",
    "5",
    "--report-interval",
    "1",
]
#: Stand-in for the gossip aggregate: pool capacity, load, serving nodes.
AGGREGATE = "400:100:4"

BOLD, RESET = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


class DemoFailed(Exception):
    """The demo could not show what it promises; the message says why."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n{BOLD}== {text}{RESET}")


def plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def elapsed(t0: float) -> str:
    return f"+{time.monotonic() - t0:5.1f}s"


# -- running commands -----------------------------------------------------------------------


def tool(name: str, module: str) -> list[str]:
    """The console script next to this Python (the venv's), else ``python -m module``."""
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", module]


P2PUPDATE = tool("p2pupdate", "p2pupdate")
COORDINATOR = tool("p2pupdate-coordinator", "coordinator.cli")
BUILD = [sys.executable, str(REPO / "scripts" / "build-artifact")]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("P2PUPDATE_TEST_CRASH_AT", None)
    return env


def run(shown: str, argv: list[str], cwd: Path, *, quiet: bool = False) -> str:
    """Run a command to completion, echoing ``$ shown`` and its output; fail on non-zero."""
    say(f"$ {shown}")
    proc = subprocess.run(
        argv, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=120
    )
    out = proc.stdout.rstrip()
    if out and not quiet:
        say("  " + out.replace("\n", "\n  "))
    if proc.returncode != 0:
        raise DemoFailed(f"`{shown}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Child:
    """A long-running child in its own session (launcher + daemon share its group)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        # Whatever is left of the group (a daemon whose launcher died first): SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


class Children:
    def __init__(self) -> None:
        self.started: list[Child] = []

    def spawn(self, name: str, argv: list[str], cwd: Path, log: Path) -> Child:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, proc, log)
        self.started.append(child)
        return child

    def stop_all(self, grace: float = 20.0) -> None:
        """SIGTERM every child at once (nodes drain in parallel), then kill what is left."""
        for child in self.started:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in reversed(self.started):
            child.stop(max(0.1, deadline - time.monotonic()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Any, timeout: float, children: Children) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for child in children.started:
            if not child.alive():
                raise DemoFailed(f"{child.name} exited ({child.proc.returncode}); see {child.log}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


# -- the client load ------------------------------------------------------------------------


@dataclass
class Load:
    """A KV client over every node: writers and readers until ``stop`` is set."""

    endpoints: list[tuple[str, int]]
    writers: int = 3
    readers: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    acked: dict[str, tuple[bytes, tuple[str, int]]] = field(default_factory=dict)
    writes: int = 0
    reads: int = 0
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    failed: int = 0
    retries: int = 0
    going_away: int = 0
    thread: threading.Thread | None = None
    crashed: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._thread, name="kv-load", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
        if self.crashed is not None:
            raise DemoFailed(f"the client load crashed: {self.crashed!r}")

    def _thread(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by finish()
            self.crashed = exc

    async def _main(self) -> None:
        async with KVClient(self.endpoints) as kv:
            async with trio.open_nursery() as nursery:
                for w in range(self.writers):
                    nursery.start_soon(self._writer, kv, w)
                for _ in range(self.readers):
                    nursery.start_soon(self._reader, kv)
            stats = kv.stats
            self.requests = stats.succeeded + stats.failed
            self.failed = stats.failed
            self.retries = stats.retries
            self.going_away = stats.going_away

    async def _writer(self, kv: KVClient, w: int) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"demo-{w}-{i:06d}"
            value = f"value {i} from writer {w} at {time.time():.3f}".encode()
            i += 1
            try:
                endpoint = await kv.put(key, value)
            except KVClientError as exc:
                self.errors.append(f"put {key}: {exc}")
            else:
                self.acked[key] = (value, endpoint)
                self.writes += 1
            await trio.sleep(0.01)

    async def _reader(self, kv: KVClient) -> None:
        rng = random.Random(1)
        while not self.stop.is_set():
            if self.acked:
                key = rng.choice(list(self.acked)[-200:])
                try:
                    await kv.get(key)
                except KVClientError as exc:
                    self.errors.append(f"get {key}: {exc}")
                else:
                    self.reads += 1
            await trio.sleep(0.01)


async def _verify(acked: dict[str, tuple[bytes, tuple[str, int]]]) -> list[str]:
    """Read every acknowledged write back from the node that acknowledged it."""
    by_node: dict[tuple[str, int], list[str]] = {}
    for key, (_value, endpoint) in acked.items():
        by_node.setdefault(endpoint, []).append(key)
    lost: list[str] = []

    async def check_node(endpoint: tuple[str, int], keys: list[str]) -> None:
        async with KVClient([endpoint]) as kv:
            limit = trio.CapacityLimiter(16)

            async def one(key: str) -> None:
                async with limit:
                    try:
                        found = await kv.get(key)
                    except KVClientError as exc:
                        lost.append(f"{key}: {exc}")
                        return
                if found != acked[key][0]:
                    lost.append(f"{key} on {endpoint[0]}:{endpoint[1]}: got {found!r}")

            async with trio.open_nursery() as nursery:
                for key in keys:
                    nursery.start_soon(one, key)

    async with trio.open_nursery() as nursery:
        for endpoint, keys in by_node.items():
            nursery.start_soon(check_node, endpoint, keys)
    return lost


# -- the demo -------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    state: Path
    port: int
    gossip_host: str
    child: Child | None = None

    def status(self) -> dict[str, Any] | None:
        return read_json(self.state / "status")


def origin_share(status: dict[str, Any], artifact: str, size: int) -> float:
    """The replica's origin bytes for ``artifact`` over what the fleet fetched (nodes x size):
    1.0 when every node took it whole from the origin, 0 when peers brought all of it."""
    sent = int(status["origin"]["artifacts"].get(artifact, {}).get("bytes", 0))
    return sent / (NODES * size)


_REUSED = re.compile(r"store: ([0-9a-f]{16})\.\.\. reused (\d+) of (\d+) chunks \((\d+) bytes\)")


def reused_bytes(logs: list[Path], artifact: str) -> int:
    """The bytes of ``artifact`` the nodes copied out of builds their stores held (the last
    "reused N of M chunks (B bytes)" line of each node's log), instead of fetching them."""
    total = 0
    for log in logs:
        found = [m for m in _REUSED.finditer(log.read_text(errors="replace"))]
        mine = [int(m.group(4)) for m in found if artifact.startswith(m.group(1))]
        total += mine[-1] if mine else 0
    return total


def describe(node: Node) -> str:
    st = node.status()
    if st is None:
        return f"{node.name}: starting"
    version = st.get("version", "?")
    mode = st.get("mode", "?")
    state = st.get("state", "?")
    if st.get("exit_code") is not None:
        return f"{node.name}: {version} exiting"
    extra = "probation" if mode != "normal" else state
    return f"{node.name}: {version} {extra}"


def demo(work: Path, timeout: float, max_concurrent: int, children: Children, *,
         code_only: bool = False) -> None:  # fmt: skip
    t_start = time.monotonic()
    step("1. Create a network: 1 coordinator replica (quorum 1), release and operator keys")
    # --pow-bits 0 --standing 0: the demo's nodes start with plain keys (no proof of work
    # to make at first start) and count at once, so the rollout starts within seconds; a
    # real open network keeps init's defaults (18 bits, 1 h: README "Admission").
    run(
        "p2pupdate-coordinator init net --replicas 1 --quorum 1 --network fleet-demo "
        "--pow-bits 0 --standing 0",
        [
            *COORDINATOR,
            "init",
            "net",
            "--replicas",
            "1",
            "--quorum",
            "1",
            "--network",
            "fleet-demo",
            "--pow-bits",
            "0",
            "--standing",
            "0",
        ],
        work,
        quiet=True,
    )
    say("  -> net/root.msgpack and net/keys/")

    step("2. Build v1 and v2 of this very tree (reproducible tarballs)")
    shas: dict[str, str] = {}
    kind = ["--code-only"] if code_only else []
    for version in ("v1", "v2"):
        args = ["--version", version, *kind, "-o", f"{version}.tar"]
        out = run(" ".join(["scripts/build-artifact", *args]), [*BUILD, *args], work)
        shas[version] = out.split()[0]
    v2 = shas["v2"]

    step("3. The release engineer signs both builds; the coordinator allowlists them (gate 1)")
    for counter, version in enumerate(("v1", "v2"), start=1):
        run(
            f"p2pupdate release {version}.tar --key net/keys/release-1.pem "
            f"--counter {counter} --name {version} -o {version}.release",
            [
                *P2PUPDATE,
                "release",
                f"{version}.tar",
                "--key",
                "net/keys/release-1.pem",
                "--counter",
                str(counter),
                "--name",
                version,
                "-o",
                f"{version}.release",
            ],
            work,
        )
    run(
        "p2pupdate-coordinator allow v1.release v2.release --dir net -o allowlist.msgpack",
        [
            *COORDINATOR,
            "allow",
            "v1.release",
            "v2.release",
            "--dir",
            "net",
            "-o",
            "allowlist.msgpack",
        ],
        work,
    )

    step(
        f"4. Start a coordinator replica on 127.0.0.1 (gate 3: at most {plural(max_concurrent, 'node')} "
        f"away at once, {LEASE_TTL} s leases) and publish"
    )
    serve = [
        "serve",
        "--dir",
        "net",
        "--listen",
        "127.0.0.1:0",
        "--first-start",
        "--lease-ttl",
        str(LEASE_TTL),
        "--max-skew",
        "2",
        "--max-concurrent",
        str(max_concurrent),
        "--min-serving",
        "1",
    ]
    say("$ p2pupdate-coordinator " + shlex.join(serve) + " &   # log: coordinator.log")
    replica = children.spawn(
        "the coordinator replica", [*COORDINATOR, *serve], work, work / "coordinator.log"
    )

    def listening() -> str | None:
        m = re.search(r"listening on (http://\S+)", (work / "coordinator.log").read_text())
        return m.group(1) if m else None

    url = wait_for("the replica to listen", listening, 30, children)
    assert replica.alive()
    say(f"  -> listening on {url}")
    run(
        f"p2pupdate-coordinator publish v1.release v2.release allowlist.msgpack v2.tar --url {url}",
        [
            *COORDINATOR,
            "publish",
            "v1.release",
            "v2.release",
            "allowlist.msgpack",
            "v2.tar",
            "--url",
            url,
        ],
        work,
    )

    step(f"5. Start {NODES} real nodes from v1, each serving the example KV service")
    nodes = [
        Node(f"node{i}", work / "nodes" / f"node{i}", free_port(), f"127.0.0.{i + 1}")
        for i in range(1, NODES + 1)
    ]
    (work / "nodes").mkdir(exist_ok=True)
    for node in nodes:
        args = [
            "node",
            "--state-dir",
            f"nodes/{node.name}",
            "--initial-artifact",
            "v1.tar",
            "--work",
            "kv",
            "--host",
            "127.0.0.1",
            "--port",
            str(node.port),
            "--coordinator",
            url,
            "--trust-root",
            "net/root.msgpack",
            "--aggregate-stub",
            AGGREGATE,
            # Gossip, and with it the chunk swarm: nodes on one machine need distinct
            # addresses (peers cap identities per source address).
            "--gossip-listen",
            f"{node.gossip_host}:0",
            *NODE_TIMINGS,
        ]
        say(f"$ p2pupdate {shlex.join(args)} &   # log: nodes/{node.name}.log")
        node.child = children.spawn(
            node.name, [*P2PUPDATE, *args], work, work / "nodes" / f"{node.name}.log"
        )

    def all_on_v1() -> bool:
        for node in nodes:
            st = node.status()
            if not (st and st.get("version") == "v1" and st.get("work", {}).get("serving")):
                return False
        on_v1: int = http_json(f"{url}/status")["nodes"]["versions"].get("v1", 0)
        return on_v1 == NODES

    wait_for(f"{NODES} nodes serving v1", all_on_v1, 60, children)
    for node in nodes:
        say(f"  {describe(node)}, KV on 127.0.0.1:{node.port}")
    say(f"  -> the replica sees {NODES} nodes on v1")

    step("6. A client keeps writing and reading over all 4 nodes (KVClient), in the background")
    load = Load([("127.0.0.1", n.port) for n in nodes])
    load.start()
    wait_for("the first acknowledged writes", lambda: load.writes >= 20, 30, children)
    say(f"  -> {load.writes} writes acknowledged so far")

    step("7. The operator scopes v2 to everyone (gate 2) and nudges the fleet")
    run(
        f"p2pupdate scope --artifact {v2[:16]}... --everyone --key net/keys/operator-1.pem -o scope-v2.msgpack",
        [
            *P2PUPDATE,
            "scope",
            "--artifact",
            v2,
            "--everyone",
            "--key",
            "net/keys/operator-1.pem",
            "-o",
            "scope-v2.msgpack",
        ],
        work,
    )
    run(
        f"p2pupdate-coordinator publish scope-v2.msgpack --url {url}",
        [*COORDINATOR, "publish", "scope-v2.msgpack", "--url", url],
        work,
    )
    run(
        f"p2pupdate-coordinator nudge --artifact {v2[:16]}... --dir net --url {url}",
        [*COORDINATOR, "nudge", "--artifact", v2, "--dir", "net", "--url", url],
        work,
    )

    step(
        f"8. The rolling update: at most {plural(max_concurrent, 'node')} away at a time "
        f"(timeout {timeout:g} s)"
    )
    say(
        "  Each node notices v2, checks gates 1-2 itself, fetches v2's chunks from its peers (the\n"
        "  replica's origin only for what no peer has) and asks for a departure token. Refused\n"
        "  nodes keep serving and retry when the replica says (when the blocking lease would\n"
        "  lapse). Polling GET /status (what `p2pupdate-coordinator status` prints) and each\n"
        "  node's state-dir/status:"
    )
    t0 = time.monotonic()
    last = ""
    last_print = 0.0
    max_leases = 0
    st: dict[str, Any] = {}
    while True:
        st = http_json(f"{url}/status")
        art = st["artifacts"].get(v2, {})
        leases = int(art.get("leases", 0))
        max_leases = max(max_leases, leases)
        versions = st["nodes"]["versions"]
        refusals = ", ".join(f"{k} {v}" for k, v in sorted(st["refusals"].items())) or "none"
        line = (
            " | ".join(describe(n) for n in nodes)
            + f" || leases {leases}, on v2 {versions.get('v2', 0)}/{NODES}, refusals: {refusals}"
        )
        now = time.monotonic()
        if line != last or now - last_print > 10:
            say(f"  [{elapsed(t0)}] {line}")
            last, last_print = line, now
        done = all(
            (s := n.status()) is not None and s.get("version") == "v2" and s.get("mode") == "normal"
            for n in nodes
        )
        if done and versions.get("v2", 0) == NODES and leases == 0:
            break
        if art.get("paused"):
            raise DemoFailed(f"the rollout of v2 was paused: {art.get('paused_reason')}")
        for child in children.started:
            if not child.alive():
                raise DemoFailed(f"{child.name} exited ({child.proc.returncode}); see {child.log}")
        if now - t0 > timeout:
            raise DemoFailed(
                f"the rollout did not complete within {timeout:g} s: {line} "
                f"(logs: {work / 'nodes'}, {work / 'coordinator.log'})"
            )
        time.sleep(0.5)
    rollout_s = time.monotonic() - t0
    say(
        f"  -> all {NODES} nodes run v2 after {rollout_s:.1f} s; "
        f"at most {plural(max_leases, 'departure lease')} held at once"
    )
    time.sleep(1.0)  # a little load on the new fleet

    step("9. The client's totals")
    load.finish()
    lost = trio.run(_verify, dict(load.acked))
    say(f"  requests:     {load.requests} ({load.writes} writes acknowledged, {load.reads} reads)")
    say(f"  failed:       {load.failed}")
    say(
        f"  moved on:     {load.retries} retries to another node, "
        f"{load.going_away} 'going-away' answers from draining nodes"
    )
    say(
        f"  durable:      {len(load.acked) - len(lost)} of {len(load.acked)} acknowledged writes read "
        "back from the node that acknowledged them (nodes do not replicate)"
    )
    for problem in (load.errors + lost)[:10]:
        say(f"  !! {problem}")

    step("10. The replica's view")
    run(f"p2pupdate-coordinator status --url {url}", [*COORDINATOR, "status", "--url", url], work)
    v2_size = (work / "v2.tar").stat().st_size
    share = origin_share(http_json(f"{url}/status"), v2, v2_size)
    logs = [work / "nodes" / f"node{i}.log" for i in range(1, NODES + 1)]
    reused = reused_bytes(logs, v2) / (NODES * v2_size)
    say(
        f"  origin share {share:.2%}: the replica's origin sent {share * NODES:.4f} copies of v2 "
        f"for {NODES} nodes; {reused:.2%} of what they needed was already in their stores "
        "(the chunks v2 shares with v1: content-defined chunks), peers sent the rest"
    )

    if load.failed or load.errors:
        raise DemoFailed(f"the client saw {load.failed or len(load.errors)} failed request(s)")
    if lost:
        raise DemoFailed(f"{len(lost)} acknowledged write(s) not readable")
    if load.writes == 0:
        raise DemoFailed("the client load acknowledged no write")

    step("11. Stop the fleet")
    children.stop_all()
    say(f"  -> stopped {len(children.started)} processes")
    say(
        f"\nFleet demo OK: {NODES} nodes moved v1 -> v2 in {rollout_s:.0f} s under load, "
        f"{load.requests} requests, 0 failed, 0 acknowledged writes lost, "
        f"origin share {share:.0%}, {reused:.1%} reused from v1 "
        f"(total {time.monotonic() - t_start:.0f} s)."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="fleet_demo.py",
        description="Four real nodes update from v1 to v2 under client load.",
        epilog="Exit codes: 0 the rollout completed with 0 failed requests, 1 it did not, 2 usage.",
    )
    ap.add_argument("workdir", type=Path, help="an empty or new directory for the demo's files")
    ap.add_argument("--timeout", type=float, default=180.0, help="rollout timeout, seconds")
    ap.add_argument(
        "--max-concurrent",
        type=int,
        default=MAX_CONCURRENT,
        choices=range(1, NODES),
        metavar="N",
        help=f"departures in flight at once, 1..{NODES - 1} (default {MAX_CONCURRENT})",
    )
    ap.add_argument(
        "--code-only",
        action="store_true",
        help="build v1 and v2 of our code alone, not self-contained (faster; for tests)",
    )
    args = ap.parse_args(argv)
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):
        print(f"fleet_demo.py: error: {work} is not empty; give a new directory", file=sys.stderr)
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    say(f"Fleet demo: files in {work}")
    children = Children()
    code = 1
    try:
        demo(work, args.timeout, args.max_concurrent, children, code_only=args.code_only)
        code = 0
    except DemoFailed as exc:
        say(f"\n!! FLEET DEMO FAILED: {exc}")
        say(f"!! files and logs: {work}")
    except KeyboardInterrupt:
        say("\n!! interrupted; stopping the fleet")
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        children.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
