"""The whole recovery from a stolen coordinator key (issue P13 item 5, README "A stolen
key"), with the real parts: a ``serve`` process, the operator's commands
(``coordinator.cli.main``: ``allow``, ``publish``, ``rotate``), and a node's coordinator
link (``p2pupdate.daemon.coordinator.CoordinatorLink`` over a ``TrustFile`` on disk: the
daemon's own trust path) connected to the replica.

The thief holds a copy of replica 1's key (``q = 1``: one key signs an allowlist).  A
forged allowlist at version 2^40 freezes the node (it takes it: the key is genuine).  The
operator runs ``rotate --role coordinator --replace KEYID`` and publishes root v2 to the
replica, which pushes it to the node; the node then refuses the thief's next allowlist
(``signature-threshold``), takes the operator's new one (the floor reset), and after the
replica restarts with its new key file, gets a departure token from it that verifies.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from coordinator.cli import main as coordinator_main
from p2pupdate.clock import Clock
from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto, departure
from p2pupdate.core import documents as docs
from p2pupdate.core.errors import SignatureError
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.gossip import trust_verifier
from p2pupdate.daemon.truststate import TrustFile

from .service_helpers import ZERO, Network, ReplicaProcesses, artifact_of, http

BUILD = os.urandom(3000)
A = artifact_of(BUILD)


def operator(*args: str | Path) -> str:
    """An operator's command, in-process: its output (it must succeed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = coordinator_main([str(a) for a in args])
    assert code == 0, out.getvalue()
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for(what: str, check: Callable[[], object], timeout: float = 8.0) -> None:
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"no {what} after {timeout} s")


def forged_allowlist(stolen: crypto.SigningKey, version: int) -> bytes:
    now = int(time.time())
    doc = docs.Allowlist(version=version, issued=now - 10, expires=now + 86400, artifacts=())
    return doc.sign([stolen]).to_wire()


