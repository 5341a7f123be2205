"""netlab builds what it says: cone and strict NAT, mDNS on a LAN, delay, and clean removal.

Real namespaces, real nftables, real sockets (created inside the lab's namespaces by
``Lab.socket``).  "Did not arrive" is never a timeout alone: the strict-NAT test sends the
unsolicited packet first and a solicited one after it on the same path, and asserts the
first thing received is the solicited one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts.netlab import Lab, TopologyError, enter_netns, leftovers, load_topology, namespaces
from scripts.netlab.topology import parse_topology
from tests.netlab.conftest import LabFactory, fresh_prefix, needs_netlab

REPO = Path(__file__).resolve().parents[2]


def udp(lab: Lab, name: str, addr: str, port: int = 0) -> socket.socket:
    s = lab.socket(name)
    s.bind((addr, port))
    s.settimeout(5)
    return s


def test_topology_is_checked_before_anything_is_built(tmp_path: Path) -> None:
    good = {"homes": [{"name": "a", "nat": "cone", "nodes": ["a1"]}]}
    assert parse_topology(good).home("a").nodes == ("a1",)
    bad = [
        {"homes": [{"name": "a", "nat": "full", "nodes": ["a1"]}]},
        {"homes": [{"name": "a", "nodes": ["a1", "a2", "a3", "a4"]}]},
        {"homes": [{"name": "a", "nodes": ["a"]}]},  # a node named like its home
        {"homes": [{"name": "inet", "nodes": ["a1"]}]},
        {"homes": [{"name": "toolongname", "nodes": ["a1"]}]},
        {"homes": [{"name": "a", "nodes": ["a1"], "uplink": {"delay_ms": -1}}]},
        {"homes": [{"name": "a", "nodes": ["a1"], "colour": "red"}]},
        {"homes": []},
    ]
    for doc in bad:
        with pytest.raises(TopologyError):
            parse_topology(doc)
    big = tmp_path / "big.toml"
    big.write_text("# x\n" * 20_000)
    with pytest.raises(TopologyError, match="over"):
        load_topology(big)
    for example in (REPO / "scripts/netlab/topologies").glob("*.toml"):
        load_topology(example)


@needs_netlab
def test_cone_nat_lets_unsolicited_udp_reach_the_lan_host(lab: Lab) -> None:
    node = udp(lab, "a1", lab.addr("a1"))
    server = udp(lab, "peer", lab.inet_addr("peer"), 4000)
    stranger = udp(lab, "peer", lab.inet_addr("peer"), 4001)
    node.sendto(b"hello", server.getsockname())
    data, mapped = server.recvfrom(100)
    assert data == b"hello" and mapped[0] == lab.wan("a")
    # A packet from an endpoint the node never sent to, to its mapped port, reaches it.
    stranger.sendto(b"unsolicited", mapped)
    data, src = node.recvfrom(100)
    assert (data, src) == (b"unsolicited", stranger.getsockname())


@needs_netlab
def test_strict_nat_drops_unsolicited_udp_and_passes_replies(lab: Lab) -> None:
    node = udp(lab, "b1", lab.addr("b1"))
    server = udp(lab, "peer", lab.inet_addr("peer"), 4010)
    stranger = udp(lab, "peer", lab.inet_addr("peer"), 4011)
    node.sendto(b"hello", server.getsockname())
    data, mapped = server.recvfrom(100)
    assert data == b"hello" and mapped[0] == lab.wan("b")
    stranger.sendto(b"unsolicited", mapped)  # first on the wire ...
    server.sendto(b"reply", mapped)  # ... then the answer to the node's own flow
    data, src = node.recvfrom(100)
    assert (data, src) == (b"reply", server.getsockname())


@needs_netlab
def test_multicast_reaches_the_other_node_on_the_lan(lab: Lab) -> None:
    group = "224.0.0.251"
    listener = lab.socket("a2")
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((group, 5353))
    mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(lab.addr("a2")))
    listener.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    listener.settimeout(5)
    sender = udp(lab, "a1", lab.addr("a1"))
    sender.sendto(b"mdns?", (group, 5353))
    data, src = listener.recvfrom(100)
    assert (data, src[0]) == (b"mdns?", lab.addr("a1"))


def _rtt(lab: Lab, node: str, echo: socket.socket) -> float:
    client = udp(lab, node, lab.addr(node))
    best = float("inf")
    for _ in range(3):
        start = time.monotonic()
        client.sendto(b"ping", echo.getsockname())
        data, src = echo.recvfrom(100)
        echo.sendto(data, src)
        client.recvfrom(100)
        best = min(best, time.monotonic() - start)
    return best


@needs_netlab
def test_uplink_delay_shows_in_the_round_trip(lab: Lab) -> None:
    echo = udp(lab, "peer", lab.inet_addr("peer"), 4020)
    delayed, plain = _rtt(lab, "c1", echo), _rtt(lab, "b1", echo)
    assert delayed > 0.045, f"c1 has a 50 ms uplink delay, measured RTT {delayed * 1000:.1f} ms"
    assert plain < delayed


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.netlab", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_netlab
def test_down_removes_a_lab_and_a_lab_whose_up_was_killed() -> None:
    topo = str(REPO / "scripts/netlab/topologies/mixed.toml")
    prefix = fresh_prefix()
    try:
        up = _cli("up", topo, "--prefix", prefix)
        assert up.returncode == 0, up.stderr
        assert f"{prefix}-x-e" in namespaces(prefix)  # the delay line's namespace (a process)
        assert _cli("up", topo, "--prefix", prefix).returncode == 1  # never built twice
        shown = _cli("exec", prefix, "a2", "--", "ip", "-4", "-br", "addr")
        assert shown.returncode == 0 and "10.1.0.11/24" in shown.stdout, shown.stderr
        down = _cli("down", "--prefix", prefix)
        assert down.returncode == 0, down.stderr
        assert leftovers(prefix) == []
        # An `up` killed half-way: `down` finds what it left by the prefix alone.
        proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.netlab", "up", topo, "--prefix", prefix],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while len(namespaces(prefix)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling for a state to appear, not proof of an absence
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert namespaces(prefix)
        assert _cli("down", "--prefix", prefix).returncode == 0
        assert leftovers(prefix) == []
    finally:
        _cli("down", "--prefix", prefix)


def test_cli_errors_are_one_line() -> None:
    bad = _cli("down", "--prefix", "Bad-Prefix!")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    missing = _cli("up", "/nonexistent.toml", "--prefix", "zz")
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1, missing.stderr


def _tcp_upload_mbit_s(lab: Lab, node: str, size: int) -> float:
    """Send ``size`` bytes by TCP from ``node`` to the inet host; the receiver's rate."""
    listener = lab.socket("peer", type=socket.SOCK_STREAM)
    listener.bind((lab.inet_addr("peer"), 0))
    listener.listen()
    result: dict[str, float] = {}

    def receive() -> None:
        conn, _ = listener.accept()
        got, first = 0, 0.0
        while chunk := conn.recv(65536):
            first = first or time.monotonic()
            got += len(chunk)
        result["mbit_s"] = got * 8 / (time.monotonic() - first) / 1e6
        conn.close()

    receiver = threading.Thread(target=receive)
    receiver.start()
    client = lab.socket(node, type=socket.SOCK_STREAM)
    client.settimeout(20)
    client.connect(listener.getsockname())
    client.sendall(b"x" * size)
    client.close()
    receiver.join(20)
    listener.close()
    return result["mbit_s"]


