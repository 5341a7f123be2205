"""``p2pupdate-coordinator serve --stun URL --turn URL --turn-secret-file F [--turn-ttl D]``:
a real replica process hands an authenticated node the servers and a TURN credential for
its own node id; a flag that does not fit is one line on stderr, exit 2, no traceback,
and nothing made in the network directory (README "Gossip and links")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator.cli import render_status
from p2pupdate import clock
from p2pupdate.core import crypto, turn
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.truststate import TrustFile

from .service_helpers import REPO, Network, ReplicaProcesses, ahttp

STUN = "stun:127.0.0.1:3478"
TURN = "turn:127.0.0.1:3478?transport=udp"


def serve(net: Network, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "serve", "--dir", str(net.dir), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=False,
    )


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return Network(tmp_path_factory.mktemp("ice") / "net")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--stun", "http://198.18.0.9"], "argument --stun: 'http://198.18.0.9' is not stun:"),
        (["--stun", "stun:h?transport=udp"], "takes no ?transport"),
        (["--turn", "turn:h:99999", "--turn-secret-file", "SECRET"], "port must be 1..65535"),
        (["--stun", "turn:h"], "--stun 'turn:h': expected a stun: URL"),
        (["--turn", "stun:h", "--turn-secret-file", "SECRET"], "expected a turn: or turns: URL"),
        (["--turn", TURN], "--turn needs --turn-secret-file"),
        (["--turn-secret-file", "SECRET"], "--turn-secret-file without --turn"),
        (["--turn", TURN, "--turn-secret-file", "EMPTY"], "empty"),
        (["--turn", TURN, "--turn-secret-file", "BLANK"], "empty"),
        (["--turn", TURN, "--turn-secret-file", "MISSING"], "no such file"),
        (["--turn", TURN, "--turn-secret-file", "HUGE"], "limit"),
        (["--turn", TURN, "--turn-secret-file", "TWO"], "more than one line"),
        (["--turn", TURN, "--turn-secret-file", "SECRET", "--turn-ttl", "10s"], "60s .. 24h"),
        (["--turn", TURN, "--turn-secret-file", "SECRET", "--turn-ttl", "2d"], "60s .. 24h"),
        (["--stun", STUN] * (9), "at most 8 URLs"),
    ],
)
def test_a_flag_that_does_not_fit_is_one_line_and_exit_2(
    net: Network, tmp_path: Path, args: list[str], says: str
) -> None:
    files = {
        "SECRET": b"s3cret\n",
        "EMPTY": b"",
        "BLANK": b" \n\n",
        "HUGE": b"x" * (turn.MAX_SECRET_LEN + 10),
        "TWO": b"one\ntwo\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    args = [str(tmp_path / a) if a in (*files, "MISSING") else a for a in args]
    before = sorted(p.name for p in net.dir.iterdir())
    done = serve(net, "--listen", "127.0.0.1:0", *args)
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert sorted(p.name for p in net.dir.iterdir()) == before  # no replica-1/ made


async def test_a_replica_process_hands_a_node_stun_turn_and_its_own_credential(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """And relays a signal from that node to another one (both over the real channel)."""
    net = Network(tmp_path / "net")
    secret_file = tmp_path / "turn.secret"
    secret_file.write_bytes(b"  north-secret\n")
    secret_file.chmod(0o644)  # allowed, and said
    rp = replicas.start(
        net,
        1,
        "--stun",
        STUN,
        "--turn",
        TURN,
        "--turn",
        "turns:127.0.0.1:5349",
        "--turn-secret-file",
        str(secret_file),
        "--turn-ttl",
        "10m",
    )
    got: list[tuple[str, bytes]] = []
    arrived = trio.Event()

    def on_signal(sender: str, data: bytes) -> None:
        got.append((sender, data))
        arrived.set()

    def node(seed: int, **kw: Any) -> CoordinatorLink:
        trust = TrustFile.open(
            tmp_path / f"trust-{seed}", initial_root=net.root_bytes, now=int(time.time())
        )
        return CoordinatorLink(
            [rp.url],
            crypto.SigningKey.from_seed(bytes([seed]) * 32),
            trust,
            pool="default",
            estimate=None,
            report_interval=3600.0,
            log=lambda _m: None,
            clock=clock.SYSTEM,
            **kw,
        )

    link, other = node(9), node(10, on_signal=on_signal)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        await nursery.start(other.run)
        with trio.fail_after(20):
            await link.client.wait_connected(1, 20.0)
            await other.client.wait_connected(1, 20.0)
            before = int(time.time())
            servers = await link.ice_servers()
            after = int(time.time())
            assert await link.send_signal(other.node, b"offer")
            await arrived.wait()
        nursery.cancel_scope.cancel()
    assert got == [(link.node, b"offer")]
    assert servers[0] == {"urls": STUN}
    assert [s["urls"] for s in servers[1:]] == [TURN, "turns:127.0.0.1:5349"]
    expires_text, node = servers[1]["username"].split(":")
    assert node == link.node and before + 600 <= int(expires_text) <= after + 600
    cred = turn.mint(secret=b"north-secret", node=link.node, expires=int(expires_text))
    assert servers[1]["credential"] == servers[2]["credential"] == cred.password
    code, status = await ahttp("GET", f"{rp.url}/status")
    assert code == 200
    assert status["ice"] == {
        "configured": True,
        "stun": [STUN],
        "turn": [TURN, "turns:127.0.0.1:5349"],
        "turn_ttl": 600,
        "credentials_minted": 1,
    }
    assert "  ice:       1 STUN, 2 TURN (credentials 600 s, 1 minted)" in (
        render_status(rp.url, status).splitlines()
    )
    code, metrics = await ahttp("GET", f"{rp.url}/metrics")
    assert b"p2pupdate_coordinator_turn_credentials_minted_total 1.0" in metrics
    assert b"p2pupdate_coordinator_ice_configured 1.0" in metrics
    log = rp.log.read_text()
    assert "is readable by other users (mode 644); chmod 600 it" in log
    assert "north-secret" not in log
