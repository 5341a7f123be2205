#!/usr/bin/env python3
"""One staged rollout step, timed: 3 real nodes in a ``--fraction`` scope (one JSON object).

    .venv/bin/python scripts/bench/stage.py [--workdir DIR] [--nodes 3] [--max-concurrent 1]

What it runs (the helpers of ``scripts/fleet_demo.py``, imported): a network with one real
coordinator replica (``--max-concurrent 1``, the default 300 s lease), v1 and v2 of this
tree built and allowlisted, ``--nodes`` real ``p2pupdate node`` processes on v1 with the
demo's short timings (a drain of at most 5 s, so each swap takes ~5 s).  Then the stage:
a ``--fraction 100%`` scope for v2 and a nudge are published, and the clock runs until every
node runs v2 and no lease is held.

Printed (stdout, one JSON object; the narration of the setup goes to stderr)::

    {"nodes": 3, "max_concurrent": 1, "stage_seconds": ..., "swap_seconds_median": ...,
     "refusals": ..., "asks": ...}

``stage_seconds``: from the scope's publish to the last node back on v2 (wall clock).
``swap_seconds_median``: per node, from leaving (draining) to serving v2 again.
``refusals`` / ``asks``: departure refusals and asks (refusals + grants) in the nodes' logs.
With a wait bound to its cause the stage is about ``nodes`` swaps back to back; with a
refused node sleeping its whole ``retry_after`` it is much longer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fleet_demo as fd  # type: ignore[import-not-found]  # scripts/, on sys.path above


def _stage(work: Path, n_nodes: int, max_concurrent: int, children: fd.Children) -> dict[str, Any]:
    c, p = fd.COORDINATOR, fd.P2PUPDATE
    fd.run(
        "init",
        [
            *c,
            "init",
            "net",
            "--replicas",
            "1",
            "--quorum",
            "1",
            "--pow-bits",
            "0",
            "--standing",
            "0",
        ],
        work,
        quiet=True,
    )
    shas: dict[str, str] = {}
    for counter, version in enumerate(("v1", "v2"), start=1):
        out = fd.run(
            "build",
            [*fd.BUILD, "--version", version, "--code-only", "-o", f"{version}.tar.gz"],
            work,
        )
        shas[version] = out.split()[0]
        fd.run(
            "release",
            [
                *p,
                *("release", f"{version}.tar.gz", "--key", "net/keys/release-1.pem"),
                *("--counter", str(counter), "--name", version, "-o", f"{version}.release"),
            ],
            work,
        )
    fd.run(
        "allow",
        [*c, "allow", "v1.release", "v2.release", "--dir", "net", "-o", "allowlist.msgpack"],
        work,
    )
    serve = ["serve", "--dir", "net", "--listen", "127.0.0.1:0", "--first-start"]
    serve += ["--max-skew", "2", "--max-concurrent", str(max_concurrent), "--min-serving", "1"]
    children.spawn("replica", [*c, *serve], work, work / "coordinator.log")

    def listening() -> str | None:
        m = re.search(r"listening on (http://\S+)", (work / "coordinator.log").read_text())
        return m.group(1) if m else None

    url = fd.wait_for("the replica to listen", listening, 30, children)
    docs = ["v1.release", "v2.release", "allowlist.msgpack", "v2.tar.gz"]
    fd.run("publish", [*c, "publish", *docs, "--url", url], work)
    nodes = [
        fd.Node(f"node{i}", work / "nodes" / f"node{i}", fd.free_port(), f"127.0.0.{i + 1}")
        for i in range(n_nodes)
    ]
    (work / "nodes").mkdir(exist_ok=True)
    for node in nodes:
        args = ["node", "--state-dir", f"nodes/{node.name}", "--initial-artifact", "v1.tar.gz"]
        args += ["--work", "kv", "--host", "127.0.0.1", "--port", str(node.port)]
        args += ["--coordinator", url, "--trust-root", "net/root.msgpack"]
        args += ["--aggregate-stub", f"400:100:{n_nodes}", *fd.NODE_TIMINGS]
        # A real fleet's hour between checks: only the nudge and the refusals' waits move it.
        i = args.index("--check-interval")
        args[i + 1] = "3600"
        node.child = children.spawn(
            node.name, [*p, *args], work, work / "nodes" / f"{node.name}.log"
        )

    def all_on_v1() -> bool:
        on_v1: int = fd.http_json(f"{url}/status")["nodes"]["versions"].get("v1", 0)
        return on_v1 == n_nodes and all((s := n.status()) and s.get("work") for n in nodes)

    fd.wait_for("the nodes on v1", all_on_v1, 60, children)
    v2 = shas["v2"]
    key = ["--key", "net/keys/operator-1.pem"]
    fd.run(
        "scope",
        [*p, "scope", "--artifact", v2, "--fraction", "100%", *key, "-o", "s.msgpack"],
        work,
    )
    t0 = time.monotonic()
    fd.run("publish scope", [*c, "publish", "s.msgpack", "--url", url], work)
    fd.run("nudge", [*c, "nudge", "--artifact", v2, "--dir", "net", "--url", url], work)
    left: dict[str, float] = {}
    back: dict[str, float] = {}
    while len(back) < n_nodes:
        now = time.monotonic()
        for node in nodes:
            st = node.status() or {}
            away = st.get("state") in ("draining", "swapping") or st.get("mode") == "probation"
            if away and node.name not in left:
                left[node.name] = now
            if st.get("version") == "v2" and st.get("mode") == "normal" and node.name not in back:
                back[node.name] = now
                left.setdefault(node.name, now)
        fd.wait_for("progress", lambda: True, 1, children)  # raises if a child died
        if now - t0 > 600:
            raise fd.DemoFailed(f"the stage did not finish in 600 s ({sorted(back)} done)")
        time.sleep(0.1)
    stage = max(back.values()) - t0
    logs = "".join((work / "nodes" / f"{n.name}.log").read_text() for n in nodes)
    refusals = logs.count("departure refused")
    grants = logs.count("GRANTED by the coordinator")
    return {
        "nodes": n_nodes,
        "max_concurrent": max_concurrent,
        "stage_seconds": round(stage, 1),
        "swap_seconds_median": round(statistics.median(back[k] - left[k] for k in back), 1),
        "refusals": refusals,
        "asks": refusals + grants,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="keep the run here (default: a temp dir)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--max-concurrent", type=int, default=1)
    args = ap.parse_args()
    children = fd.Children()
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                result = _stage(work, args.nodes, args.max_concurrent, children)
        except fd.DemoFailed as exc:
            print(f"stage.py: {exc}", file=sys.stderr)
            return 1
        finally:
            children.stop_all()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
