"""The node's side of a wait bound to its cause (P7 item 3): ``CoordinatorLink``.

A newer allowlist or scope than the one held goes to ``on_learned`` (the updater ends a
refusal's wait bound to the older one), once, and not the first ones after start; a
replica's ``SlotPush`` goes to ``on_slot`` only if a coordinator key of the root signed it
for this node; anything else is one log line and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from p2pupdate.clock import Clock
from p2pupdate.core import coordproto as proto
from p2pupdate.core import documents as docs
from p2pupdate.core.session import Signer
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.truststate import TrustFile
from tests.core.harness import NOW, Network, key_for


def _link(tmp: Path, net: Network, log: list[str]) -> CoordinatorLink:
    trust = TrustFile.open(tmp / "trust", initial_root=net.roots[1], now=NOW)
    return CoordinatorLink(
        ["http://127.0.0.1:9"],
        key_for("node"),
        trust,
        pool="p",
        estimate=None,
        report_interval=30.0,
        log=log.append,
        clock=Clock(wall=lambda: float(NOW), monotonic=lambda: 0.0),
    )


def test_only_newer_documents_reach_the_updater(tmp_path: Path) -> None:
    net = Network()
    link = _link(tmp_path, net, [])
    learned: list[docs.Allowlist | docs.Scope] = []
    link.on_learned = learned.append
    release, data = net.release("app-2", counter=2)
    link.take(data, source="test")
    first = (net.allowlist(1, [release.artifact]), net.scope(release.artifact, serial=4))
    for doc in first:
        assert link.take(doc, source="test")
        assert link.take(doc, source="test")  # the same again (another replica): no news
    # a node that never held one: the first allowlist and scope are news (published after
    # it started, they must not wait a whole check interval)
    assert [(type(d).__name__, d.floor_value) for d in learned] == [("Allowlist", 1), ("Scope", 4)]
    # after a restart, the ones it had accepted before are not news again (a fleet booting
    # together keeps its first checks spread); a newer one than that is, once
    learned.clear()
    again = _link(tmp_path, net, [])
    again.on_learned = learned.append
    for doc in first:
        assert again.take(doc, source="test")
    assert learned == []
    assert again.take(net.scope(release.artifact, serial=5), source="test")
    assert again.take(net.allowlist(2, [release.artifact]), source="test")
    assert [(type(d).__name__, d.floor_value) for d in learned] == [("Scope", 5), ("Allowlist", 2)]


async def test_a_slot_push_is_taken_only_signed_by_a_coordinator_for_this_node(
    tmp_path: Path,
) -> None:
    net = Network()
    log: list[str] = []
    link = _link(tmp_path, net, log)
    slots: list[proto.SlotFreed] = []
    link.on_slot = slots.append
    replica: Any = SimpleNamespace(base="http://replica")
    coordinator = net.keys["coordinator"][0]

    def push(signer: Any, node: str) -> proto.SlotPush:
        freed = proto.SlotFreed(replica=coordinator.keyid, node=node, pool="p", time=float(NOW))
        return proto.SlotPush.sign(Signer(signer), freed)

    await link._on_push(replica, push(key_for("not-a-coordinator"), link.node))
    await link._on_push(replica, push(coordinator, "ab" * 32))
    assert slots == [] and len(log) == 2
    assert all(line.startswith("slot push from http://replica rejected: ") for line in log)
    await link._on_push(replica, push(coordinator, link.node))
    assert [s.node for s in slots] == [link.node]
    assert "a departure slot of pool 'p' freed" in log[-1]
