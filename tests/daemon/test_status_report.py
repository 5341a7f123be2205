"""The node checks its status report with the replica's own schema before it sends it.

P7 item 2: a report whose aggregate estimate a replica refuses closes the channel (the
replica cannot answer a request it cannot read), and the node came straight back.  Now
the estimate is built with ``coordproto.Estimate`` -- the class the replica decodes it
with -- and one that does not fit is left out of the report with one log line naming the
field and the value; the rest of the report is sent and the channel stays up.  A real
replica over real sockets (README "Protocol").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pupdate import clock
from p2pupdate.core import crypto
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.replica import QuorumClient
from p2pupdate.daemon.truststate import TrustFile

from ..coordinator.service_helpers import ZERO, Network, in_process

FIELDS = {"version": "v1", "artifact": ZERO, "state": "serving", "held": None}


@pytest.mark.parametrize(
    ("estimate", "shown"),
    [
        ({"capacity": -500.0, "load": 10.0, "serving": 3, "age": 1.0}, "got -500.0"),
        ({"capacity": math.nan, "load": 10.0, "serving": 3, "age": 1.0}, "got nan"),
        ({"capacity": 300.0, "load": math.inf, "serving": 3, "age": 1.0}, "got inf"),
    ],
    ids=["negative", "nan", "inf"],
)
async def test_an_estimate_the_replica_would_refuse_is_left_out_and_the_channel_stays_up(
    tmp_path: Path, estimate: dict[str, Any], shown: str
) -> None:
    net = Network(tmp_path / "net")
    lines: list[str] = []
    async with in_process(net) as (replica, url):
        link = _link(tmp_path, net, url, b"\x05", lines)
        link.status_fields = lambda: dict(FIELDS)
        link.estimate_source = lambda: dict(estimate)
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            await link.client.wait_connected(1, 10.0)
            (replica_link,) = link.client.links
            with trio.fail_after(10):  # a (re)connected node reports at once
                while link.node not in replica.registry.nodes:  # the rest of it arrived
                    await trio.sleep(0.01)
            assert replica_link.is_connected and replica_link.connects == 1
            nursery.cancel_scope.cancel()
    said = [line for line in lines if "estimate left out" in line]
    assert len(said) == 1, lines
    assert "field 'capacity'" in said[0] or "field 'load'" in said[0]
    assert said[0].endswith(shown), said[0]
    assert not [line for line in lines if "connection lost" in line]


async def test_an_ask_the_replica_would_refuse_is_not_sent(tmp_path: Path) -> None:
    """The same for an ask: a capacity the schema refuses is an error outcome (the updater
    backs off), one log line naming the value, and the channel stays up."""
    net = Network(tmp_path / "net")
    lines: list[str] = []
    async with in_process(net) as (_replica, url):
        store = net.trust()
        client = QuorumClient(
            [url], crypto.SigningKey.from_seed(b"\x06" * 32), lambda: store, log=lines.append
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.wait_connected(1, 10.0)
            with trio.fail_after(10):
                outcome = await client.ask(
                    pool="default",
                    from_artifact=ZERO,
                    to_artifact="ab" * 32,
                    allowlist_version=1,
                    scope_serial=1,
                    capacity=math.nan,
                    load=0.0,
                )
            (link,) = client.links
            assert link.is_connected and link.connects == 1
            nursery.cancel_scope.cancel()
    assert outcome.token is None and outcome.error.endswith("got nan"), outcome
    assert lines == [f"ask not sent: schema: {outcome.error.split('schema: ', 1)[1]}"], lines


@pytest.mark.parametrize("versions", [{"v1": 7.0, "v2": 2.5}, {f"v{i}": 1.0 for i in range(9)}])
async def test_the_gossip_version_counts_reach_the_replica_or_are_left_out(
    tmp_path: Path, versions: dict[str, float]
) -> None:
    """``versions_source`` (gossip's push-sum counts) rides on the status report; counts
    the replica would refuse (more than ``MAX_REPORTED_VERSIONS``) are left out alone."""
    net = Network(tmp_path / "net")
    lines: list[str] = []
    async with in_process(net) as (replica, url):
        link = _link(tmp_path, net, url, b"\x06", lines)
        link.status_fields = lambda: dict(FIELDS)
        link.versions_source = lambda: {"counts": dict(versions), "age": 2.0}
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            with trio.fail_after(10):
                while link.node not in replica.registry.nodes:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    got = replica.registry.version_counts.get(link.node)
    if len(versions) <= 8:
        assert got is not None and got[1] == versions
    else:
        assert got is None
        assert [line for line in lines if "version counts left out" in line], lines


def _link(tmp_path: Path, net: Network, url: str, seed: bytes, lines: list[str]) -> CoordinatorLink:
    """A real coordinator link of a node with key ``seed * 32`` to the replica at ``url``."""
    trust = TrustFile.open(
        tmp_path / "trust", initial_root=net.root_bytes, now=clock.SYSTEM.utc_now()
    )
    return CoordinatorLink(
        [url],
        crypto.SigningKey.from_seed(seed * 32),
        trust,
        pool="default",
        estimate=None,
        report_interval=3600.0,
        log=lines.append,
        clock=clock.SYSTEM,
    )
