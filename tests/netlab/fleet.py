"""Real daemons in a netlab: ``p2pupdate node`` in node namespaces, a replica and coturn in inet.

A :class:`Fleet` holds one lab, one network directory (``p2pupdate-coordinator init``), one
build of this tree, one coturn (``use-auth-secret``) and one ``p2pupdate-coordinator
serve`` replica, both on inet hosts; tests start nodes in it (:meth:`Fleet.node`) and stop
them when done (:meth:`Fleet.stop_nodes`), so the expensive parts are shared by a module.

Every process runs in a new session inside its namespace (``ip netns exec`` execs the
command, so the session leader is the launcher, and the daemon it starts is in the same
process group): stopping one is ``killpg``.  The lab's teardown kills whatever is still in
its namespaces anyway, so nothing outlives a failed test.

The test process stays in the root namespace, which cannot reach the lab: HTTP to the
replica (publish, status) goes from a thread moved into the replica's host (``in_netns``).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from p2pupdate.core import crypto
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.core.trust import TrustStore
from p2pupdate.daemon.truststate import STORE_NAME
from p2pupdate.launcher.state import StateDir, StateError
from scripts.netlab import Lab, in_netns
from scripts.netlab.coturn import Turn, turn_server
from tests.coordinator.service_helpers import Network, http
from tests.launcher.harness import FAST, REPO, Build, make_build

T = TypeVar("T")

#: Coordinator and coturn hosts of the topologies under scripts/netlab/topologies.
COORD_HOST = "coord"
TURN_HOST = "turn"
TURN_SECRET = "netlab-fleet-secret"
#: The replica's read token (``serve --read-token-file``): /status is read from its inet
#: address, which is not loopback.
READ_TOKEN = "netlab-fleet-read-token"


def wait_until(
    what: str, check: Callable[[], T | None], timeout: float, tail: str | Callable[[], str] = ""
) -> T:
    """Poll ``check`` (every 0.1 s) until it is truthy; after ``timeout`` s fail naming
    ``what`` (and ``tail``: logs that say why; a callable is read at the timeout, so the
    message shows what the nodes did while it waited, not what they had done before)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            said = tail() if callable(tail) else tail
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{said}")
        time.sleep(0.1)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class FleetNode:
    """One ``p2pupdate node`` process group (launcher + daemon) inside a node namespace."""

    def __init__(self, *, name: str, node_id: str, state_dir: Path, proc: subprocess.Popen[Any],
                 log_path: Path, addr: str) -> None:  # fmt: skip
        self.name = name
        self.id = node_id
        self.state_dir = state_dir
        self.proc = proc
        self.log_path = log_path
        self.addr = addr

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} log (tail) ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status(self) -> dict[str, Any] | None:
        try:
            return StateDir(self.state_dir).read_status()
        except (StateError, OSError, ValueError):
            return None

    def gossip(self) -> dict[str, Any]:
        """The status file's ``gossip`` entry ({} until the daemon has written one)."""
        st = self.status() or {}
        g = st.get("gossip")
        return g if isinstance(g, dict) else {}

    def linked(self) -> set[str]:
        return set(self.gossip().get("linked", ()))

    def paths(self) -> dict[str, str]:
        """``status["gossip"]["paths"]``: peer node id -> path kind (contract C3)."""
        p = self.gossip().get("paths")
        return dict(p) if isinstance(p, dict) else {}

    def held_allowlist(self) -> int | None:
        """The allowlist version the node holds: the floor in its trust store on disk
        (``trust/store.msgpack``), written before the node uses a document it accepted."""
        try:
            store = TrustStore.from_bytes((self.state_dir / "trust" / STORE_NAME).read_bytes())
        except (OSError, P2PUpdateError):
            return None
        floor = store.floors.get("allowlist")
        return None if floor is None else floor.value

    def kill(self) -> None:
        _kill_group(self.proc)


