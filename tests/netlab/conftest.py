"""The netlab fixture: build a lab from a topology, hand it to the test, always tear it down.

Teardown also checks that nothing with the lab's prefix is left (no namespace, no link in
the root namespace): a lab that leaks would break the next run's ``up``.  Labs need root,
``ip`` and ``nft``; without them the tests are skipped with the reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from p2pupdate.core import turn as turncred
from scripts.netlab import Lab, lab_up, leftovers
from scripts.netlab.coturn import Turn, have_turnserver, turn_server
from scripts.netlab.lab import REPO
from scripts.netlab.topology import load_topology, parse_topology
from tests.netlab.fleet import Fleet, fleet_up

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
MISSING = [tool for tool in ("ip", "nft", "tc") if shutil.which(tool) is None]
needs_netlab = pytest.mark.skipif(
    not IS_ROOT or bool(MISSING),
    reason=f"netlab needs root and ip, nft, tc (root: {IS_ROOT}, missing: {MISSING or 'none'})",
)
_counter = itertools.count()


def fresh_prefix() -> str:
    """A prefix no other test process uses now: 't' and 4 base-36 digits of pid and counter.

    A clash with a concurrent run is still possible (36**4 values); then ``up`` refuses the
    taken prefix and leaves the other run's lab alone.
    """
    n = (os.getpid() * 64 + next(_counter)) % 36**4
    digits = ""
    for _ in range(4):
        n, d = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[d] + digits
    return f"t{digits}"


LabFactory = Callable[[dict[str, Any]], Lab]


@pytest.fixture
def make_lab() -> Iterator[LabFactory]:
    """``make_lab(topology_dict)`` builds a lab; every lab made is removed after the test."""
    stack: list[Any] = []
    prefixes: list[str] = []

    def make(doc: dict[str, Any]) -> Lab:
        prefix = fresh_prefix()
        prefixes.append(prefix)
        cm = lab_up(parse_topology(doc), prefix)
        lab = cm.__enter__()
        stack.append(cm)
        return lab

    try:
        yield make
    finally:
        while stack:
            stack.pop().__exit__(None, None, None)
        for prefix in prefixes:
            assert leftovers(prefix) == [], f"lab {prefix} left {leftovers(prefix)}"


# One lab for most tests (building one takes ~1 s): a cone home with two nodes on its LAN,
# a strict home, a strict home with a 50 ms uplink delay, a second cone home, and two hosts
# on the inet bridge (coturn runs on `turn` for the tests that ask for the `turn` fixture).
SHARED = {
    "inet": {"hosts": ["peer", "turn"]},
    "homes": [
        {"name": "a", "nat": "cone", "nodes": ["a1", "a2"]},
        {"name": "b", "nat": "strict", "nodes": ["b1"]},
        {"name": "c", "nat": "strict", "nodes": ["c1"], "uplink": {"delay_ms": 50}},
        {"name": "d", "nat": "cone", "nodes": ["d1"]},
    ],
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if not IS_ROOT or MISSING:
        pytest.skip(f"netlab needs root and ip, nft, tc (root: {IS_ROOT}, missing: {MISSING})")
    prefix = fresh_prefix()
    try:
        with lab_up(parse_topology(SHARED), prefix) as built:
            yield built
    finally:
        assert leftovers(prefix) == [], f"lab {prefix} left {leftovers(prefix)}"


TURN_SECRET = "netlab-test-secret"


def turn_credentials(secret: str, node: str, expiry: int) -> tuple[str, str]:
    """coturn's time-limited credentials, minted by the replicas' own function."""
    cred = turncred.mint(secret=secret.encode(), node=node, expires=expiry)
    return cred.username, cred.password


@pytest.fixture(scope="module")
def turn(lab: Lab) -> Iterator[Turn]:
    if not have_turnserver():
        pytest.skip("coturn (turnserver) is not installed")
    with turn_server(lab, "turn", secret=TURN_SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The six homes of ``mixed.toml`` with a replica and coturn in inet, for a module's
    daemon tests (tests start their nodes with ``fleet.node`` and stop them when done)."""
    if not IS_ROOT or MISSING:
        pytest.skip(f"netlab needs root and ip, nft, tc (root: {IS_ROOT}, missing: {MISSING})")
    if not have_turnserver():
        pytest.skip("coturn (turnserver) is not installed")
    prefix = fresh_prefix()
    topology = load_topology(REPO / "scripts" / "netlab" / "topologies" / "mixed.toml")
    try:
        with (
            lab_up(topology, prefix) as built,
            fleet_up(built, tmp_path_factory.mktemp("fleet")) as running,
        ):
            yield running
    finally:
        assert leftovers(prefix) == [], f"lab {prefix} left {leftovers(prefix)}"
