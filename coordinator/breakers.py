"""The circuit breaker per artifact: failed moves counted, the rollout paused, resumed.

Nodes report failed swaps (probation failed, rolled back).  When the failures of distinct
nodes that moved to an artifact reach ``policy.breaker_threshold``, the replica pauses
that artifact's rollout (gate 3 answers "breaker" to every ask for it) until an operator
publishes a newer scope (README "Capacity gate and departure tokens").  The rule --
when to trip, when to resume -- is ``policy.breaker_pause_reason`` and
``policy.breaker_resumes``; this module keeps the counts and the record in the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from p2pupdate.core import documents as docs

from . import policy
from .store import AuditRow, BreakerRow, Store

__all__ = ["Breaker", "Breakers"]


@dataclass
class Breaker:
    artifact: str
    paused: bool = False
    reason: str = ""
    since: float = 0.0
    scope_serial: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)


class Breakers:
    def __init__(
        self, *, store: Store, wall: Callable[[], float], config: policy.PolicyConfig
    ) -> None:
        self.store = store
        self.wall = wall
        self.policy = config
        self.breakers: dict[str, Breaker] = {}
        for row in store.load_breakers():
            b = Breaker(
                artifact=row.artifact,
                paused=row.paused,
                reason=row.reason,
                since=row.since,
                scope_serial=row.scope_serial,
            )
            b.failures = store.failures_since(row.artifact, row.since)
            b.attempted = store.granted_nodes(row.artifact, row.since)
            self.breakers[row.artifact] = b

    def attempted(self, artifact: str, node: str) -> None:
        """``node`` was granted a departure to ``artifact``."""
        self.breakers.setdefault(artifact, Breaker(artifact=artifact)).attempted.add(node)

    def failed(self, node: str, artifact: str, reason: str, *, scope_serial: int) -> bool:
        """A failed move of ``node`` to ``artifact``; ``scope_serial``: the scope in force
        (a pause lasts until a newer one).  Whether the rollout is paused now."""
        now = self.wall()
        b = self.breakers.setdefault(artifact, Breaker(artifact=artifact))
        if node not in b.failures:
            b.failures[node] = reason
            self.store.add_failure(artifact, node, reason, now)
        b.attempted.add(node)
        self.store.audit(
            AuditRow(time=now, event="failed", node=node, pool="", artifact=artifact, reason=reason)
        )
        pause = policy.breaker_pause_reason(
            artifact=artifact,
            failures=len(b.failures),
            attempted=len(b.attempted),
            last_reason=reason,
            paused=b.paused,
            config=self.policy,
        )
        if pause is not None:
            b.paused = True
            b.scope_serial = scope_serial
            b.reason = pause
            self.store.save_breaker(
                BreakerRow(
                    artifact=artifact,
                    paused=True,
                    reason=b.reason,
                    since=b.since,
                    scope_serial=b.scope_serial,
                )
            )
            self.store.audit(
                AuditRow(
                    time=now,
                    event="pause",
                    node="",
                    pool="",
                    artifact=artifact,
                    gate=policy.GATE_BREAKER,
                    reason="paused",
                    detail=b.reason,
                )
            )
        return b.paused

    def resume_for(self, scope: docs.Scope) -> list[str]:
        """A newer operator scope for a paused artifact resumes its rollout."""
        b = self.breakers.get(scope.artifact)
        if b is None or not policy.breaker_resumes(
            paused=b.paused, paused_at_serial=b.scope_serial, scope_serial=scope.serial
        ):
            return []
        now = self.wall()
        self.breakers[scope.artifact] = nb = Breaker(
            artifact=scope.artifact, since=now, scope_serial=scope.serial
        )
        self.store.save_breaker(
            BreakerRow(
                artifact=nb.artifact, paused=False, reason="", since=now, scope_serial=scope.serial
            )
        )
        self.store.audit(
            AuditRow(
                time=now,
                event="resume",
                node="",
                pool="",
                artifact=scope.artifact,
                gate=policy.GATE_BREAKER,
                reason="resumed",
                detail=f"scope serial {scope.serial}",
            )
        )
        return [scope.artifact]
