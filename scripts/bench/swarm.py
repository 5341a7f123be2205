"""The swarm benchmark: N real nodes fetch one release; ours beside libtorrent, same links.

    sudo .venv/bin/python scripts/bench/swarm.py --json [--nodes 24] [--artifact-mib 16]
        [--origin-up 2M] [--peer-up 512k] [--peer-down 2.5M] [--chunk-kib 64]
        [--no-libtorrent] [--timeout S]

Prints one JSON object on stdout (progress on stderr).  The network (root, Linux network
namespaces: ``scripts/bench/_swarm_net.py``): every node in its own public home on netlab's
inet bridge (prefix ``bsw``), its uplink and downlink cut by ``tbf`` to the peer rates, the
origin's host to the origin's up rate.  Removed on every way out.

**Ours.** A network directory, v1 (a build of this tree, what the nodes run) and v2 (the
artifact: ``--artifact-mib`` MiB of seeded random bytes), both release records (``--chunk-kib``
chunks) and an allowlist; one ``p2pupdate-coordinator serve`` replica with its origin in
its inet host (``--min-serving`` above the fleet, so gate 3 keeps every node serving: the
bench measures the fetch, not the swap), holding v2; N ``p2pupdate node`` processes
(launcher + daemon, ``--work none``) gossiping over tcp (``--rtc off``) and introduced by
the replica, ``--swarm-upload-cap`` = the peer up rate.  When every node is linked, the
bench publishes an ``--everyone`` scope for v2 and a nudge: that moment is ``t0``.  A node
holds the release when its status file's ``swarm.artifacts[v2].completed_at`` is set (a
node without the swarm: when ``store/<v2>.tar.gz`` appears, its mtime).  ``origin_bytes`` is
the replica's ``/status`` ``origin.artifacts[v2].bytes``; ``bytes_up`` comes from the status
files (their mtime is the reading's time).

**libtorrent** (``scripts/bench/_swarm_lt.py``; the ``bench`` extra): a seed in the origin's
host and one client per node host, the same shaping and the same caps as session rate
limits, pieces of the chunk size; ``t0`` when the clients are told to start, peers found
through the seed and PEX only; ``origin_bytes`` is the seed's payload upload.

Besides the issue's fields each column has ``completed`` (nodes that got there), ``t_first_s``,
``upload_peak_bytes_s`` (the highest node's, over 10 s windows) and ``cpu_s`` (user + system
CPU of the nodes' processes from ``t0`` to the end: ours' launchers and daemons, libtorrent's
clients); ours adds ``swarm`` (the nodes ran it), ``node_origin_chunks`` / ``node_chunks``
(what their status files count) and ``node_peers_min`` (the fewest swarm peers a node had).

Exit codes: 0 every node of every run completed, 1 one did not (the JSON says), 2 usage
(not root, libtorrent missing without ``--no-libtorrent``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from p2pupdate.launcher.state import StateDir  # noqa: E402
from scripts.bench import _swarm_lt  # noqa: E402
from scripts.bench._swarm_measure import Run, figures  # noqa: E402
from scripts.bench._swarm_net import PREFIX, Rates, SwarmNet, swarm_net  # noqa: E402
from scripts.netlab import in_netns  # noqa: E402

T = TypeVar("T")
MiB = 1024 * 1024
ORIGIN = "coord"  # our replica's host
SEED = "seed"  # libtorrent's seed's host
GOSSIP_PORT = 7946
#: The replica's read token: ``status()`` reads /status from the origin's own address.
READ_TOKEN = "swarm-bench-read-token"


class BenchError(Exception):
    """A run could not be set up or measured; the message says why."""


def log(text: str) -> None:
    print(f"[swarm bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def rate(text: str) -> float:
    """``512k``, ``2M``, ``1.5M`` or plain bytes/s (k and M are 1024-based)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kKmM]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 512k, 2M, 1.5M)")
    scale = {"": 1, "k": 1024, "K": 1024, "m": MiB, "M": MiB}[m.group(2)]
    value = float(m.group(1)) * scale
    if value <= 0:
        raise argparse.ArgumentTypeError("a rate must be > 0")
    return value


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(REPO))
    e.pop("P2PUPDATE_TEST_CRASH_AT", None)
    return e


