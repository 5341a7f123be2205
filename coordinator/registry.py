"""The replica's node registry: who reported which version and state, and pool estimates.

Each status report registers the node (version, update state, why gates 1-2 hold it:
rollout progress for operators, kept in the database) and keeps its aggregate estimate
in memory -- one per node, the latest -- for ``policy.median_aggregate`` (README
"Capacity gate and departure tokens": the coordinator sees aggregate load only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from p2pupdate.core import admission
from p2pupdate.core import coordproto as proto

from . import policy
from .store import NodeRow, Store

__all__ = ["Registry"]


class Registry:
    def __init__(
        self,
        *,
        store: Store,
        clock: Callable[[], float],
        wall: Callable[[], float],
        config: policy.PolicyConfig,
    ) -> None:
        self.store = store
        self.clock = clock
        self.wall = wall
        self.policy = config
        self.nodes: dict[str, NodeRow] = {r.node: r for r in store.load_nodes()}
        self.estimates: dict[str, dict[str, policy.Estimate]] = {}

    def on_status(self, node: str, report: proto.StatusReport) -> str | None:
        """Register the node; the pool whose estimates changed (None if none did)."""
        pool = report.pool or "default"
        held = report.held
        held_text = f"{held.gate}/{held.reason}" if held else None
        self.register(node, pool, report.version, report.artifact, report.state, held_text)
        estimate = report.estimate
        if estimate is not None:
            self.estimates.setdefault(pool, {})[node] = policy.Estimate(
                as_of=self.clock() - estimate.age,
                capacity=estimate.capacity,
                load=estimate.load,
                serving=estimate.serving,
            )
            return pool
        return None

    def register(
        self, node: str, pool: str, version: str, artifact: str, state: str, held: str | None
    ) -> None:
        old = self.nodes.get(node)
        now = self.wall()
        row = NodeRow(
            node=node,
            pool=pool,
            version=version,
            artifact=artifact,
            state=state,
            held=held,
            seen=now,
        )
        self.nodes[node] = row
        if old is None or replace(old, seen=now) != row or now - old.seen > 60:
            self.store.save_node(row)

    def rejoined(self, node: str, artifact: str) -> None:
        """The node runs ``artifact`` now and serves (its version is known if it did)."""
        old = self.nodes.get(node)
        pool = old.pool if old else "default"
        version = old.version if old and old.artifact == artifact else "?"
        self.register(node, pool, version, artifact, "serving", None)

    def who(self, node: str) -> admission.Standing:
        """Whether ``node`` is counted, and its subnet (P10 admission).

        INTERIM (being replaced in this session): everyone counted, subnet unknown."""
        return admission.Standing(counted=True, subnet=None)

    def aggregate(self, pool: str) -> policy.Aggregate:
        """The pool's aggregate now (``policy.median_aggregate`` of the reporters')."""
        return policy.median_aggregate(
            self.estimates.get(pool, {}).values(), self.clock(), self.policy
        )
