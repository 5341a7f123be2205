"""The circuit breaker per artifact: failed moves counted, the rollout paused, resumed.

Nodes report failed swaps (probation failed, rolled back).  When the failures of distinct
nodes that moved to an artifact reach ``policy.breaker_threshold``, the replica pauses
that artifact's rollout (gate 3 answers "breaker" to every ask for it) until an operator
publishes a newer scope (README "Capacity gate and departure tokens").  The rule --
when to trip, when to resume -- is ``policy.breaker_pause_reason`` and
``policy.breaker_resumes``; this module keeps the counts and the record in the database.

Only a node this replica granted a lease for the artifact, naming that lease's nonce, is
counted (``policy_signals.failure_counts``): node ids cost nothing, and two made-up ids
that never held a lease paused a rollout.  The nonces granted are kept per artifact and
node (rebuilt at start from the audit log's grants of the last ``GRANT_MEMORY`` seconds,
so a node that fails its probation across a restart of the replica still counts); any
other report is counted in ``ignored`` and changes nothing else (no row, no entry).

And only from a node that is counted, at most ``subnet_failures`` (the network
document's) nodes of one source subnet per artifact (``policy_signals.failure_ignored``):
``who(node)`` says whether a node is counted and its subnet (the registry's, P10
admission); a subnet's counted failures keep the subnet they were counted from.  Grants
to nodes not counted do not raise ``attempted`` either, and the breaker's share is of the
nodes that moved weighed the same way, each subnet at most ``subnet_failures``
(``policy_signals.weighed``: a fleet in one /24 still pauses a broken rollout).

The share is of ``policy.breaker_attempted``: the nodes granted, or with
``PolicyConfig.breaker_in_flight`` below 1 fewer of those whose move is still in flight;
``rejoined`` (the service calls it on a "rejoined" report under a lease this replica
granted) and ``failed`` record the outcomes, read back at start from the audit log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from p2pupdate.core import admission
from p2pupdate.core import documents as docs

from . import policy, policy_signals
from .store import AuditRow, BreakerRow, Store

__all__ = ["GRANT_MEMORY", "Breaker", "Breakers", "everyone_counted"]

#: Grants older than this (wall seconds) are not read back at start: a node reports a
#: failed probation within hours of its move, not weeks.
GRANT_MEMORY = 7 * 86400.0


@dataclass
class Breaker:
    artifact: str
    paused: bool = False
    reason: str = ""
    since: float = 0.0
    scope_serial: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    #: Of ``attempted``, the nodes whose move ended: reported rejoined or failed
    #: (``policy.breaker_attempted``).
    outcomes: set[str] = field(default_factory=set)
    #: The nonces of the leases granted for this artifact, per node.
    granted: dict[str, set[bytes]] = field(default_factory=dict)
    #: The subnet each node in ``failures`` or ``attempted`` was counted from (those read
    #: back from the database at start are missing: ``who`` tells theirs).
    subnets: dict[str, str | None] = field(default_factory=dict)


def everyone_counted(_node: str) -> admission.Standing:
    """``who`` where the replica does not say: every node counted, its subnet unknown."""
    return admission.Standing(counted=True, subnet=None)


class Breakers:
    def __init__(
        self,
        *,
        store: Store,
        wall: Callable[[], float],
        config: policy.PolicyConfig,
        who: Callable[[str], admission.Standing] = everyone_counted,
        network: Callable[[], docs.NetworkConfig] = lambda: policy_signals.DEFAULT_NETWORK,
    ) -> None:
        """``who``: whether a node is counted, and its subnet; ``network``: the network
        document in force (its ``subnet_failures``), read at each report."""
        self.store = store
        self.wall = wall
        self.policy = config
        self.who = who
        self.network = network
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
        for audit in store.audit_rows("rejoined") if self.breakers else ():
            known = self.breakers.get(audit.artifact)
            if known is not None and audit.time >= known.since:
                known.outcomes.add(audit.node)
        for b in self.breakers.values():
            b.outcomes = (b.outcomes | set(b.failures)) & b.attempted
        #: ``failed`` reports not counted (no lease of this replica, another nonce, no
        #: standing, the subnet's cap), and by ``policy_signals`` reason.
        self.ignored = 0
        self.ignored_by: Counter[str] = Counter()
        horizon = wall() - GRANT_MEMORY
        for event in ("grant", "force"):
            for audit in store.audit_rows(event):
                nonce = _nonce_of(audit.detail)
                known = self.breakers.get(audit.artifact)
                since = known.since if known is not None else horizon
                if nonce is None or audit.time < max(since, horizon):
                    continue
                self._grant(audit.artifact, audit.node, nonce)

    def _grant(self, artifact: str, node: str, nonce: bytes) -> Breaker:
        b = self.breakers.setdefault(artifact, Breaker(artifact=artifact))
        b.granted.setdefault(node, set()).add(nonce)
        return b

    def attempted(self, artifact: str, node: str, nonce: bytes) -> None:
        """``node`` was granted a departure to ``artifact``, under ``nonce``."""
        b = self._grant(artifact, node, nonce)
        standing = self.who(node)
        if standing.counted:
            b.attempted.add(node)
            b.subnets[node] = standing.subnet

    def rejoined(self, node: str, artifact: str, nonce: bytes) -> None:
        """``node`` reported its move to ``artifact`` (under ``nonce``) done: an outcome,
        if it is a move this replica granted and counts (as ``failed`` checks)."""
        b = self.breakers.get(artifact)
        if b is not None and nonce in b.granted.get(node, ()) and node in b.attempted:
            b.outcomes.add(node)

    def _subnet(self, b: Breaker, node: str) -> str | None:
        return b.subnets[node] if node in b.subnets else self.who(node).subnet

    def failed(
        self, node: str, artifact: str, reason: str, *, nonce: bytes, scope_serial: int
    ) -> bool:
        """A failed move of ``node`` to ``artifact`` reported under ``nonce``;
        ``scope_serial``: the scope in force (a pause lasts until a newer one).  Whether
        the rollout is paused now.  Counted only from a node this replica granted that
        lease (module docstring)."""
        now = self.wall()
        b = self.breakers.get(artifact)
        standing = self.who(node)
        cap = self.network().subnet_failures
        why = policy_signals.failure_ignored(
            granted=b.granted.get(node, set()) if b is not None else set(),
            nonce=nonce,
            standing=standing,
            counted=[self._subnet(b, n) for n in b.failures if n != node] if b else [],
            cap=cap,
        )
        if b is None or why is not None:
            self.ignored += 1
            self.ignored_by[why or policy_signals.NO_LEASE] += 1
            return b is not None and b.paused
        if node not in b.failures:
            b.failures[node] = reason
            b.subnets[node] = standing.subnet
            self.store.add_failure(artifact, node, reason, now)
        b.attempted.add(node)
        b.outcomes.add(node)
        self.store.audit(
            AuditRow(time=now, event="failed", node=node, pool="", artifact=artifact, reason=reason)
        )
        granted = policy_signals.weighed((self._subnet(b, n) for n in b.attempted), cap)
        ended = policy_signals.weighed((self._subnet(b, n) for n in b.outcomes), cap)
        pause = policy.breaker_pause_reason(
            artifact=artifact,
            failures=len(b.failures),
            attempted=policy.breaker_attempted(granted, min(ended, granted), self.policy),
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
            artifact=scope.artifact, since=now, scope_serial=scope.serial, granted=b.granted
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


def _nonce_of(detail: str) -> bytes | None:
    """The nonce of a grant's audit row (``nonce HEX until T``, as ``asks`` writes it)."""
    head, _, rest = detail.partition(" ")
    if head != "nonce":
        return None
    try:
        return bytes.fromhex(rest.partition(" ")[0])
    except ValueError:
        return None