async def test_a_stolen_coordinator_key_is_rotated_out_and_the_fleet_goes_on_updating(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    release = tmp_path / "v2.release"
    release.write_bytes(net.release(BUILD, "v2", 2))
    port = free_port()
    first = replicas.start(net, 1, port=port)
    url = first.url
    operator("allow", release, "--dir", net.dir, "-o", tmp_path / "allow-v1")
    scope = tmp_path / "scope"
    scope.write_bytes(net.scope(A, serial=1))
    operator("publish", release, tmp_path / "allow-v1", scope, "--url", url)

    logs: list[str] = []
    trust = TrustFile.open(tmp_path / "node", initial_root=net.root_bytes, now=int(time.time()))
    link = CoordinatorLink(
        [url],
        crypto.SigningKey.from_seed(os.urandom(32)),
        trust,
        pool="default",
        estimate=(1000.0, 100.0, 50),
        report_interval=3600.0,
        log=logs.append,
        clock=Clock(wall=time.time, monotonic=trio.current_time),
        # kept open: the replica's push of root N+1 and its restart are what is watched
        # (on demand, a node takes N+1 with the documents its next heartbeat says are newer)
        persistent=True,
    )

    def updatable() -> bool:
        answer = link.evaluate(installed=ZERO, installed_counter=1)
        return answer.candidate is not None and answer.candidate.artifact == A

    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        await wait_for("the documents", updatable)

        # The theft: replica 1's key signs a frozen allowlist at 2^40; the node takes it
        # (and so does the replica: the key is genuine).  Nothing updates any more.
        stolen = net.key("coordinator", 1)
        forged = forged_allowlist(stolen, 2**40)
        assert link.take(forged, source="gossip")
        assert http("POST", f"{url}/v1/publish", forged)[0] == 200
        assert forged in await link.client.fetch_docs()
        assert not updatable()

        # The operator rotates the key out and publishes root v2 to the replica (still
        # running with the old key, which the node trusts): the replica pushes it.
        said = operator(
            "rotate", "--dir", net.dir, "--role", "coordinator", "--replace", stolen.keyid,
            "-o", tmp_path / "root-v2.msgpack",
        )  # fmt: skip
        assert "publish" in said and "restart replica 1" in said
        new_key = net.key("coordinator", 1)  # DIR/keys/coordinator-1.pem, the new file
        assert new_key.keyid != stolen.keyid
        assert (net.dir / "keys" / "coordinator-1.pem.retired-1").is_file()
        operator("publish", tmp_path / "root-v2.msgpack", "--url", url)
        await wait_for("root v2", lambda: trust.store.root.version == 2)
        assert any("took root v2 from the coordinator" in line for line in logs), logs
        assert link.allowlist is None and "allowlist" not in trust.store.floors
        # the replica no longer serves what the retired key signed (no restart needed)
        served = await link.client.fetch_docs()
        assert forged not in served and tmp_path.joinpath("root-v2.msgpack").read_bytes() in served

        # The thief's next allowlist is refused by the node and by the replica.
        again = forged_allowlist(stolen, 2**40 + 1)
        with pytest.raises(SignatureError) as refused:
            trust.store.verify(docs.Allowlist, again, int(time.time()))
        assert refused.value.rule == "signature-threshold"
        assert not link.take(again, source="gossip")
        code, answer = http("POST", f"{url}/v1/publish", again)
        assert (code, answer["error"]) == (400, "signature-threshold")

        # The operator's new allowlist (signed with the new key: `allow` reads DIR/keys)
        # is taken: v2, far below the thief's 2^40, since the floor was reset.
        operator("allow", release, "--dir", net.dir, "-o", tmp_path / "allow-v2")
        operator("publish", tmp_path / "allow-v2", "--url", url)
        await wait_for("allowlist v2", updatable)
        assert link.allowlist is not None and link.allowlist.version == 2
        assert tmp_path.joinpath("allow-v2").read_bytes() in await link.client.fetch_docs()

        # Replica 1 restarts on its new key file, the node reconnects (the replica's new
        # key is in root v2) and is granted a departure token it verifies.
        first.kill()
        second = replicas.start(net, 1, port=port, first=False)
        assert second.url == url
        await wait_for(
            "the new key's replica",
            lambda: [c.replica for c in link.client.connected()] == [new_key.keyid],
        )
        report = proto.StatusReport(
            version="v1",
            artifact=ZERO,
            state="serving",
            pool="default",
            estimate=proto.Estimate(capacity=1000.0, load=100.0, serving=50, age=0.0),
            held=None,
            addrs=(),
        )
        assert await link.client.send(report) == 1
        outcome = await link.client.ask(
            pool="default",
            from_artifact=ZERO,
            to_artifact=A,
            allowlist_version=2,
            scope_serial=1,
            capacity=10.0,
            load=5.0,
        )
        assert outcome.token is not None, outcome
        binding = departure.Binding(
            node=link.node,
            pool="default",
            from_artifact=ZERO,
            to_artifact=A,
            allowlist_version=2,
            scope_serial=1,
        )
        token = departure.verify_departure(
            trust.store, outcome.token, binding, now_wall=time.time()
        )
        assert token.to_artifact == A
        with pytest.raises(SignatureError):  # a node still on root v1 could not use it
            departure.verify_departure(net.trust(), outcome.token, binding, now_wall=time.time())
        nursery.cancel_scope.cancel()


def test_a_root_learned_by_gossip_drops_the_forged_allowlist_too(tmp_path: Path) -> None:
    """The same node, the new root coming as a gossip rumor (the daemon's verifier writes
    it into the ``TrustFile``), not from its replica: what the retired key signed is not
    used for the gates any more, and the operator's lower allowlist version is taken."""
    net = Network(tmp_path / "net")
    now = int(time.time())
    clock = Clock(wall=time.time, monotonic=lambda: 0.0)
    trust = TrustFile.open(tmp_path / "node", initial_root=net.root_bytes, now=now)
    link = CoordinatorLink(
        ["http://127.0.0.1:9"],  # never connected: documents are handed to it
        crypto.SigningKey.from_seed(os.urandom(32)),
        trust,
        pool="default",
        estimate=None,
        report_interval=3600.0,
        log=lambda _m: None,
        clock=clock,
    )
    for data in (net.release(BUILD, "v2", 2), net.allowlist(1, [A]), net.scope(A, serial=1)):
        assert link.take(data, source="the coordinator")
    stolen = net.key("coordinator", 1)
    assert link.take(forged_allowlist(stolen, 2**40), source="gossip")
    assert link.evaluate(installed=ZERO, installed_counter=1).candidate is None
    operator(
        "rotate", "--dir", net.dir, "--role", "coordinator", "--replace", stolen.keyid,
        "-o", tmp_path / "root-v2.msgpack",
    )  # fmt: skip
    accepted = trust_verifier(trust, clock)(tmp_path.joinpath("root-v2.msgpack").read_bytes())
    assert accepted.slot == "root" and accepted.new
    answer = link.evaluate(installed=ZERO, installed_counter=1)
    assert answer.candidate is None and answer.refusal is not None
    assert answer.refusal.reason == "no-allowlist"  # not the forged freeze
    new_keys = [net.key("coordinator", 1)]
    fresh = docs.Allowlist(version=2, issued=now - 10, expires=now + 3600, artifacts=(A,))
    assert link.take(fresh.sign(new_keys).to_wire(), source="the coordinator")
    answer = link.evaluate(installed=ZERO, installed_counter=1)
    assert answer.candidate is not None and answer.candidate.artifact == A
