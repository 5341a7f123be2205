"""Part 2 of ``scripts/demo``: a fleet of homes behind NAT updates itself (P14).

A netlab of 12 homes (cone and strict NAT, tc-shaped uplinks, 18 nodes), three coordinator
replicas (quorum 2) and coturn on the inet bridge.  Every node is started with only the
network bundle (P11: trust root, replicas, STUN/TURN, pool) and the demo's short timings
(probation, check and report intervals: ``NODE_FLAGS``, all printed).  No
``--initial-artifact``: each launcher builds its first slot from the installed package (v1
is this tree), and no aggregate stub: gate 3 weighs the gossip push-sum aggregate, so the
demo waits for its first epoch before it scopes v2.  Then:

1. v2 rolls out under ONE signed scope, a staged ramp (``p2pupdate scope --ramp``): a
   first stage holding only the named canary (the seed is chosen so that it is the one
   node in it), 25% at +30 s, everyone at +60 s; nobody publishes anything in between;
2. one replica is killed once the canary is on v2; the ramp goes on under the other two;
3. a bad v3 (fails its health check on probation) goes to everyone: the first nodes roll
   back by themselves, the breaker pauses v3; the blast radius and time to halt are printed.

Every figure comes from the real processes (node status files and state dirs, replicas'
``/status``).  Exit 0 only when every node ends on v2, no node ran v3 past probation (each
node's own state: v3 never promoted, and every node that started it rolled back before its
probation deadline) and the origin share is under 10%.  Everything started is stopped and every namespace deleted on exit,
failure, SIGTERM or Ctrl-C.  Without root or network namespaces: one line, exit 0.

Usage: python scripts/demo_homes.py WORKDIR
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from coordinator.cli import main as coordinator_main  # noqa: E402
from p2pupdate.cli import nodestatus  # noqa: E402
from p2pupdate.core import crypto, gates  # noqa: E402
from p2pupdate.core import documents as docs  # noqa: E402
from p2pupdate.launcher.state import StateDir, StateError  # noqa: E402
from scripts.netlab import in_netns, lab_up  # noqa: E402
from scripts.netlab.coturn import have_turnserver, turn_server  # noqa: E402
from scripts.netlab.topology import parse_topology  # noqa: E402
from tests.coordinator.service_helpers import Network, http  # noqa: E402
from tests.launcher.harness import FAST, Build, make_build, patched_tree  # noqa: E402
from tests.netlab.fleet import FleetNode, _kill_group  # noqa: E402

PREFIX = "dh"
HOMES = 12
TWO_NODE_HOMES = 6  # homes 1..6 have two nodes on their LAN: 18 nodes
UPLINK_KBIT = 20_000
TURN_SECRET = "demo-homes-turn-secret"
READ_TOKEN = "demo-homes-read-token"
REPLICAS = ("r1", "r2", "r3")


def _without(flags: tuple[str, ...], name: str) -> tuple[str, ...]:
    """``flags`` (pairs ``--flag value``) without ``name`` and its value."""
    pairs = zip(flags[::2], flags[1::2], strict=True)
    return tuple(a for flag, value in pairs if flag != name for a in (flag, value))


#: Every flag a node gets besides ``--bundle`` and ``--state-dir``: pacing only (the
#: harness's short probation and health checks, with its check interval replaced).
NODE_FLAGS = (
    *_without(FAST, "--check-interval"),
    "--work", "none", "--check-interval", "2", "--report-interval", "1", "--swap-margin", "5",
)  # fmt: skip
#: ``--origin-max-downloaders 1``: each origin serves one node per artifact at a time (the
#: rest are told to try peers), so the nodes of a stage that start together fetch from the
#: holders (the canary) instead of all going to the origin at once.
REPLICA_FLAGS = ("--max-concurrent", "6", "--min-serving", "0", "--lease-ttl", "40",
                 "--max-skew", "2", "--origin-max-downloaders", "1")  # fmt: skip
#: The network document's ``subnet_reporters``: the netlab gives every home's router a WAN
#: address in one /24 (198.18.0.0/24), where 12 real homes would be 12 subnets; at the
#: default 4, four nodes spoke for the fleet, and while they restarted into v2 (a restarted
#: node's first push-sum epoch counts little more than itself) gate 3 saw "serving 0".
REPORTERS = HOMES + TWO_NODE_HOMES
#: v2's ramp after its first (canary) stage: (seconds after the scope's issue, fraction).
RAMP_LATER = ((30, 0.25), (60, 1.0))
#: A stage's nodes have no priority over a later stage's once it is in force (they share
#: the lease budget), so a stage's wait may last into the next ones.
STAGE_TIMEOUT = 150.0
HALT_TIMEOUT = 60.0
#: A push-sum epoch is 50 gossip rounds (50 s at the default 1 s round); the first one a
#: node completes began before its links were up and may count a handful of nodes.
AGGREGATE_TIMEOUT = 150.0
#: The aggregate gate 3 is to weigh: one that counts at least this share of the fleet.
AGGREGATE_SHARE = 0.8


def skip_reason() -> str | None:
    """Why part 2 cannot run here (None: it can)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root (network namespaces need root)"
    missing = [t for t in ("ip", "nft", "tc") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    if not have_turnserver():
        return "coturn (turnserver) is not installed"
    probe = f"{PREFIX}probe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"network namespaces unavailable ({p.stderr.strip() or 'ip netns add failed'})"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def topology() -> dict[str, Any]:
    homes = []
    for i in range(1, HOMES + 1):
        name = f"h{i:02d}"
        nodes = [f"{name}a", f"{name}b"] if i <= TWO_NODE_HOMES else [f"{name}a"]
        homes.append({"name": name, "nat": "cone" if i % 2 else "strict", "nodes": nodes,
                      "uplink": {"rate_kbit": UPLINK_KBIT}})  # fmt: skip
    return {"inet": {"hosts": [*REPLICAS, "turn"]}, "homes": homes}


class Stop(Exception):
    """SIGTERM: unwind through every ``finally`` (the lab's teardown among them)."""


@dataclass
class Scene:
    lab: Any
    net: Network
    work: Path
    urls: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    nodes: list[FleetNode] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)
    last_origin: dict[str, dict[str, int]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    seen: dict[str, set[str]] = field(default_factory=dict)  # version -> node names seen on it
    #: (node name, artifact) -> the latest probation deadline seen in its ``pending`` file
    deadlines: dict[tuple[str, str], float] = field(default_factory=dict)

    # -- replicas ---------------------------------------------------------------------------

    def http(self, host: str, method: str, path: str, body: bytes | None = None) -> Any:
        url = f"{self.urls[host]}{path}"
        return in_netns(
            self.lab.ns(host), lambda: http(method, url, body, token=READ_TOKEN, timeout=20)
        )

    def live(self) -> list[str]:
        return [h for h in REPLICAS if h not in self.killed]

    def publish(self, *bodies: bytes) -> None:
        for host in self.live():
            for body in bodies:
                code, answer = self.http(host, "POST", "/v1/publish", body)
                if code != 200:
                    raise RuntimeError(f"{host} refused a document: {code} {answer}")

    def upload(self, build: Build) -> None:
        data = build.path.read_bytes()
        for host in self.live():
            code, answer = self.http(host, "PUT", f"/v1/artifacts/{build.sha}", data)
            if code != 200:
                raise RuntimeError(f"{host} refused the artifact: {code} {answer}")

    def status(self, host: str) -> dict[str, Any] | None:
        try:
            code, st = self.http(host, "GET", "/status")
        except OSError:
            return None
        return st if code == 200 and isinstance(st, dict) else None

    def origin_bytes(self) -> int:
        """Origin bytes sent by every replica (a killed one: its last figure)."""
        for host in self.live():
            st = self.status(host)
            if st:
                arts = st.get("origin", {}).get("artifacts", {})
                self.last_origin[host] = {a: int(v.get("bytes", 0)) for a, v in arts.items()}
        return sum(sum(v.values()) for v in self.last_origin.values())

    def origin_for(self, sha: str) -> int:
        self.origin_bytes()
        return sum(v.get(sha, 0) for v in self.last_origin.values())

    def aggregate(self, host: str, pool: str = "default") -> dict[str, Any] | None:
        """The replica's aggregate of ``pool`` (its ``/status``), None if it has none."""
        st = self.status(host)
        agg = ((st or {}).get("pools") or {}).get(pool, {}).get("aggregate")
        return agg if isinstance(agg, dict) else None

    def artifact(self, sha: str) -> dict[str, Any]:
        for host in self.live():
            st = self.status(host)
            if st:
                a = st.get("artifacts", {}).get(sha)
                return a if isinstance(a, dict) else {}
        return {}

    # -- nodes --------------------------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        out = {}
        for n in self.nodes:
            v = (n.status() or {}).get("version")
            if isinstance(v, str):
                out[n.name] = v
                self.seen.setdefault(v, set()).add(n.name)
        return out

    def links(self) -> tuple[dict[str, int], int]:
        kinds: dict[str, int] = {}
        relayed = 0
        for n in self.nodes:
            for kind in n.paths().values():
                kinds[kind] = kinds.get(kind, 0) + 1
            relayed += int(n.gossip().get("relayed_bytes") or 0)
        return {k: v // 2 or v for k, v in kinds.items()}, relayed  # each link seen from 2 ends

    def sample_pending(self) -> None:
        """Each node's ``pending`` swap (the launcher's file): the probation deadline of the
        attempt in force, kept per node and artifact for the end's probation check."""
        for n in self.nodes:
            try:
                p = StateDir(n.state_dir).read_pending()
            except (StateError, OSError, ValueError):
                continue
            if p is not None and p.deadline is not None:
                key = (n.name, p.artifact)
                self.deadlines[key] = max(p.deadline, self.deadlines.get(key, 0.0))


def start_replica(scene: Scene, k: int, host: str, stun: str, turn: str) -> None:
    work = scene.work
    secret = work / "turn-secret"
    secret.write_text(TURN_SECRET)
    secret.chmod(0o600)
    token = work / "read-token"
    token.write_text(READ_TOKEN + "\n")
    token.chmod(0o600)
    log = (work / f"replica-{host}.log").open("ab")
    proc: subprocess.Popen[str] = subprocess.Popen(
        ["ip", "netns", "exec", scene.lab.ns(host), sys.executable, "-m", "coordinator.cli",
         "serve", "--dir", str(scene.net.dir), "--replica", str(k),
         "--listen", f"{scene.lab.inet_addr(host)}:0", "--first-start",
         "--stun", stun, "--turn", turn, "--turn-secret-file", str(secret),
         "--read-token-file", str(token), *REPLICA_FLAGS],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=work, start_new_session=True,
    )  # fmt: skip
    scene.replicas[host] = proc
    assert proc.stdout is not None
    m = re.search(r"listening on (http://\S+)", proc.stdout.readline())
    if not m:
        raise RuntimeError(f"replica {host} did not start; see {work}/replica-{host}.log")
    scene.urls[host] = m.group(1)


def node_command(bundle: Path, state: Path) -> list[str]:
    """A node's whole command line: the bundle, its state dir and ``NODE_FLAGS``."""
    return [sys.executable, "-m", "p2pupdate", "node", "--bundle", str(bundle),
            "--state-dir", str(state), *NODE_FLAGS]  # fmt: skip


def start_node(scene: Scene, name: str, bundle: Path) -> None:
    state = scene.work / "nodes" / name
    state.mkdir(parents=True)
    key = crypto.SigningKey.from_seed(os.urandom(32))
    (state / "identity.pem").write_bytes(crypto.private_key_to_pem(key))
    (state / "identity.pem").chmod(0o600)
    log_path = scene.work / "nodes" / f"{name}.log"
    with log_path.open("ab") as log:
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", scene.lab.ns(name), *node_command(bundle, state)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=scene.work, start_new_session=True,
        )  # fmt: skip
    scene.nodes.append(FleetNode(name=name, node_id=key.keyid, state_dir=state, proc=proc,
                                 log_path=log_path, addr=scene.lab.addr(name)))  # fmt: skip


# -- the live table ------------------------------------------------------------------------------


class Table:
    def __init__(self, scene: Scene, sizes: dict[str, int]) -> None:
        self.scene = scene
        self.tty = sys.stdout.isatty()
        self.sizes = sizes  # sha -> bytes
        self.last = 0.0

    def tick(self, stage: str, leases_of: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        s = self.scene
        versions = s.versions()
        per: dict[str, int] = {}
        for v in versions.values():
            per[v] = per.get(v, 0) + 1
        art = s.artifact(leases_of)
        leases = int(art.get("leases") or 0)
        agg = s.aggregate(s.live()[0]) or {}
        serving = float(agg.get("serving") or 0)  # gate 3's view of the fleet (gossip)
        kinds, relayed = s.links()
        origin = s.origin_bytes()
        fetched = sum(per.get(v, 0) * size for v, size in self.sizes.items())
        peer = max(0, fetched - origin, s.samples[-1]["peer"] if s.samples else 0)
        t = now - s.t0
        s.samples.append({"t": t, "versions": per, "leases": leases, "origin": origin,
                          "peer": peer})  # fmt: skip
        vtxt = " ".join(f"{v}:{c}" for v, c in sorted(per.items()))
        ktxt = " ".join(f"{k}:{c}" for k, c in sorted(kinds.items())) or "-"
        line = (f"[{t:5.1f}s] {stage:<10} nodes {vtxt:<16} leases {leases} "
                f"serving~{serving:.0f} links {ktxt} "
                f"relayed {relayed // 1024} KiB origin {origin // 1024} KiB peer {peer // 1024} KiB")  # fmt: skip
        if self.tty:
            print("\r\033[K" + line, end="", flush=True)
        else:
            print(line, flush=True)

    def done(self) -> None:
        if self.tty:
            print(flush=True)


def wait(
    table: Table, stage: str, leases_of: str, check: Callable[[], bool], timeout: float
) -> float:
    t = time.monotonic()
    while not check():
        table.scene.sample_pending()
        dead = [n.name for n in table.scene.nodes if not n.alive()]
        if dead:
            raise RuntimeError(f"{stage}: node(s) {dead} exited")
        if time.monotonic() - t > timeout:
            table.tick(stage, leases_of, force=True)
            table.done()
            raise RuntimeError(f"{stage}: not done after {timeout:.0f} s")
        table.tick(stage, leases_of)
        time.sleep(0.3)
    table.scene.sample_pending()
    table.tick(stage, leases_of, force=True)
    table.done()
    return time.monotonic() - t


# -- the rollout ---------------------------------------------------------------------------------


def scope_cli(work: Path, net: Network, sha: str, serial: int, *how: str) -> tuple[bytes, str]:
    """One scope token, signed by the operator key with the existing CLI: its bytes and
    the CLI's own line saying what was signed."""
    out = work / f"scope-{serial}.msgpack"
    p = subprocess.run(
        [sys.executable, "-m", "p2pupdate", "scope", "--artifact", sha, *how,
         "--key", str(net.dir / "keys" / "operator-1.pem"), "--serial", str(serial),
         "-o", str(out)],
        check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    return out.read_bytes(), p.stdout.strip()


@dataclass(frozen=True)
class RampPlan:
    """v2's ramp: the seed, the stages ``(after s, fraction)`` and each stage's nodes."""

    seed: bytes
    stages: tuple[tuple[int, float], ...]
    members: tuple[frozenset[str], ...]  # node names admitted by each stage (cumulative)

    def arg(self) -> str:
        """The ``--ramp`` argument (fractions as exact decimal text: they round-trip)."""
        return ",".join(f"{after}:{fraction!r}" for after, fraction in self.stages)


def plan_ramp(ids: dict[str, str], canary: str) -> RampPlan:
    """The one ramp scope of v2: a first stage holding only ``canary`` (node name), then
    ``RAMP_LATER``.  A seeded fraction admits the nodes whose ``gates.fraction_point`` is
    lowest, so the seed is chosen (the first of a fixed sequence) to put the canary lowest,
    with 3 to 6 nodes in the 25% stage; the first stage's fraction is the smallest whole
    percent that admits the canary, checked with ``gates.in_fraction`` (the nodes' rule)."""
    for i in range(100_000):
        seed = hashlib.sha256(b"demo-homes v2 ramp %d" % i).digest()[:16]
        points = sorted((gates.fraction_point(seed, ids[n]), n) for n in ids)
        if points[0][1] != canary:
            continue
        first = next(
            (k / 100 for k in range(1, 25) if gates.in_fraction(seed, ids[canary], k / 100)),
            None,
        )
        stages = ((0, first), *RAMP_LATER) if first is not None else ()
        if not stages:
            continue
        members = tuple(
            frozenset(n for n in ids if gates.in_fraction(seed, ids[n], f)) for _, f in stages
        )
        if members[0] == {canary} and 3 <= len(members[1]) <= 6:
            return RampPlan(seed=seed, stages=stages, members=members)
    raise RuntimeError("no ramp seed puts the canary first")  # 1 in 18 seeds does


def release(scene: Scene, build: Build) -> None:
    now = int(time.time())
    rec = docs.Release.for_bytes(build.path.read_bytes(), name=build.version,
                                 counter=build.counter, chunk_size=64 * 1024,
                                 issued=now - 10, expires=now + 86400)  # fmt: skip
    scene.publish(rec.sign([scene.net.key("release")]).to_wire())
    scene.upload(build)


def plot(scene: Scene, out: Path, marks: list[tuple[float, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s["t"] for s in scene.samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for v in sorted({v for s in scene.samples for v in s["versions"]}):
        axes[0].plot(ts, [s["versions"].get(v, 0) for s in scene.samples], label=v)
    axes[0].set_ylabel("nodes")
    axes[0].legend()
    axes[1].plot(ts, [s["leases"] for s in scene.samples], color="tab:purple")
    axes[1].set_ylabel("leases")
    axes[2].plot(ts, [s["origin"] / 1024 for s in scene.samples], label="origin")
    axes[2].plot(ts, [s["peer"] / 1024 for s in scene.samples], label="peers")
    axes[2].set_ylabel("KiB (cumulative)")
    axes[2].set_xlabel("s")
    axes[2].legend()
    for t, label in marks:
        for ax in axes:
            ax.axvline(t, color="grey", lw=0.5)
        axes[0].annotate(label, (t, 0), rotation=90, fontsize=7)
    fig.suptitle("demo part 2: homes behind NAT")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def run(work: Path) -> int:
    t_start = time.monotonic()
    print(f"\n\n==== Part 2: {HOMES} homes behind NAT (files in {work})", flush=True)
    net = Network(work / "net", replicas=3, quorum=2, subnet_reporters=REPORTERS)
    builds = work / "builds"
    builds.mkdir()
    v2 = make_build(builds, "v2", 2)
    bad_dir = builds / "bad"
    bad_dir.mkdir()
    src = patched_tree(
        bad_dir,
        {
            "p2pupdate/daemon/health.py": lambda t: t.replace(
                "problems: list[str] = []",
                'problems: list[str] = ["injected: this build is broken"]',
            )
        },
    )
    v3 = make_build(bad_dir, "v3", 3, source=src)
    topo = parse_topology(topology())
    names = [n for h in topo.homes for n in h.nodes]
    with lab_up(topo, PREFIX) as lab, turn_server(lab, "turn", secret=TURN_SECRET) as turn:
        scene = Scene(lab=lab, net=net, work=work)
        try:
            return rollout(scene, turn.urls(), names, v2, v3, t_start)
        finally:
            for n in scene.nodes:
                n.kill()
            for proc in scene.replicas.values():
                _kill_group(proc)


@dataclass(frozen=True)
class Probation:
    """What one node's own state says about v3 (``p2pupdate status``'s report)."""

    name: str
    current: str | None  # the version of its current slot
    tried: bool  # it staged v3: a pending swap, a rollback or a sticky deny of it was seen
    deadline: float | None  # the latest probation deadline seen in its pending file
    rolled_back: float | None  # the wall time of its rollback of v3
    reason: str

    @property
    def ok(self) -> bool:
        """Never past probation: v3 not current, and a node that started it rolled back
        before the deadline of its probation."""
        if self.current != "v2":
            return False
        if not self.tried:
            return True
        return (
            self.deadline is not None
            and self.rolled_back is not None
            and self.rolled_back <= self.deadline
        )


def probation_of(scene: Scene, v3: Build) -> list[Probation]:
    out = []
    now = time.time()
    for n in scene.nodes:
        report = nodestatus.collect(n.state_dir, now=now)
        slots = report.get("slots") or {}
        current = (slots.get("current") or {}).get("version")
        pending = slots.get("pending") or {}
        denied = any(d.get("artifact") == v3.sha for d in slots.get("denied") or [])
        try:
            rollbacks = [r for r in StateDir(n.state_dir).read_rollbacks() if r.artifact == v3.sha]
        except (StateError, OSError, ValueError):
            rollbacks = []
        deadline = scene.deadlines.get((n.name, v3.sha))
        tried = (
            bool(rollbacks) or denied or deadline is not None or (pending.get("artifact") == v3.sha)
        )
        last = rollbacks[-1] if rollbacks else None
        out.append(Probation(
            name=n.name, current=current, tried=tried, deadline=deadline,
            rolled_back=last.time if last else None, reason=last.reason if last else "",
        ))  # fmt: skip
    return out


def _reached(t: float) -> bool:
    return time.monotonic() >= t


def rollout(scene: Scene, ice: tuple[str, str], names: list[str], v2: Build, v3: Build,
            t_start: float) -> int:  # fmt: skip
    work, net = scene.work, scene.net
    for k, host in enumerate(REPLICAS, 1):
        start_replica(scene, k, host, *ice)
    bundle = work / "network.bundle"
    with contextlib.redirect_stdout(io.StringIO()):
        code = coordinator_main(["bundle", "--dir", str(net.dir),
                                 *[a for h in REPLICAS for a in ("--url", scene.urls[h])],
                                 "--stun", ice[0], "--turn", ice[1], "-o", str(bundle)])  # fmt: skip
    if code != 0:
        raise RuntimeError("bundle failed")
    for name in names:
        start_node(scene, name, bundle)
    table = Table(scene, {"v2": v2.path.stat().st_size})
    n = len(names)
    cone = sum(1 for h in scene.lab.topology.homes if h.nat == "cone")
    print(f"{n} nodes in {HOMES} homes ({cone} cone, {HOMES - cone} strict, uplinks "
          f"{UPLINK_KBIT // 1000} Mbit/s), replicas {', '.join(REPLICAS)} (quorum 2), coturn; "
          f"v2 is {v2.path.stat().st_size // 1024} KiB", flush=True)  # fmt: skip
    cmd = node_command(Path("network.bundle"), Path("nodes/NAME"))
    print("  every node runs: p2pupdate " + " ".join(cmd[3:]), flush=True)
    print("  (the bundle only, plus pacing; no --initial-artifact: each launcher builds its "
          "first slot from the installed package, v1 = this tree; no --aggregate-stub: "
          "gate 3 weighs the gossip push-sum aggregate)", flush=True)  # fmt: skip
    print(f"  every replica runs: p2pupdate-coordinator serve ... {' '.join(REPLICA_FLAGS)}",
          flush=True)  # fmt: skip
    print(f"  network document: subnet_reporters {REPORTERS} (every home's WAN address is in "
          "the netlab's one /24)", flush=True)  # fmt: skip
    marks: list[tuple[float, str]] = []
    wait(table, "boot", v2.sha, lambda: len(scene.versions()) == n, 90)
    v1 = sorted(set(scene.versions().values()))
    print(f"  booted: every node on {', '.join(v1)} (its launcher's first slot)", flush=True)

    # gate 3 needs the fleet's own aggregate: every live replica holds a fresh one that
    # counts the booted fleet (serving nodes; the first epoch's may count only a few)
    def aggregated() -> bool:
        aggs = [scene.aggregate(h) for h in scene.live()]
        return all(
            a is not None
            and not a.get("stale")
            and a.get("reporters")
            and float(a.get("serving") or 0) >= AGGREGATE_SHARE * n
            for a in aggs
        )

    secs = wait(table, "aggregate", v2.sha, aggregated, AGGREGATE_TIMEOUT)
    agg = scene.aggregate(REPLICAS[0]) or {}
    print(f"  gossip aggregate after {secs:.1f} s more (push-sum epochs): serving "
          f"{float(agg.get('serving') or 0):.1f}, capacity {agg.get('capacity'):.0f}, load "
          f"{agg.get('load'):.0f}, from {agg.get('reporters')} reporters", flush=True)  # fmt: skip

    # v2: allowlisted, then ONE ramp scope for the whole rollout
    release(scene, v2)
    scene.publish(net.allowlist(1, [v2.sha]))
    ids = {x.name: x.id for x in scene.nodes}
    canary = scene.nodes[0].name  # one named canary: the only copy the origin sends
    ramp = plan_ramp(ids, canary)
    body, said = scope_cli(work, net, v2.sha, 1, "--ramp", ramp.arg(), "--seed", ramp.seed.hex())
    scope = docs.open_signed(docs.Scope, body, net.root).doc
    scene.publish(body)
    print(f"  signed once (operator key): {said}", flush=True)
    print(f"  the seed puts the named canary {canary} alone in stage 1; stages: "
          + "; ".join(f"+{a} s {f:.0%}: {len(m)} nodes" for (a, f), m in
                      zip(ramp.stages, ramp.members, strict=True)), flush=True)  # fmt: skip
    wall_to_mono = time.monotonic() - time.time()
    stage_time: list[tuple[str, float, float]] = []  # (name, in force at s, settled after s)

    def on_v2(members: frozenset[str]) -> Callable[[], bool]:
        def check() -> bool:
            versions = scene.versions()
            done = all(versions.get(m) == "v2" for m in members)
            return done and int(scene.artifact(v2.sha).get("leases") or 0) == 0

        return check

    for i, ((after, fraction), members) in enumerate(zip(ramp.stages, ramp.members, strict=True)):
        name = f"ramp {i + 1}/{len(ramp.stages)}"
        starts = scope.issued + after + wall_to_mono  # on this process's monotonic clock
        if time.monotonic() < starts:
            wait(table, "ramp", v2.sha, partial(_reached, starts), after + 10)
        marks.append((starts - scene.t0, f"{fraction:.0%}"))
        wait(table, name, v2.sha, on_v2(members), STAGE_TIMEOUT)
        stage_time.append((f"{name} ({fraction:.0%}, {len(members)} nodes)",
                           starts - scene.t0, time.monotonic() - starts))  # fmt: skip
        if i == 0:
            scene.killed.add("r3")
            _kill_group(scene.replicas["r3"])
            marks.append((time.monotonic() - scene.t0, "r3 killed"))
            print("  replica r3 killed: the ramp goes on with r1 and r2 (quorum 2)", flush=True)
    v2_origin = scene.origin_for(v2.sha)
    share = v2_origin / (n * v2.path.stat().st_size)

    # v3: broken, to everyone
    release(scene, v3)
    scene.publish(net.allowlist(2, [v2.sha, v3.sha]))
    t_bad = time.monotonic()
    marks.append((t_bad - scene.t0, "bad v3"))
    scene.publish(scope_cli(work, net, v3.sha, 2, "--everyone")[0])
    table.sizes["v3"] = v3.path.stat().st_size
    wait(table, "bad v3", v3.sha, lambda: bool(scene.artifact(v3.sha).get("paused")), HALT_TIMEOUT)
    halt = time.monotonic() - t_bad
    marks.append((time.monotonic() - scene.t0, "v3 paused"))
    art3 = scene.artifact(v3.sha)

    def rolled_back() -> bool:  # every node on v2 and no lease for v3 left anywhere
        back = all(v == "v2" for v in scene.versions().values())
        return back and int(scene.artifact(v3.sha).get("leases") or 0) == 0

    wait(table, "rollback", v3.sha, rolled_back, 60)
    kinds, relayed = scene.links()
    final = scene.versions()
    art3 = scene.artifact(v3.sha) or art3
    probation = probation_of(scene, v3)
    tried = [p for p in probation if p.tried]
    radius = len(tried)
    plot(scene, work / "timeline.png", marks)

    ok_v2 = len(final) == n and all(v == "v2" for v in final.values())
    ok_v3 = all(p.ok for p in probation)
    ok_share = share < 0.10
    print("\n== Figures (measured from the nodes' status files and state, the replicas' /status)")
    for label, at, secs in stage_time:
        print(f"  {label:<28} in force at {at:5.1f} s, its nodes on v2 {secs:5.1f} s later")
    print(f"  links by path kind: {kinds}; bytes relayed by TURN on the current links {relayed}")
    print(
        f"  v3 breaker: paused after {halt:.1f} s ({art3.get('paused_reason', '?')}); "
        f"failed reports {art3.get('failed')}"
    )
    print(
        f"  blast radius: {radius} of {n} nodes started v3 ({', '.join(p.name for p in tried) or 'none'}); "
        f"{n - radius} never left v2"
    )  # fmt: skip
    print("  probation, per node (its own state dir, as `p2pupdate status` reads it):")
    for p in tried:
        if p.deadline is not None and p.rolled_back is not None:
            left = p.deadline - p.rolled_back
            how = f"rolled back {left:.1f} s before its probation deadline ({p.reason})"
        else:
            how = f"deadline {p.deadline}, rollback {p.rolled_back}: NOT shown within probation"
        print(f"    {p.name}: started v3, {how}; current slot {p.current}")
    rest = [p for p in probation if not p.tried]
    print(f"    {len(rest)} others: never staged v3; current slot "
          f"{', '.join(sorted({str(p.current) for p in rest})) or '-'}")  # fmt: skip
    print(f"  every node on v2: {ok_v2}; no node ran v3 past probation: {ok_v3}; "
          f"timeline: {work}/timeline.png")  # fmt: skip
    verdict = "OK" if ok_v2 and ok_v3 and ok_share else "FAILED"
    print(
        f"Homes demo {verdict}: {n} nodes in {HOMES} homes moved v1 -> v2 under one signed "
        f"ramp, blast radius {radius}, halt {halt:.0f} s, origin share {share:.0%} "
        f"(total {time.monotonic() - t_start:.0f} s).",
        flush=True,
    )
    return 0 if verdict == "OK" else 1


def _on_term(signum: int, frame: Any) -> None:
    raise Stop(f"signal {signum}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    why = skip_reason()
    if why:
        print(f"Part 2 (homes behind NAT) skipped: {why}", flush=True)
        return 0
    work = Path(argv[0]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)
    try:
        return run(work)
    except (Stop, KeyboardInterrupt) as e:
        print(f"\ndemo_homes: stopped ({e or 'Ctrl-C'}); everything torn down", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"\ndemo_homes: FAILED: {e} (files in {work})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