class Procs:
    """Children in their own sessions; all killed (process group) on :meth:`close`."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, argv: list[str], *, cwd: Path, log_path: Path,
              stdout: int | None = None) -> subprocess.Popen[Any]:  # fmt: skip
        with log_path.open("ab") as out:
            p: subprocess.Popen[Any] = subprocess.Popen(
                argv, cwd=cwd, env=env(), stdin=subprocess.DEVNULL,
                stdout=out if stdout is None else stdout, stderr=out,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self.procs.clear()


def cpu_seconds(pgids: set[int]) -> float:
    """User + system CPU seconds of the live processes in ``pgids`` (and of their waited-for
    children): what the contenders' processes cost the machine so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pgids:  # fields[2] is the process group (stat field 5)
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def wait_until(what: str, check: Callable[[], T | None], timeout: float,
               alive: Callable[[], None] = lambda: None) -> T:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.25)


def read_json(path: Path) -> tuple[float, dict[str, Any]] | None:
    """A JSON file and its mtime (when it was written), or None while it is not there."""
    try:
        mtime = path.stat().st_mtime
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (mtime, value) if isinstance(value, dict) else None


# -- ours -----------------------------------------------------------------------------------


def _cli(net: SwarmNet, host: str | None, module: str, *args: str, cwd: Path) -> str:
    argv = [sys.executable, "-m", module, *args]
    if host is not None:
        argv = net.netns_exec(host) + argv
    p = subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise BenchError(f"`{module} {' '.join(args[:2])}` exited {p.returncode}: {p.stderr}")
    return p.stdout


def artifact_bytes(size: int) -> bytes:
    """``size`` seeded random bytes: incompressible, the same every run."""
    return random.Random(20261202).randbytes(size)


