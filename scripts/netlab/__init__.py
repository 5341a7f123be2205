"""netlab: home networks behind NAT routers, built from a TOML file with network namespaces.

``python -m scripts.netlab --help`` for the CLI; tests use :func:`lab_up` (through the
fixture in ``tests/netlab/conftest.py``), which always tears the lab down.
"""

from scripts.netlab.lab import (
    Lab,
    NetlabError,
    down,
    enter_netns,
    in_netns,
    lab_up,
    leftovers,
    namespaces,
    status,
)
from scripts.netlab.topology import Home, Shaping, Topology, TopologyError, load_topology

__all__ = [
    "Home",
    "Lab",
    "NetlabError",
    "Shaping",
    "Topology",
    "TopologyError",
    "down",
    "enter_netns",
    "in_netns",
    "lab_up",
    "leftovers",
    "load_topology",
    "namespaces",
    "status",
]
