"""The swarm bench's network: public homes on netlab's inet bridge, shaped by ``tc``.

Every node is a netlab inet host (its own namespace and a public 198.18.0.x address on the
inet bridge: a "public home", no NAT), because both contenders dial plain tcp between homes
(ours with ``--rtc off``; libtorrent over tcp, uTP off), and tcp cannot enter a netlab
``cone`` or ``strict`` home unasked.  Rates are the home's links, in the kernel:

* upload: a ``tbf`` on the host's own interface (its egress), at the node's up rate;
* download: a ``tbf`` on the bridge port that feeds the host (the bridge's egress towards
  it), at the node's down rate;
* the origin's host (our replica, or libtorrent's seed) gets the origin's up rate and an
  unshaped downlink.

``tbf`` counts whole frames (headers too), so the payload a node can move is a few per cent
under its rate.  netlab removes every namespace with the prefix at teardown, qdiscs and all.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from scripts.netlab.lab import Lab, down, namespaces
from scripts.netlab.topology import Topology

PREFIX = "bsw"


@dataclass(frozen=True, kw_only=True)
class Rates:
    """The rates the bench sets (bytes/s): what ``t_min_s`` is computed from."""

    origin_up: float
    peer_up: float
    peer_down: float


def _kbit(rate: float) -> int:
    return max(8, round(rate * 8 / 1000))


def tbf(ns: str, dev: str, rate: float) -> None:
    """Cap ``dev``'s egress in ``ns`` at ``rate`` bytes/s (burst ~10 ms, as netlab's)."""
    kbit = _kbit(rate)
    burst = max(1600, kbit * 1000 // 8 // 100)
    subprocess.run(
        ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{kbit}kbit",
         "burst", str(burst), "latency", "100ms"],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip


class SwarmNet:
    """The lab, its hosts by name and their addresses."""

    def __init__(self, lab: Lab, nodes: list[str]) -> None:
        self.lab = lab
        self.nodes = nodes

    def ns(self, name: str) -> str:
        return self.lab.ns(name)

    def addr(self, name: str) -> str:
        return self.lab.inet_addr(name)

    def netns_exec(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name)]


def node_names(n: int) -> list[str]:
    return [f"n{i:02d}" for i in range(1, n + 1)]


@contextlib.contextmanager
def swarm_net(n: int, rates: Rates, *, origin_hosts: tuple[str, ...]) -> Iterator[SwarmNet]:
    """Build the lab (prefix ``bsw``): ``origin_hosts`` shaped at the origin's up rate, ``n``
    node hosts at the peers' rates; torn down on every way out."""
    if namespaces(PREFIX):
        down(PREFIX)  # a run of this bench that was killed before its teardown
    lab = Lab(Topology(inet_hosts=(), homes=()), PREFIX)
    try:
        lab.build()
        inet = lab.ns("inet")
        for host in origin_hosts:
            lab.add_inet_host(host)
            tbf(lab.ns(host), f"{PREFIX}-e-{host}", rates.origin_up)
        names = node_names(n)
        for name in names:
            lab.add_inet_host(name)
            tbf(lab.ns(name), f"{PREFIX}-e-{name}", rates.peer_up)
            tbf(inet, f"{PREFIX}-p-{name}", rates.peer_down)
        yield SwarmNet(lab, names)
    finally:
        lab.close()
