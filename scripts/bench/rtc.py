"""Measure rtc links between two network namespaces; prints one JSON object.

    .venv/bin/python scripts/bench/rtc.py [--setups 20] [--mib 64] [--lab]     (as root)

Default: namespaces ``p2pbA<pid>`` (10.77.0.1/24) and ``p2pbB<pid>`` (10.77.0.2/24) joined
by a veth pair (direct, host candidates).  ``--lab``: a netlab topology instead (two cone
homes, two strict homes, coturn on an inet host): the ``setup_*`` / ``throughput_*``
figures are then cone-cone (a direct srflx/prflx pair through the NATs), the ``relay_*``
ones strict-strict through TURN, with coturn's time-limited credentials minted by
``core/turn.py`` as a replica will.  Either way one child process per end runs in its namespace (``ip netns
exec``): A dials, B accepts, and the signed offer and answer blobs travel through this
process (each child's stdout is copied to the other's stdin), as through a relay.  A link
is set up and torn down ``--setups`` times, then ``--mib`` MiB go over one link in 1 MiB
frames, timed from the first frame to B's "got it all".

Figures: ``setup_p50_s`` / ``setup_p95_s`` (``dial_rtc`` called .. handshake done) split
into ``gather_p50_s`` (the offer's candidates gathered), ``answer_p50_s`` (offer relayed,
answer gathered and relayed back) and ``connect_p50_s`` (ICE, DTLS, SCTP, channel, link
handshake); ``throughput_mbit_s``; ``cpu_s_per_gbit`` (user+system CPU of both children
during the transfer, per 10^9 bits); ``udp_rcvbuf_drops`` (datagrams the kernels of the
two namespaces dropped for full socket buffers).  Namespaces are removed whatever happens.
``P2P_RTC_PROFILE=DIR`` writes cProfile files per child (trio and asyncio threads apart);
``P2P_RTC_SAMPLE=DIR`` instead samples both threads' stacks every millisecond and writes
``DIR/<role>.folded`` (one ``thread;frame;frame... count`` line per stack, the flame-graph
input format).  A sample is taken when the sampler gets the GIL, so a thread is seen at the
points where it releases it (C calls, syscalls): good for "which path", not for "how much".
``cpu_split_s_per_gbit`` is the honest split: each end's trio and asyncio threads' CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from p2pupdate.core.crypto import SigningKey  # noqa: E402
from p2pupdate.net import rtc  # noqa: E402

A = SigningKey.from_seed(b"A" * 32)
B = SigningKey.from_seed(b"B" * 32)
FRAME = 1024 * 1024


# -- children ---------------------------------------------------------------------------


class Lines:
    """Line-oriented stdin/stdout for trio (the relay's two pipes)."""

    def __init__(self) -> None:
        self.inp = trio.lowlevel.FdStream(os.dup(0))
        self.out = trio.lowlevel.FdStream(os.dup(1))
        self.buf = b""

    async def send(self, kind: str, payload: bytes) -> None:
        await self.out.send_all(kind.encode() + b" " + payload.hex().encode() + b"\n")

    async def receive(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = await self.inp.receive_some(65536)
            if not chunk:
                raise EOFError("relay closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return bytes.fromhex(line.split(b" ", 1)[1].decode())


def udp_drops() -> int:
    """UDP datagrams this namespace's kernel dropped for a full socket buffer."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _thread_time() -> float:
    return time.thread_time()


def split_cpu() -> tuple[float, float]:
    """CPU seconds of (the trio thread, the asyncio thread) so far."""
    from p2pupdate.net.asyncio_bridge import sidecar

    return time.thread_time(), sidecar().submit(_thread_time()).result()


async def dialer(setups: int, mib: int, ice: list[dict[str, Any]]) -> dict[str, Any]:
    io = Lines()
    marks: dict[str, float] = {}

    async def exchange(offer: bytes) -> bytes:
        marks["gathered"] = time.perf_counter()
        await io.send("blob", offer)
        answer = await io.receive()
        marks["answered"] = time.perf_counter()
        return answer

    async def dial() -> tuple[rtc.RtcLink, dict[str, float]]:
        t0 = time.perf_counter()
        link = await rtc.dial_rtc(key=A, peer=B.keyid, exchange=exchange, ice_servers=ice)
        t1 = time.perf_counter()
        return link, {
            "setup": t1 - t0,
            "gather": marks["gathered"] - t0,
            "answer": marks["answered"] - marks["gathered"],
            "connect": t1 - marks["answered"],
        }

    phases: list[dict[str, float]] = []
    path = ""
    for _ in range(setups):
        link, took = await dial()
        phases.append(took)
        path = link.path
        await link.send(b"bye")
        assert await link.receive() == b"bye"
        await link.aclose()
    link, _took = await dial()
    payload = os.urandom(FRAME)
    c0, t0, s0 = cpu(), time.perf_counter(), split_cpu()
    for _ in range(mib):
        await link.send(payload)
    assert await link.receive() == b"got it all"
    t1, c1, s1 = time.perf_counter(), cpu(), split_cpu()
    stats = link.stats()
    await link.aclose()
    return {
        "phases": phases,
        "path": path,
        "transfer_s": t1 - t0,
        "cpu_s": c1 - c0,
        "trio_cpu_s": s1[0] - s0[0],
        "asyncio_cpu_s": s1[1] - s0[1],
        "max_buffered": stats.max_buffered,
        "udp_drops": udp_drops(),
    }


async def acceptor(setups: int, mib: int, ice: list[dict[str, Any]]) -> dict[str, Any]:
    io = Lines()

    async def accept() -> rtc.RtcLink:
        offer = await io.receive()
        return await rtc.accept_rtc(
            offer, key=B, reply=lambda b: io.send("blob", b), expected_peer=A.keyid,
            ice_servers=ice,
        )  # fmt: skip

    for _ in range(setups):
        link = await accept()
        assert await link.receive() == b"bye"
        await link.send(b"bye")
        with trio.move_on_after(5):
            await _drain(link)
    link = await accept()
    c0 = None
    s0 = (0.0, 0.0)
    got = 0
    while got < mib * FRAME:
        frame = await link.receive()
        if c0 is None:
            c0, s0 = cpu(), split_cpu()
        got += len(frame)
    c1, s1 = cpu(), split_cpu()
    await link.send(b"got it all")
    stats = link.stats()
    with trio.move_on_after(5):
        await _drain(link)
    return {
        "cpu_s": c1 - (c0 or c1),
        "trio_cpu_s": s1[0] - s0[0],
        "asyncio_cpu_s": s1[1] - s0[1],
        "max_unread": stats.max_unread,
        "udp_drops": udp_drops(),
    }


async def _drain(link: rtc.RtcLink) -> None:
    """Until the dialer closes (so the next setup does not race this one's teardown)."""
    try:
        while True:
            await link.receive()
    except Exception:  # LinkClosedError: the other side closed
        await link.aclose()


async def _call(fn: Any) -> None:
    fn()


class Sampler:
    """Every ``interval`` s, the stacks of the trio (main) and asyncio threads, counted."""

    def __init__(self, interval: float = 0.001) -> None:
        from p2pupdate.net.asyncio_bridge import sidecar

        self.threads = {threading.main_thread().ident: "trio", sidecar().thread.ident: "asyncio"}
        self.counts: dict[str, int] = {}
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            for ident, frame in sys._current_frames().items():
                name = self.threads.get(ident)
                if name is None:
                    continue
                stack = []
                f: Any = frame
                while f is not None:
                    code = f.f_code
                    stack.append(f"{Path(code.co_filename).name}:{code.co_name}")
                    f = f.f_back
                key = ";".join([name, *reversed(stack)])
                self.counts[key] = self.counts.get(key, 0) + 1

    def dump(self, path: str) -> None:
        with open(path, "w") as out:
            for key, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
                out.write(f"{key} {n}\n")


def child(role: str, setups: int, mib: int, ice: list[dict[str, Any]]) -> None:
    fn = dialer if role == "dial" else acceptor
    prof_dir = os.environ.get("P2P_RTC_PROFILE")  # where the time goes: cProfile per child
    sample_dir = os.environ.get("P2P_RTC_SAMPLE")
    if sample_dir:
        sampler = Sampler()
        sampler.thread.start()
        result = trio.run(fn, setups, mib, ice)
        sampler.stop.set()
        sampler.thread.join()
        sampler.dump(os.path.join(sample_dir, f"{role}.folded"))
    elif prof_dir:
        import cProfile

        from p2pupdate.net.asyncio_bridge import sidecar

        prof, car_prof = cProfile.Profile(), cProfile.Profile()
        sidecar().submit(_call(car_prof.enable)).result()  # the asyncio thread's own profile
        result = prof.runcall(trio.run, fn, setups, mib, ice)
        sidecar().submit(_call(car_prof.disable)).result()
        prof.dump_stats(os.path.join(prof_dir, f"{role}.prof"))
        car_prof.dump_stats(os.path.join(prof_dir, f"{role}-asyncio.prof"))
    else:
        result = trio.run(fn, setups, mib, ice)
    sys.stdout.write("result " + json.dumps(result).encode().hex() + "\n")
    sys.stdout.flush()


# -- parent -------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Start = Callable[[str, list[str]], "subprocess.Popen[bytes]"]


def run_pair(start: Start, setups: int, mib: int, ice: dict[str, list[Any]]) -> dict[str, Any]:
    """Run the dialer and the acceptor (``start(role, argv)`` puts each in its namespace),
    relay their blobs, and return both results, or raise RuntimeError."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for role in ("dial", "accept"):
            argv = [sys.executable, __file__, "--child", role, "--setups", str(setups),
                    "--mib", str(mib), "--ice", json.dumps(ice[role])]  # fmt: skip
            procs[role] = start(role, argv)

        def relay(src: str, dst: str) -> None:
            out, inp = procs[src].stdout, procs[dst].stdin
            assert out is not None and inp is not None
            for line in out:
                if line.startswith(b"result "):
                    results[src] = json.loads(bytes.fromhex(line.split()[1].decode()))
                    continue
                try:
                    inp.write(line)
                    inp.flush()
                except BrokenPipeError:
                    return
            with contextlib.suppress(OSError):  # src ended: so does dst's input (no hang)
                inp.close()

        threads = [
            threading.Thread(target=relay, args=("dial", "accept"), daemon=True),
            threading.Thread(target=relay, args=("accept", "dial"), daemon=True),
        ]
        for t in threads:
            t.start()
        for role, proc in procs.items():
            if proc.wait(timeout=600) != 0:
                raise RuntimeError(f"the {role} child failed")
        for t in threads:
            t.join(5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def figures(results: dict[str, Any], mib: int, prefix: str = "") -> dict[str, Any]:
    d, a = results["dial"], results["accept"]
    phases = d["phases"]

    def p50(name: str) -> float:
        return round(float(statistics.median(p[name] for p in phases)), 3)

    bits = mib * FRAME * 8
    out = {
        "path": d["path"],
        "setup_p50_s": p50("setup"),
        "setup_p95_s": round(pct([p["setup"] for p in phases], 0.95), 3),
        "gather_p50_s": p50("gather"),
        "answer_p50_s": p50("answer"),
        "connect_p50_s": p50("connect"),
        "throughput_mbit_s": round(bits / d["transfer_s"] / 1e6, 1),
        "cpu_s_per_gbit": round((d["cpu_s"] + a["cpu_s"]) / (bits / 1e9), 2),
        # where it goes: per Gbit, each end's trio thread and asyncio (aiortc) thread
        "cpu_split_s_per_gbit": {
            f"{end}_{thread}": round(r[f"{thread}_cpu_s"] / (bits / 1e9), 2)
            for end, r in (("dial", d), ("accept", a))
            for thread in ("trio", "asyncio")
        },
        "max_buffered_bytes": d["max_buffered"],
        "max_unread_bytes": a["max_unread"],
        "udp_rcvbuf_drops": d["udp_drops"] + a["udp_drops"],
    }
    return {prefix + k: v for k, v in out.items()}


def veth(args: argparse.Namespace) -> dict[str, Any]:
    """Direct, host candidates: two namespaces joined by a veth pair."""
    tag = str(os.getpid() % 100000)
    spaces = {"dial": f"p2pbA{tag}", "accept": f"p2pbB{tag}"}
    made: list[str] = []
    try:
        for ns in spaces.values():
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", spaces["dial"], "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        _ip("-n", spaces["dial"], "link", "set", "eth1", "netns", spaces["accept"])
        _ip("-n", spaces["accept"], "link", "set", "eth1", "name", "eth0")
        for i, ns in enumerate(spaces.values(), start=1):
            _ip("-n", ns, "addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

        def start(role: str, argv: list[str]) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                ["ip", "netns", "exec", spaces[role], *argv],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
            )  # fmt: skip

        results = run_pair(start, args.setups, args.mib, {"dial": [], "accept": []})
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
    out = {"mode": "veth", "setups": len(results["dial"]["phases"])}
    out.update(figures(results, args.mib))
    out.update(relay_setup_p50_s=None, relay_throughput_mbit_s=None,
               relay_note="--lab measures strict-strict via TURN")  # fmt: skip
    return out


LAB = {
    "inet": {"hosts": ["turn"]},
    "homes": [
        {"name": "a", "nat": "cone", "nodes": ["a1"]},
        {"name": "b", "nat": "cone", "nodes": ["b1"]},
        {"name": "c", "nat": "strict", "nodes": ["c1"]},
        {"name": "d", "nat": "strict", "nodes": ["d1"]},
    ],
}


def lab(args: argparse.Namespace) -> dict[str, Any]:
    """Two cone homes (direct) and two strict homes (through coturn) from netlab."""
    from coordinator.ice import IceConfig, IceServers
    from scripts.netlab import lab_up
    from scripts.netlab.coturn import turn_server
    from scripts.netlab.topology import parse_topology

    secret = os.urandom(16).hex()
    prefix = f"rb{os.getpid() % 4096:03x}"  # netlab: at most 5 characters
    out: dict[str, Any] = {"mode": "netlab"}
    with (
        lab_up(parse_topology(LAB), prefix) as built,
        turn_server(built, "turn", secret=secret) as turn,
    ):
        stun_url, turn_url = turn.urls()

        replica = IceServers(
            IceConfig(stun=(stun_url,), turn=(turn_url,), secret=secret.encode(), ttl=3600),
            wall=time.time,
        )

        def ice_for(node: str) -> list[dict[str, Any]]:
            """What a replica hands ``node``: STUN, then TURN with a credential it minted."""
            return [server.as_aiortc() for server in replica.answer(node).servers]

        for dial_node, accept_node, key in (("a1", "b1", ""), ("c1", "d1", "relay_")):
            nodes = {"dial": dial_node, "accept": accept_node}

            def start(
                role: str, argv: list[str], nodes: dict[str, str] = nodes
            ) -> subprocess.Popen[bytes]:
                return built.popen(
                    nodes[role], argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO
                )

            ice = {role: ice_for(node) for role, node in nodes.items()}
            results = run_pair(start, args.setups, args.mib, ice)
            out.update(figures(results, args.mib, key))
            out[f"{key}setups"] = len(results["dial"]["phases"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", type=int, default=20)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--lab", action="store_true", help="cone-cone and strict-strict via TURN")
    ap.add_argument("--json", action="store_true", help="(the output is always JSON)")
    ap.add_argument("--child", choices=("dial", "accept"), help=argparse.SUPPRESS)
    ap.add_argument("--ice", default="[]", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.setups, args.mib, json.loads(args.ice))
        return 0
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("rtc bench: needs root and iproute2 to make network namespaces", file=sys.stderr)
        return 2
    try:
        out = lab(args) if args.lab else veth(args)
    except RuntimeError as exc:
        print(f"rtc bench: {exc}", file=sys.stderr)
        return 1
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cpus, shared"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
