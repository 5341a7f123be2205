"""Real coturn on the lab's inet bridge: STUN sees a node as its home's WAN address, and
TURN accepts coturn's time-limited credentials (``use-auth-secret``) and refuses a wrong one.

The credential formula here is the one coturn documents (username ``expiry:node-id``,
password ``base64(HMAC-SHA1(secret, username))``); the test checks coturn against it.
"""

from __future__ import annotations

import socket
import time

import pytest

from scripts.netlab import Lab
from scripts.netlab.coturn import Turn, have_turnserver
from scripts.netlab.stun import A_XOR_RELAYED, allocate, binding
from tests.netlab.conftest import TURN_SECRET, needs_netlab, turn_credentials

pytestmark = [
    needs_netlab,
    pytest.mark.skipif(not have_turnserver(), reason="coturn (turnserver) is not installed"),
]


@pytest.mark.parametrize(("node", "home"), [("a1", "a"), ("b1", "b")])
def test_stun_sees_the_home_wan_address(lab: Lab, turn: Turn, node: str, home: str) -> None:
    sock = lab.socket(node)
    sock.bind((lab.addr(node), 0))
    mapped_addr, mapped_port = binding(sock, turn.server)
    assert mapped_addr == lab.wan(home)
    assert mapped_port > 0


def test_turn_allocate_with_time_limited_credentials(lab: Lab, turn: Turn) -> None:
    def fresh() -> socket.socket:
        # One socket per attempt: coturn binds a 5-tuple to the first username it saw.
        sock = lab.socket("b1")
        sock.bind((lab.addr("b1"), 0))
        return sock

    username, password = turn_credentials(TURN_SECRET, "b1", int(time.time()) + 600)
    refused = allocate(fresh(), turn.server, username, password + "x")
    assert not refused.ok and refused.code == 401
    expired = allocate(
        fresh(), turn.server, *turn_credentials(TURN_SECRET, "b1", int(time.time()) - 60)
    )
    assert not expired.ok and expired.code == 401
    granted = allocate(fresh(), turn.server, username, password)
    assert granted.ok, f"Allocate refused with {granted.code}"
    relayed_addr, relayed_port = granted.xor_address(A_XOR_RELAYED)
    assert relayed_addr == turn.addr and 49152 <= relayed_port <= 49999