def _loss_fraction(lab: Lab, node: str, echoes: int) -> float:
    """Stop-and-wait over the node's uplink until ``echoes`` came back: 1 - echoed/sent.

    Every echo counts, late ones too, so the 20 ms wait only decides when to send again.
    """
    echo = udp(lab, "peer", lab.inet_addr("peer"))
    client = udp(lab, node, lab.addr(node))
    client.settimeout(0.02)
    echo.settimeout(0.02)
    sent = got = 0
    while got < echoes:
        client.sendto(b"probe", echo.getsockname())
        sent += 1
        with contextlib.suppress(TimeoutError):
            data, src = echo.recvfrom(100)
            echo.sendto(data, src)
            client.recvfrom(100)
            got += 1
    return 1 - got / sent


@needs_netlab
def test_uplink_rate_and_loss(make_lab: LabFactory) -> None:
    lab = make_lab(
        {
            "inet": {"hosts": ["peer"]},
            "homes": [
                {"name": "d", "nodes": ["d1"], "uplink": {"rate_kbit": 2000}},
                {"name": "e", "nodes": ["e1"]},
                {"name": "f", "nodes": ["f1"], "uplink": {"loss_pct": 30}},
            ],
        }
    )
    capped = _tcp_upload_mbit_s(lab, "d1", 256 * 1024)
    free = _tcp_upload_mbit_s(lab, "e1", 256 * 1024)
    assert capped < 2.4, f"2000 kbit uplink, measured {capped:.2f} Mbit/s"
    assert free > 10 * capped
    # 30 % loss over ~140 tries: 0.1..0.5 is five standard deviations either side.
    lost = _loss_fraction(lab, "f1", 100)
    assert 0.1 < lost < 0.5, f"30 % uplink loss, measured {lost:.0%}"
    assert _loss_fraction(lab, "e1", 20) < 0.1  # a late echo still counts; only the last can miss


