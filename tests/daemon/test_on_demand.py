"""Sessions on demand (P11): a node's channel to a replica opens when it has something to
say and closes when idle; status reports go on change and on the replica's heartbeat.

A real replica served in this trio run (``in_process``), a real ``CoordinatorLink`` over
real sockets; only the idle period is shortened (30 s -> 0.4 s) so the test takes ~2 s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate import clock
from p2pupdate.core import crypto, reporting
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.truststate import TrustFile
from tests.coordinator.service_helpers import Network, ahttp, artifact_of, in_process

IDLE = 0.4
RUNNING = artifact_of(b"running build")


def _link(tmp_path: Path, net: Network, url: str, fields: dict[str, Any]) -> CoordinatorLink:
    trust = TrustFile.open(tmp_path / "trust", initial_root=net.root_bytes, now=int(time.time()))
    coord = CoordinatorLink(
        [url],
        crypto.SigningKey.from_seed(os.urandom(32)),
        trust,
        pool="default",
        estimate=(10.0, 2.0, 3),
        report_interval=30.0,
        log=lambda _m: None,
        clock=clock.SYSTEM,
    )
    assert coord.persistent is False  # the default
    for link in coord.client.links:
        link.idle_close = IDLE
    coord.status_fields = lambda: dict(fields)
    coord.gossip_peers = lambda: 1  # "has a gossip peer": no documents poll on a timer
    return coord


async def _until(check: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def test_a_session_opens_to_report_and_closes_when_idle(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    fields: dict[str, Any] = {"version": "v1", "artifact": RUNNING, "state": "serving"}
    fields["held"] = None
    async with in_process(net) as (replica, url), trio.open_nursery() as nursery:
        assert (await ahttp("POST", f"{url}/v1/publish", net.allowlist(4, [RUNNING])))[0] == 200
        coord = _link(tmp_path, net, url, fields)
        link = coord.client.links[0]
        await nursery.start(coord.run)
        # the first report at start, answered with the heartbeat interval and the versions
        await _until(lambda: coord.heartbeat_s is not None)
        assert coord.heartbeat_s == reporting.MIN_HEARTBEAT  # a fleet of one
        assert coord.summary()["sessions"] == "on-demand"
        assert coord.node in replica.registry.nodes
        # the replica holds allowlist 4, this node none: fetched (no push, no timer poll)
        await _until(lambda: coord.allowlist is not None, 10.0)
        assert coord.allowlist is not None and coord.allowlist.version == 4
        assert coord.docs_polls == 1
        # nothing more to say: the session closes after the idle period (the report's
        # session first, then the one the documents fetch opened ~5 s later)
        await _until(lambda: link.idle_closes == link.connects == 2 and not link.is_connected)
        sent = coord.reports_sent
        # a wake-up with nothing changed opens no session and sends nothing
        coord.status_changed()
        await trio.sleep(IDLE)
        assert coord.reports_sent == sent and link.connects == 2
        # a change is reported: a new session, then closed again
        fields["state"] = "asking"
        coord.status_changed()
        await _until(lambda: coord.reports_sent == sent + 1 and link.connects == 3)
        await _until(lambda: link.idle_closes == 3 and not link.is_connected)
        assert replica.registry.nodes[coord.node].state == "asking"
        nursery.cancel_scope.cancel()


async def test_the_replica_sets_the_heartbeat_from_its_fleet(tmp_path: Path) -> None:
    """``StatusAck.next_report_s`` is ``reporting.heartbeat_interval`` of the registry:
    30 s for a small fleet, fleet / 200 at 10^6 (the registry's count stood in for)."""
    net = Network(tmp_path / "net")
    async with in_process(net) as (replica, _url):
        assert replica.status_ack("default").next_report_s == reporting.MIN_HEARTBEAT
        fake = dict.fromkeys((f"{i:064x}" for i in range(1_000_000)), None)
        replica.registry.nodes = fake  # type: ignore[assignment]
        ack = replica.status_ack("default")
        assert ack.next_report_s == 5000.0
        assert (ack.allowlist, ack.scope) == (0, 0)


async def test_a_node_without_gossip_peers_polls_the_documents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No gossip peer to bring documents: they are polled every check interval (here
    0.3 s; the first poll's spread cut to 0) -- with no report sent, so no probe."""
    monkeypatch.setattr("p2pupdate.daemon.coordinator.FIRST_DOCS_SPREAD", 0.0)
    net = Network(tmp_path / "net")
    async with in_process(net) as (_replica, url), trio.open_nursery() as nursery:
        coord = _link(tmp_path, net, url, {})
        coord.status_fields = dict  # nothing to report: no status report, no probe
        coord.docs_interval = 0.3
        coord.gossip_peers = lambda: 0
        await nursery.start(coord.run)
        await _until(lambda: coord.docs_polls >= 1)
        assert coord.allowlist is None  # nothing published yet
        assert (await ahttp("POST", f"{url}/v1/publish", net.allowlist(2, [RUNNING])))[0] == 200
        await _until(lambda: coord.allowlist is not None)
        assert coord.allowlist is not None and coord.allowlist.version == 2
        assert coord.reports_sent == 0
        nursery.cancel_scope.cancel()
