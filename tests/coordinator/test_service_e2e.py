"""End to end: real node processes (``p2pupdate node``) and a real replica process.

Three nodes run v1 and ask one replica.  The scope names A and B; B's pool has no spare
capacity; C is outside the scope.  Only A moves to v2, and only through a departure token
the replica signed (fetched from the replica's origin, verified, drained, swapped,
confirmed, rejoined).  Every "no" is visible in ``status`` with its reason: B's
``capacity/no-spare-capacity`` (the replica refused it), C's ``scope/not-named`` (its
own gates held it; it reports why).  Then a scope for a build that is not on the
allowlist holds everyone back with ``allowlist/not-allowlisted``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from p2pupdate.core import crypto
from tests.launcher.conftest import Builds
from tests.launcher.harness import FAST, Nodes, wait_until

from .service_helpers import Network, ReplicaProcesses, http

#: Real processes (launcher + daemon groups): run by scripts/test, deselect with -m 'not slow'.
pytestmark = pytest.mark.slow

WAIT = 60.0


def _wait(what: str, check: Any, timeout: float = WAIT) -> Any:
    return wait_until(what, check, timeout)


def _identity(state_dir: Path) -> str:
    state_dir.mkdir(parents=True)
    key = crypto.SigningKey.from_seed(os.urandom(32))
    path = state_dir / "identity.pem"
    path.write_bytes(crypto.private_key_to_pem(key))
    path.chmod(0o600)
    return key.keyid


def test_real_nodes_update_only_through_real_tokens(
    tmp_path: Path, nodes: Nodes, builds: Builds, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    v1, v2 = builds.get("v1", 1), builds.get("v2", 2)
    rp = replicas.start(
        net,
        1,
        "--lease-ttl",
        "40",
        "--max-skew",
        "2",
        "--max-concurrent",
        "1",
        "--min-serving",
        "0",
    )
    url = rp.url
    states = {name: tmp_path / f"node-{name}" for name in ("a", "b", "c")}
    ids = {name: _identity(d) for name, d in states.items()}
    v2_bytes = v2.path.read_bytes()
    for data in (
        net.release(v2_bytes, "v2", 2),
        net.allowlist(1, [v2.sha]),
        net.scope(v2.sha, serial=1, kind="nodes", nodes=(ids["a"], ids["b"])),
    ):
        code, answer = http("POST", f"{url}/v1/publish", data)
        assert code == 200, answer
    code, answer = http("PUT", f"{url}/v1/artifacts/{v2.sha}", v2_bytes)
    assert code == 200, answer

    common = [
        "--initial-artifact",
        str(v1.path),
        "--work",
        "none",
        *FAST,
        "--coordinator",
        url,
        "--trust-root",
        str(net.dir / "root.msgpack"),
        "--swap-margin",
        "5",
        "--report-interval",
        "1",
    ]
    a = nodes.start(states["a"], [*common, "--aggregate-stub", "1000:100:10"], log_name="a.log")
    b = nodes.start(
        states["b"], [*common, "--pool", "tiny", "--aggregate-stub", "100:95:10"], log_name="b.log"
    )
    c = nodes.start(states["c"], [*common, "--aggregate-stub", "1000:100:10"], log_name="c.log")

    def status() -> dict[str, Any]:
        code, st = http("GET", f"{url}/status")
        assert code == 200
        return st

    # A moves to v2 through a token; B is refused for capacity; C is held by its scope.
    a.wait_running("v2", state=None)
    assert "GRANTED by the coordinator (token verified" in a.log()
    assert "--grant-all" not in a.log()
    _wait("A's rejoin to end its lease", lambda: status()["artifacts"][v2.sha]["leases"] == 0)
    _wait(
        "B refused for capacity",
        lambda: status()["refusals"].get("capacity/no-spare-capacity", 0) >= 1,
    )
    _wait("C held by scope", lambda: status()["held"].get("scope/not-named", 0) >= 1)
    st = status()
    art = st["artifacts"][v2.sha]
    assert art["nodes"] == 1 and art["refusals"]["capacity/no-spare-capacity"] >= 1
    assert st["nodes"]["versions"].get("v2") == 1
    assert "scope/not-named" in art["held"]
    b.wait_running("v1", state=None)
    c.wait_running("v1", state=None)
    assert "departure refused: capacity/no-spare-capacity" in b.log()
    assert "GRANTED" not in b.log() + c.log()

    # A scope for a build nobody allowlisted holds the nodes back at their next check (B
    # still waits out its refusal's retry_after), and status says why.
    other = "ab" * 32
    code, answer = http("POST", f"{url}/v1/publish", net.scope(other, serial=2))
    assert code == 200, answer
    _wait(
        "A and C held: not allowlisted",
        lambda: status()["held"].get("allowlist/not-allowlisted", 0) >= 2,
    )
    assert status()["artifacts"][other]["held"]["allowlist/not-allowlisted"] >= 2
    for node in (a, b, c):
        assert node.alive()


def test_a_bad_build_failed_by_two_real_nodes_pauses_its_rollout(
    tmp_path: Path, nodes: Nodes, builds: Builds, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    v1, bad = builds.get("v1", 1), builds.broken("health", "v2", 2)
    rp = replicas.start(
        net,
        1,
        "--lease-ttl",
        "40",
        "--max-skew",
        "2",
        "--max-concurrent",
        "2",
        "--min-serving",
        "0",
    )
    url = rp.url
    bad_bytes = bad.path.read_bytes()
    for data in (
        net.release(bad_bytes, "v2", 2),
        net.allowlist(1, [bad.sha]),
        net.scope(bad.sha, serial=1),
    ):
        code, answer = http("POST", f"{url}/v1/publish", data)
        assert code == 200, answer
    assert http("PUT", f"{url}/v1/artifacts/{bad.sha}", bad_bytes)[0] == 200
    args = [
        "--initial-artifact",
        str(v1.path),
        "--work",
        "none",
        *FAST,
        "--coordinator",
        url,
        "--trust-root",
        str(net.dir / "root.msgpack"),
        "--swap-margin",
        "5",
        "--report-interval",
        "1",
        "--aggregate-stub",
        "1000:100:10",
    ]
    started = [nodes.start(tmp_path / f"node-{i}", args, log_name=f"n{i}.log") for i in range(2)]

    def paused() -> dict[str, Any] | None:
        code, st = http("GET", f"{url}/status")
        assert code == 200
        art = st["artifacts"].get(bad.sha)
        return art if art and art["paused"] else None

    art = _wait("the breaker to pause the rollout", paused, timeout=90)
    assert art["failed"] == 2
    assert "circuit breaker: 2 of 2 nodes" in art["paused_reason"]
    assert "self-test" in art["paused_reason"] or "injected" in art["paused_reason"]
    for node in started:
        node.wait_running("v1", state=None)  # rolled back, still serving the old build
    # a third node now asks and is told why: broken, not "held back by scope"
    third = nodes.start(tmp_path / "node-3", args, log_name="n3.log")
    _wait("the third node's refusal", lambda: "breaker/paused" in third.log(), timeout=60)
    code, st = http("GET", f"{url}/status")
    assert st["refusals"].get("breaker/paused", 0) >= 1
