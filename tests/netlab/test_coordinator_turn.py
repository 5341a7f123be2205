"""A real coturn (``use-auth-secret``) accepts the TURN credential a real replica minted for
an authenticated node, and refuses one the replica's clock says has expired.

The replica (``coordinator.server.Server`` on loopback, in this process) is configured as
``serve --turn URL --turn-secret-file F`` configures it, with the secret coturn runs
with; the node's ``CoordinatorLink.ice_servers`` asks it over the real node channel; the
username and password it got are used, as aiortc would, for a TURN Allocate from a node
behind its home's NAT.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator.ice import IceConfig
from coordinator.server import Server
from coordinator.service import Replica, ServiceConfig
from p2pupdate import clock
from p2pupdate.core import crypto
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.truststate import TrustFile
from scripts.netlab import Lab
from scripts.netlab.coturn import Turn, have_turnserver
from scripts.netlab.stun import A_XOR_RELAYED, allocate
from tests.coordinator.service_helpers import Network
from tests.netlab.conftest import TURN_SECRET, needs_netlab

pytestmark = [
    needs_netlab,
    pytest.mark.skipif(not have_turnserver(), reason="coturn (turnserver) is not installed"),
]


@contextlib.asynccontextmanager
async def replica(net: Network, ice: IceConfig, wall: Callable[[], float]) -> AsyncIterator[str]:
    config = ServiceConfig(network_dir=net.dir, first_start=True, ice=ice)
    rep = Replica(config, wall=wall)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(Server(rep).serve, "127.0.0.1", 0)
            yield f"http://127.0.0.1:{port}"
            nursery.cancel_scope.cancel()
    finally:
        rep.store.close()


async def minted(tmp: Path, net: Network, ice: IceConfig, wall: Callable[[], float]) -> Any:
    trust = TrustFile.open(tmp / "trust", initial_root=net.root_bytes, now=int(time.time()))
    async with replica(net, ice, wall) as url:
        link = CoordinatorLink(
            [url],
            crypto.SigningKey.from_seed(b"\x11" * 32),
            trust,
            pool="default",
            estimate=None,
            report_interval=3600.0,
            log=lambda _m: None,
            clock=clock.SYSTEM,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            with trio.fail_after(10):
                await link.client.wait_connected(1, 10.0)
                servers = await link.ice_servers()
            nursery.cancel_scope.cancel()
    return link.node, servers


def allocate_from(lab: Lab, node: str, turn: Turn, username: str, password: str) -> Any:
    sock = lab.socket(node)  # one socket per attempt: coturn binds a 5-tuple to a username
    try:
        sock.bind((lab.addr(node), 0))
        return allocate(sock, turn.server, username, password)
    finally:
        sock.close()


async def test_coturn_accepts_the_credential_a_replica_minted_and_refuses_an_expired_one(
    lab: Lab, turn: Turn, tmp_path: Path
) -> None:
    net = Network(tmp_path / "net")
    stun_url, turn_url = turn.urls()
    ice = IceConfig(stun=(stun_url,), turn=(turn_url,), secret=TURN_SECRET.encode(), ttl=600)
    node, servers = await minted(tmp_path / "a", net, ice, time.time)
    assert [s["urls"] for s in servers] == [stun_url, turn_url]
    username, password = servers[1]["username"], servers[1]["credential"]
    assert username.endswith(f":{node}")
    granted = await trio.to_thread.run_sync(allocate_from, lab, "b1", turn, username, password)
    assert granted.ok, f"coturn refused the minted credential with {granted.code}"
    relayed_addr, _port = granted.xor_address(A_XOR_RELAYED)
    assert relayed_addr == turn.addr
    # the replica's clock decides the expiry: one an hour behind mints a dead credential
    _node, stale = await minted(
        tmp_path / "b", net, IceConfig(turn=(turn_url,), secret=TURN_SECRET.encode(), ttl=60),
        lambda: time.time() - 3600,
    )  # fmt: skip
    refused = await trio.to_thread.run_sync(
        allocate_from, lab, "b1", turn, stale[0]["username"], stale[0]["credential"]
    )
    assert not refused.ok and refused.code == 401