class Fleet:
    """One lab's shared replica and coturn, and the nodes tests start in it."""

    def __init__(self, lab: Lab, tmp: Path, net: Network, build: Build, turn: Turn) -> None:
        self.lab = lab
        self.tmp = tmp
        self.net = net
        self.build = build
        self.turn = turn
        self.nodes: list[FleetNode] = []
        self.replica: subprocess.Popen[str] | None = None
        self.replica_log = tmp / "replica.log"
        self.url = ""
        self._allowlist = 0
        self._started = 0  # nodes ever started: names their state dirs and logs

    # -- the replica ----------------------------------------------------------------------

    def start_replica(self, *extra: str) -> str:
        """``serve`` on the coordinator host's inet address; return its URL."""
        addr = self.lab.inet_addr(COORD_HOST)
        secret_file = self.tmp / "turn-secret"
        secret_file.touch(mode=0o600)
        secret_file.write_text(self.turn.secret)
        stun_url, turn_url = self.turn.urls()
        ice = ["--stun", stun_url, "--turn", turn_url, "--turn-secret-file", str(secret_file)]
        # /status is read from the inet address, not loopback: the replica wants its token
        token_file = self.tmp / "read-token"
        token_file.touch(mode=0o600)
        token_file.write_text(READ_TOKEN + "\n")
        read = ["--read-token-file", str(token_file)]
        proc: subprocess.Popen[str] = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.lab.ns(COORD_HOST),
                sys.executable,
                "-m",
                "coordinator.cli",
                "serve",
                "--dir",
                str(self.net.dir),
                "--listen",
                f"{addr}:0",
                "--first-start",
                *ice,
                *read,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self.replica_log.open("ab"),
            stdin=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            cwd=self.tmp,
            start_new_session=True,
        )
        self.replica = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            _kill_group(proc)
            raise AssertionError(f"replica did not start: {line!r}\n{self.replica_tail()}")
        self.url = m.group(1)
        return self.url

    def replica_tail(self, lines: int = 30) -> str:
        try:
            text = self.replica_log.read_text(errors="replace")
        except OSError:
            text = ""
        return "--- replica log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """HTTP to the replica, from a thread inside its inet host."""
        url = f"{self.url}{path}"
        return in_netns(
            self.lab.ns(COORD_HOST),
            lambda: http(method, url, body, token=READ_TOKEN, timeout=20),
        )

    def replica_status(self) -> dict[str, Any]:
        code, st = self.http("GET", "/status")
        assert code == 200, st
        return st  # type: ignore[no-any-return]

    def connected(self) -> int:
        return int(self.replica_status()["replica"]["connected_nodes"])

    def publish_allowlist(self) -> int:
        """Sign the next allowlist (of this fleet's build) and publish it at the replica."""
        self._allowlist += 1
        code, answer = self.http(
            "POST", "/v1/publish", self.net.allowlist(self._allowlist, [self.build.sha])
        )
        assert code == 200, answer
        return self._allowlist

    # -- nodes ------------------------------------------------------------------------------

    def node(
        self, name: str, *, coordinator: bool = True, zeroconf: bool = False,
        extra: tuple[str, ...] = (),
    ) -> FleetNode:  # fmt: skip
        """Start node ``name`` of the topology in its namespace (gossip on its LAN address)."""
        addr = self.lab.addr(name)
        self._started += 1
        state = self.tmp / f"node-{name}-{self._started}"
        state.mkdir(parents=True)
        key = crypto.SigningKey.from_seed(os.urandom(32))
        identity = state / "identity.pem"
        identity.write_bytes(crypto.private_key_to_pem(key))
        identity.chmod(0o600)
        args = [
            "--state-dir", str(state), "--initial-artifact", str(self.build.path),
            "--work", "none", *FAST, "--check-interval", "1h",
            "--trust-root", str(self.net.dir / "root.msgpack"),
            "--gossip-listen", f"{addr}:0", "--gossip-round", "1s", "--report-interval", "2s",
            *(["--coordinator", self.url] if coordinator else []),
            *(["--zeroconf", addr] if zeroconf else []),
            *extra,
        ]  # fmt: skip
        log_path = self.tmp / f"{name}-{self._started}.log"
        with log_path.open("ab") as log:
            proc: subprocess.Popen[Any] = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.lab.ns(name),
                    sys.executable,
                    "-m",
                    "p2pupdate",
                    "node",
                    *args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, PYTHONPATH=str(REPO)),
                cwd=state.parent,
                start_new_session=True,
            )
        n = FleetNode(name=name, node_id=key.keyid, state_dir=state, proc=proc,
                      log_path=log_path, addr=addr)  # fmt: skip
        self.nodes.append(n)
        return n

    def tails(self, nodes: list[FleetNode] | None = None) -> str:
        return "\n".join(n.tail() for n in (self.nodes if nodes is None else nodes))

    def wait(self, what: str, check: Callable[[], T | None], timeout: float,
             nodes: list[FleetNode] | None = None) -> T:  # fmt: skip
        """:func:`wait_until` that fails with each node's gossip view (links, path kinds,
        links lost) and the nodes' and the replica's log tails."""

        def tail() -> str:
            views = "\n".join(
                f"{n.name} {n.id[:12]}: linked {[p[:12] for p in sorted(n.linked())]} "
                f"paths { {p[:12]: k for p, k in n.paths().items()} } "
                f"links_lost {n.gossip().get('links_lost')} "
                f"relayed_bytes {n.gossip().get('relayed_bytes')}"
                for n in (self.nodes if nodes is None else nodes)
            )
            return f"{views}\n{self.tails(nodes)}\n{self.replica_tail()}"

        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            dead = [n.name for n in (self.nodes if nodes is None else nodes) if not n.alive()]
            if dead:
                raise AssertionError(f"node(s) {dead} exited while waiting for {what}\n{tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail()}")
            time.sleep(0.1)

    def stop_nodes(self) -> None:
        for n in self.nodes:
            n.kill()
        self.nodes.clear()

    def close(self) -> None:
        self.stop_nodes()
        if self.replica is not None:
            _kill_group(self.replica)
            self.replica = None


@contextlib.contextmanager
def fleet_up(lab: Lab, tmp: Path) -> Iterator[Fleet]:
    """A network, a build, coturn and a replica in ``lab``; every process stopped at the end."""
    net = Network(tmp / "net")
    build_dir = tmp / "build"
    build_dir.mkdir()
    build = make_build(build_dir, "v1", 1)
    with turn_server(lab, TURN_HOST, secret=TURN_SECRET) as turn:
        fleet = Fleet(lab, tmp, net, build, turn)
        try:
            fleet.start_replica()
            yield fleet
        finally:
            fleet.close()