def _node_help_has(flag: str) -> bool:
    p = subprocess.run([sys.executable, "-m", "p2pupdate", "node", "--help"], env=env(),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    return flag in p.stdout


def run_ours(net: SwarmNet, work: Path, artifact: Path, chunk: int, rates: Rates,
             timeout: float, procs: Procs) -> tuple[Run, dict[str, Any]]:  # fmt: skip
    """Our job; returns the run and what the nodes' status files add (``swarm``: whether
    the nodes ran the swarm; the chunks they say came from the origin and from peers)."""
    work.mkdir(parents=True)
    n = len(net.nodes)

    def cli(module: str, *args: str) -> str:
        return _cli(net, None, module, *args, cwd=work)

    cli("coordinator.cli", "init", "net", "--replicas", "1", "--quorum", "1",
        "--network", "swarm-bench", "--pow-bits", "0", "--standing", "0")  # fmt: skip
    # v1 is only what the nodes run (the bench measures v2's fetch): our code alone, so 24
    # launchers do not each stage a 70 MB self-contained build (~0.5 GB each) at start
    subprocess.run([sys.executable, str(REPO / "scripts" / "build-artifact"), "--version", "v1",
                    "--code-only", "-o", str(work / "v1.tar.gz")], check=True, env=env(), cwd=work,
                   capture_output=True, timeout=120)  # fmt: skip
    shutil.copyfile(artifact, work / "v2.tar.gz")
    sha = _sha256(work / "v2.tar.gz")
    key = "net/keys/release-1.pem"
    cli("p2pupdate", "release", "v1.tar.gz", "--key", key, "--counter", "1", "--name", "v1",
        "-o", "v1.release")  # fmt: skip
    cli("p2pupdate", "release", "v2.tar.gz", "--key", key, "--counter", "2", "--name", "v2",
        "--chunk-size", str(chunk), "-o", "v2.release")  # fmt: skip
    cli("coordinator.cli", "allow", "v1.release", "v2.release", "--dir", "net",
        "-o", "allowlist.msgpack")  # fmt: skip
    cli("p2pupdate", "scope", "--artifact", sha, "--everyone", "--key",
        "net/keys/operator-1.pem", "-o", "scope.msgpack")  # fmt: skip

    # /status is read from the origin's own address, not loopback: it needs the read token
    (work / "read-token").write_text(READ_TOKEN + "\n")
    replica = procs.start(
        [*net.netns_exec(ORIGIN), sys.executable, "-m", "coordinator.cli", "serve", "--dir",
        "net", "--listen", f"{net.addr(ORIGIN)}:0", "--first-start",
        "--min-serving", str(n + 1000), "--read-token-file", "read-token"],
        cwd=work, log_path=work / "replica.log", stdout=subprocess.PIPE,
    )  # fmt: skip
    assert replica.stdout is not None
    m = re.search(rb"listening on (http://\S+)", replica.stdout.readline())
    if not m:
        raise BenchError(f"the replica did not start; see {work / 'replica.log'}")
    url = m.group(1).decode()
    log(f"ours: replica {url} in {net.ns(ORIGIN)}; publishing v1, v2 ({sha[:16]}...), allowlist")
    _cli(net, ORIGIN, "coordinator.cli", "publish", "v1.release", "v2.release",
         "allowlist.msgpack", "v2.tar.gz", "--url", url, cwd=work)  # fmt: skip

    def status() -> dict[str, Any]:
        def get() -> Any:
            req = urllib.request.Request(f"{url}/status")
            req.add_header("authorization", f"Bearer {READ_TOKEN}")
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        value: dict[str, Any] = in_netns(net.ns(ORIGIN), get)
        return value

    swarm_flags: list[str] = []
    if _node_help_has("--swarm-upload-cap"):
        # The core uploads at half the uplink it assumes, at most the cap: told the uplink is
        # twice the cap, it uses the cap, the rate tbf gives the link.
        swarm_flags = ["--swarm-upload-cap", str(int(rates.peer_up)),
                       "--swarm-uplink", str(int(2 * rates.peer_up))]  # fmt: skip
    else:
        log("ours: this tree's node has no --swarm-upload-cap: nodes fetch from the origin")
    states: dict[str, Path] = {}
    for name in net.nodes:
        state = work / "nodes" / name
        state.parent.mkdir(exist_ok=True)
        states[name] = state
        args = [
            "node", "--state-dir", str(state), "--initial-artifact", str(work / "v1.tar.gz"),
            "--work", "none", "--trust-root", "net/root.msgpack", "--coordinator", url,
            "--gossip-listen", f"{net.addr(name)}:{GOSSIP_PORT}", "--rtc", "off",
            "--gossip-round", "1s", "--gossip-notice-spread", "1s", "--report-interval", "2s",
            "--check-interval", "1h", "--probation", "60", *swarm_flags,
        ]  # fmt: skip
        procs.start([*net.netns_exec(name), sys.executable, "-m", "p2pupdate", *args],
                    cwd=work, log_path=work / "nodes" / f"{name}.log")  # fmt: skip
    node_procs = procs.procs[-n:]

    def alive() -> None:
        dead = [net.nodes[i] for i, p in enumerate(node_procs) if p.poll() is not None]
        if dead or replica.poll() is not None:
            raise BenchError(f"exited: {dead or 'the replica'}; logs in {work}")

    def node_status(name: str) -> tuple[float, dict[str, Any]] | None:
        return read_json(states[name] / "status")

    want = min(3, n - 1)

    def linked() -> bool:
        for name in net.nodes:
            st = node_status(name)
            g = st[1].get("gossip", {}) if st else {}
            if len(g.get("linked", ())) < want:
                return False
        return int(status()["replica"]["connected_nodes"]) == n

    t_start = time.monotonic()
    wait_until(f"{n} nodes connected to the replica, each linked to {want} peers", linked,
               max(120.0, 6.0 * n), alive)  # fmt: skip
    log(f"ours: {n} nodes up and linked in {time.monotonic() - t_start:.1f} s")

    cpu0 = cpu_seconds({p.pid for p in node_procs})
    t0 = time.time()
    _cli(net, ORIGIN, "coordinator.cli", "publish", "scope.msgpack", "--url", url, cwd=work)
    _cli(net, ORIGIN, "coordinator.cli", "nudge", "--artifact", sha, "--dir", "net",
         "--url", url, cwd=work)  # fmt: skip
    log(f"ours: v2 scoped to everyone and nudged (t0); waiting up to {timeout:g} s")

    completed: dict[str, float | None] = {name: None for name in net.nodes}
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in net.nodes}
    peers_max: dict[str, int] = {name: 0 for name in net.nodes}  # swarm peers seen at once

    def poll() -> bool:
        for name in net.nodes:
            st = node_status(name)
            if st is not None:
                mtime, value = st
                sw = value.get("swarm")
                if isinstance(sw, dict):
                    if completed[name] is None:
                        peers_max[name] = max(peers_max[name], int(sw.get("peers", 0)))
                    if not samples[name] or samples[name][-1][0] != mtime:
                        samples[name].append((mtime, int(sw.get("bytes_up", 0))))
                    art = sw.get("artifacts", {}).get(sha, {})
                    if completed[name] is None and art.get("completed_at") is not None:
                        completed[name] = float(art["completed_at"])
            if completed[name] is None and not _has_swarm(st):
                with contextlib.suppress(OSError):
                    completed[name] = StateDir(states[name]).store_path(sha).stat().st_mtime
        return all(v is not None for v in completed.values())

    _follow("ours", poll, completed, t0, timeout, alive,
            lambda: int(status()["origin"]["artifacts"].get(sha, {}).get("bytes", 0)))  # fmt: skip
    time.sleep(2.5)  # one more status file from each node: the last bytes_up
    poll()
    cpu = cpu_seconds({p.pid for p in node_procs}) - cpu0  # the fetch's, not the start's
    origin_bytes = int(status()["origin"]["artifacts"].get(sha, {}).get("bytes", 0))
    extra: dict[str, Any] = {"swarm": False, "cpu_s": round(cpu, 1)}
    arts = [st[1]["swarm"].get("artifacts", {}).get(sha, {})
            for st in map(node_status, net.nodes) if st is not None and _has_swarm(st)]  # fmt: skip
    if arts:
        extra = {
            **extra,
            "swarm": True,
            "node_origin_chunks": sum(int(a.get("origin_chunks", 0)) for a in arts),
            "node_chunks": sum(int(a.get("chunks", 0)) for a in arts),
            # The fewest swarm peers a node had at once while it fetched (0: it fetched
            # from the origin alone), from the status files read during the run.
            "node_peers_min": min(peers_max.values()),
        }
        blocks: dict[str, int] = {}  # the cores' block counts, summed (newer nodes only)
        for st in map(node_status, net.nodes):
            if st is not None and _has_swarm(st):
                for k, v in st[1]["swarm"].get("blocks", {}).items():
                    blocks[k] = blocks.get(k, 0) + int(v)
        if blocks:
            extra["block_counts"] = blocks
        why: dict[str, int] = {}  # chunks the nodes handed to the origin, by reason
        for st in map(node_status, net.nodes):
            if st is not None and _has_swarm(st):
                for k, v in st[1]["swarm"].get("origin_why", {}).items():
                    why[k] = why.get(k, 0) + int(v)
        if why:
            extra["origin_why"] = why
    run = Run(nodes=n, artifact_bytes=artifact.stat().st_size, origin_bytes=origin_bytes,
              t0=t0, completed_at=completed, samples=samples)  # fmt: skip
    return run, extra


