"""Part 2 of ``scripts/demo``: a fleet of homes behind NAT updates itself (P14).

A netlab of 12 homes (cone and strict NAT, tc-shaped uplinks, 18 nodes), three coordinator
replicas (quorum 2) and coturn on the inet bridge.  Every node gets the network bundle
(P11: trust root, replicas, STUN/TURN, pool) plus the demo's short timings (probation,
check and report intervals, an aggregate stub so no push-sum epoch is waited out).  Then:

1. v2 rolls out in stages (named canaries, a fraction, everyone), peer to peer;
2. one replica is killed mid-rollout, the rollout goes on under the other two (quorum 2);
3. a bad v3 (fails its health check on probation) goes to everyone: the first nodes roll
   back by themselves, the breaker pauses v3; the blast radius and time to halt are printed.

Every figure comes from the real processes (node status files, replicas' ``/status``).
Exit 0 only when every node ends on v2, no node runs v3 past probation and the origin
share is under 10%.  Everything started is stopped and every namespace deleted on exit,
failure, SIGTERM or Ctrl-C.  Without root or network namespaces: one line, exit 0.

Usage: python scripts/demo_homes.py WORKDIR
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from coordinator.cli import main as coordinator_main  # noqa: E402
from p2pupdate.core import crypto  # noqa: E402
from p2pupdate.core import documents as docs  # noqa: E402
from scripts.netlab import in_netns, lab_up  # noqa: E402
from scripts.netlab.coturn import have_turnserver, turn_server  # noqa: E402
from scripts.netlab.topology import parse_topology  # noqa: E402
from tests.coordinator.service_helpers import Network  # noqa: E402
from tests.launcher.harness import FAST, Build, make_build, patched_tree  # noqa: E402
from tests.netlab.fleet import FleetNode, _kill_group  # noqa: E402

PREFIX = "dh"
HOMES = 12
TWO_NODE_HOMES = 6  # homes 1..6 have two nodes on their LAN: 18 nodes
UPLINK_KBIT = 20_000
TURN_SECRET = "demo-homes-turn-secret"
READ_TOKEN = "demo-homes-read-token"
REPLICAS = ("r1", "r2", "r3")
NODE_FLAGS = (
    *FAST,
    "--work", "none", "--check-interval", "2", "--report-interval", "1",
    "--gossip-round", "1s", "--aggregate-stub", "1000:100:10", "--swap-margin", "5",
)  # fmt: skip
REPLICA_FLAGS = ("--max-concurrent", "6", "--min-serving", "0", "--lease-ttl", "40",
                 "--max-skew", "2")  # fmt: skip
STAGE_TIMEOUT = 60.0
HALT_TIMEOUT = 60.0


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

    # -- replicas ---------------------------------------------------------------------------

    def http(self, host: str, method: str, path: str, body: bytes | None = None) -> Any:
        url = self.urls[host]

        def call() -> tuple[int, Any]:
            req = urllib.request.Request(f"{url}{path}", data=body, method=method)
            req.add_header("authorization", f"Bearer {READ_TOKEN}")
            try:
                with urllib.request.urlopen(req, timeout=20) as resp:
                    raw, code = resp.read(), resp.status
            except urllib.error.HTTPError as exc:
                raw, code = exc.read(), exc.code
            try:
                return code, json.loads(raw)
            except ValueError:
                return code, raw

        return in_netns(self.lab.ns(host), call)

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


def start_node(scene: Scene, name: str, bundle: Path, v1: Build) -> None:
    state = scene.work / "nodes" / name
    state.mkdir(parents=True)
    key = crypto.SigningKey.from_seed(os.urandom(32))
    (state / "identity.pem").write_bytes(crypto.private_key_to_pem(key))
    (state / "identity.pem").chmod(0o600)
    log_path = scene.work / "nodes" / f"{name}.log"
    with log_path.open("ab") as log:
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", scene.lab.ns(name), sys.executable, "-m", "p2pupdate",
             "node", "--bundle", str(bundle), "--state-dir", str(state),
             "--initial-artifact", str(v1.path), *NODE_FLAGS],
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
        kinds, relayed = s.links()
        origin = s.origin_bytes()
        fetched = sum(per.get(v, 0) * size for v, size in self.sizes.items())
        peer = max(0, fetched - origin, s.samples[-1]["peer"] if s.samples else 0)
        t = now - s.t0
        s.samples.append({"t": t, "versions": per, "leases": leases, "origin": origin,
                          "peer": peer})  # fmt: skip
        vtxt = " ".join(f"{v}:{c}" for v, c in sorted(per.items()))
        ktxt = " ".join(f"{k}:{c}" for k, c in sorted(kinds.items())) or "-"
        line = (f"[{t:5.1f}s] {stage:<10} nodes {vtxt:<16} leases {leases} links {ktxt} "
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
        dead = [n.name for n in table.scene.nodes if not n.alive()]
        if dead:
            raise RuntimeError(f"{stage}: node(s) {dead} exited")
        if time.monotonic() - t > timeout:
            table.tick(stage, leases_of, force=True)
            table.done()
            raise RuntimeError(f"{stage}: not done after {timeout:.0f} s")
        table.tick(stage, leases_of)
        time.sleep(0.3)
    table.tick(stage, leases_of, force=True)
    table.done()
    return time.monotonic() - t


# -- the rollout ---------------------------------------------------------------------------------


def scope_cli(work: Path, net: Network, sha: str, serial: int, *how: str) -> bytes:
    """One scope token, signed by the operator key with the existing CLI."""
    out = work / f"scope-{serial}.msgpack"
    subprocess.run(
        [sys.executable, "-m", "p2pupdate", "scope", "--artifact", sha, *how,
         "--key", str(net.dir / "keys" / "operator-1.pem"), "--serial", str(serial),
         "-o", str(out)],
        check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    return out.read_bytes()


def publish_stages(scene: Scene, sha: str, stages: list[tuple[str, tuple[str, ...]]],
                   serial: int, on_stage: Callable[[str, int], None]) -> int:  # fmt: skip
    """Roll ``sha`` out stage by stage: today one scope token per stage (the existing CLI),
    published at every live replica; ``on_stage(name, serial)`` waits for the stage to land.
    The one place to switch to a single ramp scope when that lands.  Returns the last serial."""
    for name, how in stages:
        serial += 1
        scene.publish(scope_cli(scene.work, scene.net, sha, serial, *how))
        on_stage(name, serial)
    return serial


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
    net = Network(work / "net", replicas=3, quorum=2)
    builds = work / "builds"
    builds.mkdir()
    v1 = make_build(builds, "v1", 1)
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
            return rollout(scene, turn.urls(), names, v1, v2, v3, t_start)
        finally:
            for n in scene.nodes:
                n.kill()
            for proc in scene.replicas.values():
                _kill_group(proc)


def rollout(scene: Scene, ice: tuple[str, str], names: list[str], v1: Build, v2: Build,
            v3: Build, t_start: float) -> int:  # fmt: skip
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
        start_node(scene, name, bundle, v1)
    table = Table(scene, {"v2": v2.path.stat().st_size})
    n = len(names)
    cone = sum(1 for h in scene.lab.topology.homes if h.nat == "cone")
    print(f"{n} nodes in {HOMES} homes ({cone} cone, {HOMES - cone} strict, uplinks "
          f"{UPLINK_KBIT // 1000} Mbit/s), replicas {', '.join(REPLICAS)} (quorum 2), coturn; "
          f"v2 is {v2.path.stat().st_size // 1024} KiB", flush=True)  # fmt: skip
    marks: list[tuple[float, str]] = []
    wait(table, "boot", v2.sha, lambda: len(scene.versions()) == n, 60)

    # v2: allowlisted, then scoped stage by stage
    release(scene, v2)
    scene.publish(net.allowlist(1, [v2.sha]))
    canaries = [scene.nodes[0].id]  # one named canary: the only copy the origin sends
    stage_time: dict[str, float] = {}

    def on_v2() -> int:
        return sum(1 for v in scene.versions().values() if v == "v2")

    def settled(target: Callable[[int], bool]) -> Callable[[], bool]:
        def check() -> bool:
            return target(on_v2()) and int(scene.artifact(v2.sha).get("leases") or 0) == 0

        return check

    def on_stage(name: str, serial: int) -> None:
        marks.append((time.monotonic() - scene.t0, name))
        if name == "canaries":
            stage_time[name] = wait(table, name, v2.sha, settled(lambda c: c >= 1), STAGE_TIMEOUT)
            scene.killed.add("r3")
            _kill_group(scene.replicas["r3"])
            marks.append((time.monotonic() - scene.t0, "r3 killed"))
            print("  replica r3 killed: the rollout goes on with r1 and r2 (quorum 2)", flush=True)
        elif name == "fraction":
            stage_time[name] = wait(table, name, v2.sha, settled(lambda c: c > 1), STAGE_TIMEOUT)
        else:
            stage_time[name] = wait(
                table, name, v2.sha, settled(lambda c: c == n), STAGE_TIMEOUT * 2
            )

    serial = publish_stages(scene, v2.sha, [
        ("canaries", ("--nodes", ",".join(canaries))),
        ("fraction", ("--fraction", "25%", "--seed", "00112233445566778899aabbccddeeff")),
        ("everyone", ("--everyone",)),
    ], 0, on_stage)  # fmt: skip
    v2_origin = scene.origin_for(v2.sha)
    share = v2_origin / (n * v2.path.stat().st_size)

    # v3: broken, to everyone
    release(scene, v3)
    scene.publish(net.allowlist(2, [v2.sha, v3.sha]))
    t_bad = time.monotonic()
    marks.append((t_bad - scene.t0, "bad v3"))
    scene.publish(scope_cli(work, net, v3.sha, serial + 1, "--everyone"))
    table.sizes["v3"] = v3.path.stat().st_size
    wait(table, "bad v3", v3.sha, lambda: bool(scene.artifact(v3.sha).get("paused")), HALT_TIMEOUT)
    halt = time.monotonic() - t_bad
    marks.append((time.monotonic() - scene.t0, "v3 paused"))
    art3 = scene.artifact(v3.sha)
    wait(table, "rollback", v3.sha, lambda: all(v == "v2" for v in scene.versions().values()), 60)
    time.sleep(0)  # the final figures below are read after every node is back on v2
    tried = sorted(scene.seen.get("v3", set()))
    # the status files polled catch most nodes on v3; the replicas' failure reports count
    # every node whose probation failed (one may have come and gone between two polls)
    radius = max(len(tried), int((scene.artifact(v3.sha) or art3).get("failed") or 0))
    kinds, relayed = scene.links()
    final = scene.versions()
    art3 = scene.artifact(v3.sha) or art3
    plot(scene, work / "timeline.png", marks)

    ok_v2 = len(final) == n and all(v == "v2" for v in final.values())
    ok_v3 = int(art3.get("nodes") or 0) == 0
    ok_share = share < 0.10
    print("\n== Figures (measured from the nodes' status files and the replicas' /status)")
    for name, secs in stage_time.items():
        print(f"  stage {name:<9} {secs:5.1f} s")
    print(f"  links by path kind: {kinds}; bytes relayed by TURN on the current links {relayed}")
    print(
        f"  v3 breaker: paused after {halt:.1f} s ({art3.get('paused_reason', '?')}); "
        f"failed reports {art3.get('failed')}"
    )
    print(
        f"  blast radius: {radius} of {n} nodes tried v3 (seen on it: {', '.join(tried) or 'none'}); "
        f"{n - radius} never left v2"
    )
    print(f"  every node on v2: {ok_v2}; none runs v3: {ok_v3}; timeline: {work}/timeline.png")
    verdict = "OK" if ok_v2 and ok_v3 and ok_share else "FAILED"
    print(
        f"Homes demo {verdict}: {n} nodes in {HOMES} homes moved v1 -> v2 in stages, "
        f"blast radius {radius}, halt {halt:.0f} s, origin share {share:.0%} "
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