@needs_netlab
def test_a_conntrack_flush_forgets_the_mapping(lab: Lab) -> None:
    node = udp(lab, "b1", lab.addr("b1"))
    server = udp(lab, "peer", lab.inet_addr("peer"), 4030)
    node.sendto(b"hello", server.getsockname())
    _, mapped = server.recvfrom(100)
    server.sendto(b"before", mapped)
    assert node.recvfrom(100)[0] == b"before"  # the flow is tracked: replies pass
    lab.flush_conntrack("b")
    server.sendto(b"stale", mapped)  # the old flow is forgotten: now unsolicited
    node.sendto(b"again", server.getsockname())
    data, mapped = server.recvfrom(100)
    assert data == b"again" and mapped[0] == lab.wan("b")
    server.sendto(b"fresh", mapped)
    assert node.recvfrom(100)[0] == b"fresh"


@needs_netlab
def test_a_thread_entered_into_a_node_sees_only_its_interfaces(lab: Lab) -> None:
    seen: list[list[str]] = []

    def body() -> None:
        enter_netns(lab.ns("a1"))  # e.g. the asyncio thread that runs aiortc for one node
        seen.append(sorted(name for _, name in socket.if_nameindex()))

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == [["lo", f"{lab.prefix}-e-a1"]]
    assert f"{lab.prefix}-e-a1" not in {name for _, name in socket.if_nameindex()}


@needs_netlab
def test_cone_mapping_is_endpoint_independent_and_strict_is_not(lab: Lab) -> None:
    first = udp(lab, "peer", lab.inet_addr("peer"), 4040)
    second = udp(lab, "peer", lab.inet_addr("peer"), 4041)
    ports = {}
    for node in ("a1", "b1"):
        sock = udp(lab, node, lab.addr(node))
        sock.sendto(b"1", first.getsockname())
        sock.sendto(b"2", second.getsockname())
        ports[node] = (first.recvfrom(10)[1][1], second.recvfrom(10)[1][1])
    assert ports["a1"][0] == ports["a1"][1]  # cone: one mapping for every destination
    assert ports["b1"][0] != ports["b1"][1]  # strict: a new random port per destination


@needs_netlab
def test_a_host_added_to_inet_runs_commands_and_reaches_a_cone_node(lab: Lab) -> None:
    addr = lab.add_inet_host("coord")
    assert lab.inet_addr("coord") == addr
    with pytest.raises(TopologyError):
        lab.inet_addr("a1")  # a node is not on the inet bridge
    shown = lab.run("coord", ["ip", "-4", "-br", "addr"])
    assert f"{addr}/24" in shown.stdout
    coord = udp(lab, "coord", addr, 4050)
    node = udp(lab, "d1", lab.addr("d1"))
    node.sendto(b"hi", coord.getsockname())
    data, mapped = coord.recvfrom(100)
    assert (data, mapped[0]) == (b"hi", lab.wan("d"))
    coord.sendto(b"back", mapped)
    assert node.recvfrom(100) == (b"back", (addr, 4050))