def _has_swarm(st: tuple[float, dict[str, Any]] | None) -> bool:
    return st is not None and isinstance(st[1].get("swarm"), dict)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _follow(who: str, poll: Callable[[], bool], completed: dict[str, float | None], t0: float,
            timeout: float, alive: Callable[[], None], origin: Callable[[], int]) -> None:  # fmt: skip
    """Poll until every node completed or ``timeout``; progress on stderr every 5 s."""
    last = 0.0
    while True:
        done = poll()
        now = time.time()
        if done or now - last >= 5:
            k = sum(v is not None for v in completed.values())
            log(f"{who}: +{now - t0:5.1f} s  {k}/{len(completed)} hold v2, "
                f"origin sent {origin() / MiB:.1f} MiB")  # fmt: skip
            last = now
        if done:
            return
        alive()
        if now - t0 > timeout:
            log(f"{who}: timed out after {timeout:g} s")
            return
        time.sleep(0.5)


# -- libtorrent -------------------------------------------------------------------------------


def run_libtorrent(net: SwarmNet, work: Path, artifact: Path, chunk: int, rates: Rates,
                   timeout: float, procs: Procs) -> tuple[float, Run]:  # fmt: skip
    """libtorrent's job; returns its clients' CPU seconds and the run."""
    work.mkdir(parents=True)
    n = len(net.nodes)
    seed_dir = work / "seed"
    seed_dir.mkdir()
    data = seed_dir / artifact.name
    shutil.copyfile(artifact, data)
    torrent = work / "v2.torrent"
    _swarm_lt.make_torrent(data, torrent, chunk)
    py = [sys.executable, "-m", "scripts.bench._swarm_lt"]
    go = work / "go"
    seed = procs.start(
        net.netns_exec(SEED) + py + ["seed", "--torrent", str(torrent), "--dir", str(seed_dir),
        "--listen", net.addr(SEED), "--status", str(work / "seed.json"),
        "--up", str(int(rates.origin_up))],
        cwd=REPO, log_path=work / "seed.log",
    )  # fmt: skip
    for name in net.nodes:
        d = work / name
        d.mkdir()
        procs.start(
            net.netns_exec(name) + py + ["client", "--torrent", str(torrent), "--dir", str(d),
            "--listen", net.addr(name), "--status", str(work / f"{name}.json"),
            "--seed", net.addr(SEED), "--go", str(go), "--up", str(int(rates.peer_up)),
            "--down", str(int(rates.peer_down))],
            cwd=REPO, log_path=work / f"{name}.log",
        )  # fmt: skip
    clients = procs.procs[-n:]

    def alive() -> None:
        dead = [net.nodes[i] for i, p in enumerate(clients) if p.poll() is not None]
        if dead or seed.poll() is not None:
            raise BenchError(f"libtorrent exited: {dead or 'the seed'}; logs in {work}")

    def ready() -> bool:
        for name in (SEED, *net.nodes):
            st = read_json(work / f"{name}.json")
            if st is None or not st[1].get("ready"):
                return False
        return True

    wait_until("the libtorrent seed and clients", ready, 60.0, alive)
    cpu0 = cpu_seconds({p.pid for p in clients})
    t0 = time.time()
    go.touch()
    log(f"libtorrent: {n} clients told to start (t0); waiting up to {timeout:g} s")
    completed: dict[str, float | None] = {name: None for name in net.nodes}
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in net.nodes}

    def poll() -> bool:
        for name in net.nodes:
            st = read_json(work / f"{name}.json")
            if st is None:
                continue
            mtime, value = st
            samples[name].append((mtime, int(value.get("bytes_up", 0))))
            if completed[name] is None and value.get("completed_at") is not None:
                completed[name] = float(value["completed_at"])
        return all(v is not None for v in completed.values())

    def origin() -> int:
        st = read_json(work / "seed.json")
        return int(st[1].get("bytes_up", 0)) if st else 0

    _follow("libtorrent", poll, completed, t0, timeout, alive, origin)
    time.sleep(0.5)
    poll()
    cpu = cpu_seconds({p.pid for p in clients}) - cpu0
    return round(cpu, 1), Run(nodes=n, artifact_bytes=artifact.stat().st_size, origin_bytes=origin(), t0=t0,
               completed_at=completed, samples=samples)  # fmt: skip


# -- the bench --------------------------------------------------------------------------------


@contextlib.contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the bench like Ctrl-C: through every ``finally``."""

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="swarm.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    ap.add_argument("--nodes", type=int, default=24, help="nodes (default 24, at most 48)")
    ap.add_argument("--artifact-mib", type=float, default=16.0, help="artifact size (16)")
    ap.add_argument(
        "--chunk-kib", type=int, default=64, help="chunk and piece size (64: our default)"
    )
    ap.add_argument("--origin-up", type=rate, default=rate("2M"), help="origin uplink (2M)")
    ap.add_argument("--peer-up", type=rate, default=rate("512k"), help="peer uplink (512k)")
    ap.add_argument("--peer-down", type=rate, default=rate("2.5M"), help="downlink (2.5M)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="per run, seconds (default: 8x the bound, at least 120)")  # fmt: skip
    ap.add_argument("--no-libtorrent", action="store_true", help="run ours only")
    ap.add_argument("--only-libtorrent", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args(argv)
    if not 2 <= args.nodes <= 48:
        print("swarm.py: --nodes must be 2..48", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("swarm.py: needs root (network namespaces and tc)", file=sys.stderr)
        return 2
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            print(f"swarm.py: needs `{tool}` (iproute2, nftables)", file=sys.stderr)
            return 2
    lt = _swarm_lt.libtorrent()
    if lt is None and not args.no_libtorrent:
        print("swarm.py: libtorrent is not installed: pip install '.[bench]' "
              "(or --no-libtorrent to run ours only)", file=sys.stderr)  # fmt: skip
        return 2
    rates = Rates(origin_up=args.origin_up, peer_up=args.peer_up, peer_down=args.peer_down)
    size = int(args.artifact_mib * MiB)
    chunk = args.chunk_kib * 1024
    from scripts.bench._swarm_measure import t_min

    bound = t_min(args.nodes, size, rates.origin_up, rates.peer_up, rates.peer_down)
    timeout = args.timeout or max(120.0, 8 * bound)
    work = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
    log(f"work directory {work}; {args.nodes} nodes, {size / MiB:g} MiB, bound {bound:.1f} s")
    artifact = work / "v2.tar.gz"
    artifact.write_bytes(artifact_bytes(size))
    load_before = os.getloadavg()
    procs = Procs()
    out: dict[str, Any] = {}
    shape = dict(origin_up=rates.origin_up, peer_up=rates.peer_up, peer_down=rates.peer_down)
    code = 0
    keep = args.keep
    try:
        with stopped_by_signals(), swarm_net(args.nodes, rates, origin_hosts=(ORIGIN, SEED)) as net:
            log(f"netlab up: prefix {PREFIX}, {args.nodes} public homes")
            if not args.only_libtorrent:
                try:
                    ours, extra = run_ours(net, work / "ours", artifact, chunk, rates, timeout,
                                           procs)  # fmt: skip
                finally:
                    procs.close()
                out = {**figures(ours, upload_cap=rates.peer_up, **shape), **extra}
                log(f"ours: {json.dumps(out)}")
            if lt is not None and not args.no_libtorrent:
                try:
                    cpu, theirs = run_libtorrent(net, work / "lt", artifact, chunk, rates,
                                                 timeout, procs)  # fmt: skip
                finally:
                    procs.close()
                out["libtorrent"] = {
                    **figures(theirs, upload_cap=rates.peer_up, **shape),
                    "cpu_s": cpu,
                    "version": str(lt.__version__),
                }
                log(f"libtorrent: {json.dumps(out['libtorrent'])}")
    except BenchError as exc:
        keep = True
        print(f"swarm.py: {exc} (files kept in {work})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("swarm.py: interrupted; processes and namespaces removed", file=sys.stderr)
        return 130
    finally:
        procs.close()
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out.update(
        net="netlab",
        homes="public (netlab inet hosts, no NAT), tbf up/down per home, origin host tbf up",
        chunk_bytes=chunk,
        rates_bytes_s=shape,
        load_avg_before=[round(x, 2) for x in load_before],
        load_avg_after=[round(x, 2) for x in os.getloadavg()],
    )
    for col in (out, out.get("libtorrent", {})):
        if col.get("completed", args.nodes) != args.nodes:
            code = 1
    print(json.dumps(out, indent=None if args.json else 2))
    return code


if __name__ == "__main__":
    sys.exit(main())
