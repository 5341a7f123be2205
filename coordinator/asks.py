"""The replica's asks and leases: gates 1-3 for a proposed token, a signature or a refusal.

An ask is answered in this order, and the first "no" is the answer (README "Capacity gate
and departure tokens": answers say why; "held back by scope" and "broken" never look
alike):

1. the proposed token is well formed, names the asking node, and its times are this
   replica's (``issued`` within ``max_skew`` of our clock, ``expires = issued + ttl``);
2. gate 1 (``allowlisted``) against this replica's current allowlist, whose version the
   token must name; gate 2 (``in_scope``) against the current scope, same for the serial;
3. gate 3: ``policy.decide`` -- breaker pause, warm-up, stale aggregate, lease budget,
   min-serving, headroom, force budget.  A refusal that a freed slot ends joins the pool's
   ``policy_queue.WaitQueue``: its answer carries the node's queue position and a
   ``retry_after`` derived from the blocking leases' ends, and when a lease ends the
   replica pushes a signed ``SlotPush`` to the node the queue names (``push_to``), which
   asks again at once.

A grant is a signature over the node's proposed payload; the lease it records lasts
``token_ttl + max_skew`` (``PolicyConfig.lease_ttl``), so it outlives the token on any
clock within the skew allowance.  Leases live in memory only: a restarted replica grants
nothing until every lease it may have granted before has lapsed (the warm-up, from the
grant horizon it writes to the database before each grant that extends it).

A lease that lapses without ``rejoined``, ``failed`` or ``return`` puts its node on a
growing cooldown (``policy_signals.after_lapse``): its asks are refused by gate 3 with
``lease-lapsed`` and the time left as ``retry_after``, before ``policy.decide`` is asked.
Asking and vanishing held every slot of a pool for good; now it costs the asker.

A grant ``policy.decide`` allows is made only while the asking node's source subnet
(``who(node).subnet``, the registry's: P10 admission) holds fewer than ``subnet_leases``
(the network document's) of this replica's live leases, all pools together
(``policy_signals.subnet_lease_wait``); else gate 3 refuses with ``subnet-leases`` and
the time until that subnet's first lease ends.  Made-up ids of one subnet held every
departure slot of a pool; now they hold at most the cap, and nodes of other subnets get
the rest.  The node's own lease (a retry of its token) is not counted against it.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from p2pupdate.core import admission, gates
from p2pupdate.core import coordproto as proto
from p2pupdate.core import documents as docs
from p2pupdate.core.departure import parse_token
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.core.session import Signer

from . import policy, policy_queue, policy_signals
from .breakers import Breakers
from .errors import RequestError
from .publishing import Documents
from .registry import Registry
from .store import AuditRow, Store

__all__ = [
    "OTHER_ARTIFACT",
    "REFUSE_REPEATED",
    "Answer",
    "Asks",
    "LastRefusal",
    "LeaseInfo",
    "RefusalAudit",
]

#: Refusals of an artifact no release record, allowlist or scope names are counted under
#: this key: a stranger who asks for random artifacts adds no row per artifact anywhere.
OTHER_ARTIFACT: Final = "*"
#: The audit event of a refusal repeated within one interval (its ``detail`` says how often).
REFUSE_REPEATED: Final = "refuse-repeated"
#: Refusals are audited per (node, artifact, gate, reason) per this many seconds...
REFUSAL_INTERVAL: Final = 60.0
#: ... for at most this many distinct ones per interval; beyond, per (gate, reason) only.
MAX_REFUSAL_KEYS: Final = 64
#: Lapse records kept (each needs a lease this replica granted, so they are few; past
#: this the forgotten ones go, then the oldest).
MAX_COOLDOWNS: Final = 4096
#: Nodes whose last refusal is kept for ``why`` (the oldest refused go first past it).
MAX_LAST_REFUSALS: Final = 65536


@dataclass(frozen=True, kw_only=True, slots=True)
class LastRefusal:
    """This replica's last "no" to a node's ask, for an operator's ``why`` (in memory:
    a restart forgets it, the node asks again within its ``retry_after``)."""

    gate: str
    reason: str
    detail: str
    retry_after: float | None
    position: int | None
    #: Wall time of the refusal, and of the first of this node's refusals in a row
    #: with the same gate and reason (``since when`` it is held).
    at: float
    since: float


@dataclass
class LeaseInfo:
    """What this replica signed for a node's lease (to end it or answer a retry)."""

    nonce: bytes
    digest: str
    sig: bytes
    pool: str
    artifact: str
    expires_wall: float
    forced: bool
    #: When the lease lapses, on the replica's monotonic clock.
    expires: float = float("inf")
    #: The node's source subnet when granted (``who(node).subnet``; None: unknown).
    subnet: str | None = None


class RefusalAudit:
    """The audit rows of refused asks, bounded per interval whatever the ask rate.

    Aggregated by key and interval rather than kept in a ring: the audit log is the
    operators' record of what the replica did, so the first refusal of each (node,
    artifact, gate, reason) in an interval is written in full as before (event
    ``refuse``, its detail, the artifact it named), and its repeats in that interval
    become one row (event ``refuse-repeated``, ``detail`` "N more ...") when the
    interval ends.  Artifacts no document names count as one (``OTHER_ARTIFACT``), and
    past ``max_keys`` distinct keys in an interval (many made-up node ids) so do nodes.
    Nothing is dropped (a ring would lose the oldest rows, the start of an attack, and
    the counts in ``/status`` after a restart), and the rows per interval are at most
    ``2 * (max_keys + known artifacts x gates x reasons)`` whatever the ask rate.  ``roll`` is called on each refusal and by the server's flusher (so the last
    interval's repeats are written even when the asks stop); ``close`` writes the open
    interval at stop."""

    def __init__(
        self,
        store: Store,
        wall: Callable[[], float],
        *,
        interval: float = REFUSAL_INTERVAL,
        max_keys: int = MAX_REFUSAL_KEYS,
    ) -> None:
        self.store = store
        self.wall = wall
        self.interval = interval
        self.max_keys = max_keys
        self._bucket: int | None = None
        #: key -> [pool of its first refusal, repeats since]
        self._keys: dict[tuple[str, str, str, str], list[str | int]] = {}

    def refused(
        self,
        *,
        node: str,
        pool: str,
        artifact: str,
        known: bool,
        gate: str,
        reason: str,
        detail: str,
    ) -> None:
        now = self.wall()
        self.roll(now)
        # artifacts no document names count as one (known ones are few: each needs a
        # signed document); past ``max_keys``, nodes count as one too
        counted = artifact if known else OTHER_ARTIFACT
        key = (node, counted, gate, reason)
        if key not in self._keys and len(self._keys) >= self.max_keys:
            key = ("*", counted, gate, reason)
        entry = self._keys.get(key)
        if entry is not None:
            entry[1] = int(entry[1]) + 1
            return
        self._keys[key] = [pool, 0]
        self.store.audit(
            AuditRow(
                time=now,
                event="refuse",
                node=node,
                pool=pool,
                artifact=artifact,
                gate=gate,
                reason=reason,
                detail=detail,
            )
        )

    def roll(self, now: float | None = None) -> None:
        """A new interval: write the last one's repeats."""
        now = self.wall() if now is None else now
        bucket = int(now // self.interval)
        if bucket != self._bucket:
            self._write(now)
            self._bucket = bucket

    def close(self) -> None:
        self._write(self.wall())

    def _write(self, now: float) -> None:
        start = (self._bucket or 0) * self.interval
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
        for (node, artifact, gate, reason), (pool, n) in self._keys.items():
            if n:
                self.store.audit(
                    AuditRow(
                        time=now,
                        event=REFUSE_REPEATED,
                        node=node,
                        pool=str(pool),
                        artifact=artifact,
                        gate=gate,
                        reason=reason,
                        detail=f"{n} more in the {self.interval:g} s from {since}",
                    )
                )
        self._keys = {}


def repeated_count(row: AuditRow) -> int:
    """How many refusals a ``refuse-repeated`` row stands for (0 if its detail is not
    one this module wrote)."""
    head = row.detail.split(" ", 1)[0] if isinstance(row.detail, str) else ""
    return int(head) if head.isdigit() else 0


@dataclass(frozen=True, kw_only=True)
class Answer:
    """A refusal or a grant, as sent to the node, with what the metrics count it by."""

    reply: proto.AskGrant | proto.AskRefusal
    granted: bool
    gate: str
    reason: str


class Asks:
    def __init__(
        self,
        *,
        token_ttl: int,
        max_skew: int,
        first_start: bool,
        config: policy.PolicyConfig,
        store: Store,
        clock: Callable[[], float],
        wall: Callable[[], float],
        signer: Signer,
        documents: Documents,
        registry: Registry,
        breakers: Breakers,
        signals: policy_signals.SignalsConfig | None = None,
        who: Callable[[str], admission.Standing] | None = None,
        network: Callable[[], docs.NetworkConfig] = lambda: policy_signals.DEFAULT_NETWORK,
    ) -> None:
        """``who``: whether a node is counted, and its subnet (default: the registry's);
        ``network``: the network document in force (its ``subnet_leases``), read at each
        ask so a newer one applies at once."""
        self.token_ttl = token_ttl
        self.who = who or (lambda n: registry.who(n))
        self.network = network
        self.signals = signals or policy_signals.SignalsConfig()
        #: Nodes whose leases lapsed unreported: node -> its lapse record.
        self.cooldowns: dict[str, policy_signals.Cooldown] = {}
        self.max_skew = max_skew
        self.policy = config
        self.store = store
        self.clock = clock
        self.wall = wall
        self.signer = signer
        self.keyid = signer.keyid
        self.documents = documents
        self.registry = registry
        self.breakers = breakers
        # Warm-up: grant nothing while a lease we may have granted before could be alive.
        # No horizon on record: unknown (a lost state dir looks new), so a full TTL --
        # unless the operator says this replica is new and has never granted anything.
        now, now_wall = clock(), wall()
        ttl = config.lease_ttl
        horizon = store.grant_horizon()
        if horizon is None:
            horizon = now_wall if first_start else now_wall + ttl
            store.set_grant_horizon(horizon)
        self._horizon = horizon
        wait = min(ttl, max(0.0, horizon - now_wall))
        self.started_at = now - ttl + wait
        self.started_wall = now_wall
        self.warm_until_wall = now_wall + wait
        self.pools: dict[str, policy.PoolState] = {}
        self._agg_dirty: set[str] = set()
        self.leases: dict[str, LeaseInfo] = {}
        self.refusals: Counter[tuple[str, str, str]] = Counter()
        #: Per node, its last refusal here (``LastRefusal``; ``status.node_status``).
        self.last_refusals: dict[str, LastRefusal] = {}
        #: Per pool, the nodes a full pool refused, in order (``policy_queue``).
        self.queues: dict[str, policy_queue.WaitQueue] = {}
        #: Set by the replica: push a message to one connected node (by key id).
        self.push_to: Callable[[str, proto.Push], None] = lambda _node, _msg: None
        self.refusal_audit = RefusalAudit(store, wall)
        for artifact, gate, reason, count in store.refusal_counts():
            self.refusals[(self._counted_as(artifact), gate, reason)] += count
        for row in store.audit_rows(REFUSE_REPEATED):
            key = (self._counted_as(row.artifact), row.gate, row.reason)
            self.refusals[key] += repeated_count(row)
        #: Leases handed back unused, by (artifact, reason): a grant every node returns
        #: (``lease-too-short``: a TTL inside the nodes' swap margin) shows here, not only
        #: in ``/metrics``.
        self.returns: Counter[tuple[str, str]] = Counter()
        for artifact, reason, count in store.return_counts():
            self.returns[(artifact, reason)] += count

    def known(self, artifact: str) -> bool:
        """An artifact the operators named: a release record, the allowlist or the scope."""
        d = self.documents
        return (
            artifact in d.releases
            or (d.allowlist is not None and artifact in d.allowlist.doc.artifacts)
            or (d.scope is not None and d.scope.doc.artifact == artifact)
        )

    def _counted_as(self, artifact: str) -> str:
        return artifact if self.known(artifact) else OTHER_ARTIFACT

    def tick(self) -> None:
        """Called by the server's flusher: the refusal audit's interval may have ended."""
        self.refusal_audit.roll()

    def aggregate_changed(self, pool: str) -> None:
        """New estimates for ``pool``: its state takes the new median at the next ask."""
        self._agg_dirty.add(pool)

    def pool_state(self, pool: str) -> policy.PoolState:
        state = self.pools.get(pool)
        if state is None:
            state = policy.PoolState(
                pool=pool, aggregate=self.registry.aggregate(pool), started_at=self.started_at
            )
            self._agg_dirty.discard(pool)
        elif pool in self._agg_dirty:
            state = state.with_aggregate(self.registry.aggregate(pool))
            self._agg_dirty.discard(pool)
        self.pools[pool] = state
        return state

    def end_lease(self, node: str, nonce: bytes, event: str, reason: str = "") -> bool:
        """End ``node``'s lease here (a matching nonce, or any when none is given)."""
        info = self.leases.get(node)
        if info is None or (nonce and nonce != info.nonce):
            return False
        del self.leases[node]
        state = self.pools.get(info.pool)
        if state is not None:
            self.pools[info.pool] = state.end_lease(node)
        self.store.audit(
            AuditRow(
                time=self.wall(),
                event=event,
                node=node,
                pool=info.pool,
                artifact=info.artifact,
                reason=reason,
            )
        )
        if event == "return":
            self.returns[(info.artifact, reason)] += 1
        self._slot_freed(info.pool)
        return True

    def lapse(self, now: float) -> None:
        """Leases that lapsed by ``now`` with no report: their nodes go on cooldown."""
        lapsed = [(n, i) for n, i in self.leases.items() if i.expires <= now]
        for node, info in lapsed:
            del self.leases[node]
            record = policy_signals.after_lapse(
                self.cooldowns.get(node), info.expires, self.signals
            )
            self.cooldowns[node] = record
            self.store.audit(
                AuditRow(
                    time=self.wall(),
                    event="lapse",
                    node=node,
                    pool=info.pool,
                    artifact=info.artifact,
                    gate=gates.GATE_CAPACITY,
                    reason=policy_signals.LEASE_LAPSED,
                    detail=f"{record.lapses} in a row: no lease for "
                    f"{record.until - info.expires:g} s",
                )
            )
        if len(self.cooldowns) > MAX_COOLDOWNS:
            for node, record in list(self.cooldowns.items()):
                if policy_signals.forgotten(record, now, self.signals):
                    del self.cooldowns[node]
            oldest = sorted(self.cooldowns, key=lambda n: self.cooldowns[n].last)
            for node in oldest[: len(self.cooldowns) - MAX_COOLDOWNS]:
                del self.cooldowns[node]

    def _slot_freed(self, pool: str) -> None:
        """A lease of ``pool`` ended: tell the node the queue names, with a signed push."""
        queue = self.queues.get(pool)
        if queue is None:
            return
        queue, head = queue.next_to_nudge(self.clock())
        self.queues[pool] = queue
        if head is not None:
            freed = proto.SlotFreed(replica=self.keyid, node=str(head), pool=pool, time=self.wall())
            self.push_to(str(head), proto.SlotPush.sign(self.signer, freed))

    def _queued(
        self, decision: policy.Decision, state: policy.PoolState, node: str, now: float
    ) -> policy.Decision:
        """A refusal a freed slot ends: the node's place in the queue, and the wait that
        place gives (``policy_queue``)."""
        pool = state.pool
        queue, position = self.queues.get(pool, policy_queue.WaitQueue()).join(
            node, now, self.policy
        )
        self.queues[pool] = queue
        forced = decision.code == policy.EMERGENCY_BUDGET
        ends = policy_queue.blocking_ends(state.leases, forced=forced, now=now)
        retry = policy_queue.queued_retry(ends, position, now, self.policy)
        return replace(decision, retry_after=retry, queue_position=position)

    def _refuse(
        self,
        token: docs.DepartureToken,
        gate: str,
        reason: str,
        detail: str,
        retry_after: float | None,
        position: int | None = None,
    ) -> Answer:
        known = self.known(token.to_artifact)
        counted = token.to_artifact if known else OTHER_ARTIFACT
        self.refusals[(counted, gate, reason)] += 1
        now_wall = self.wall()
        last = self.last_refusals.pop(token.node, None)
        same = last is not None and (last.gate, last.reason) == (gate, reason)
        self.last_refusals[token.node] = LastRefusal(
            gate=gate,
            reason=reason,
            detail=detail,
            retry_after=retry_after,
            position=position,
            at=now_wall,
            since=last.since if same and last is not None else now_wall,
        )
        if len(self.last_refusals) > MAX_LAST_REFUSALS:
            del self.last_refusals[next(iter(self.last_refusals))]
        self.refusal_audit.refused(
            node=token.node,
            pool=token.pool,
            artifact=token.to_artifact,
            known=known,
            gate=gate,
            reason=reason,
            detail=detail,
        )
        refusal = proto.AskRefusal(
            gate=gate, reason=reason, detail=detail, retry_after=retry_after, position=position
        )
        return Answer(
            reply=refusal,
            granted=False,
            gate=gate,
            reason=reason,
        )

    def ask(self, node: str, request: proto.AskRequest) -> Answer:
        """Gates 1-3 for one proposed token; a signature or a refusal (module docstring)."""
        payload = request.token
        try:
            token = parse_token(payload)
        except P2PUpdateError as exc:
            raise RequestError("bad-token", f"{exc.rule}: {exc}") from None
        if token.node != node:
            raise RequestError("binding", "the token names another node")
        self.registry.check_pool(node, token.pool)  # an enrolled node asks in its member's pool
        now_wall = self.wall()
        if abs(token.issued - now_wall) > self.max_skew + 1:
            raise RequestError(
                "clock-skew",
                f"token issued at {token.issued}, this replica's clock says {int(now_wall)} "
                f"(more than {self.max_skew} s apart)",
            )
        if token.expires - token.issued != self.token_ttl:
            raise RequestError("bad-ttl", f"tokens here last exactly {self.token_ttl} s")

        # Gate 1: the allowlist this replica holds, exactly the version the token names.
        documents = self.documents
        allow = documents.allowlist
        if allow is None:
            return self._refuse(
                token,
                gates.GATE_ALLOWLIST,
                "no-allowlist",
                "nothing published",
                policy.document_retry(policy.NO_DOCUMENT, self.policy),
            )
        if token.allowlist_version != allow.doc.version:
            return self._refuse(
                token,
                gates.GATE_ALLOWLIST,
                "allowlist-changed",
                f"the current allowlist is v{allow.doc.version}",
                policy.document_retry(policy.DOCUMENT_CHANGED, self.policy),
            )
        scope = documents.scope.doc if documents.scope is not None else None
        releases = {a: s.doc for a, s in documents.releases.items()}
        installed = releases.get(token.from_artifact)
        now_int = int(now_wall)
        g1 = gates.allowlisted(
            token.to_artifact,
            allowlist=allow.doc,
            releases=releases,
            now=now_int,
            installed=installed,
            scope=scope,
        )
        if not g1.ok:
            held = policy.document_retry(policy.HELD_BY_DOCUMENT, self.policy)
            return self._refuse(token, g1.gate, g1.reason, g1.detail, held)
        # Gate 2: the operator's current scope, exactly the serial the token names.
        if scope is not None and token.scope_serial != scope.serial:
            return self._refuse(
                token,
                gates.GATE_SCOPE,
                "scope-changed",
                f"the current scope is serial {scope.serial}",
                policy.document_retry(policy.DOCUMENT_CHANGED, self.policy),
            )
        g2 = gates.in_scope(node, token.to_artifact, scope=scope, now=now_int)
        if not g2.ok:
            held = policy.document_retry(policy.HELD_BY_DOCUMENT, self.policy)
            return self._refuse(token, g2.gate, g2.reason, g2.detail, held)
        # Gate 3: a node whose lease lapsed unreported waits; then the capacity policy
        # (breaker, warm-up, aggregate, budgets, headroom).
        now = self.clock()
        self.lapse(now)
        wait = policy_signals.cooling(self.cooldowns.get(node), now)
        if wait is not None:
            record = self.cooldowns[node]
            return self._refuse(
                token,
                gates.GATE_CAPACITY,
                policy_signals.LEASE_LAPSED,
                f"{record.lapses} lease(s) of this node lapsed without rejoined, failed or "
                "return: no lease until the cooldown ends",
                wait,
            )
        state = self.pool_state(token.pool).expire(now)
        self.pools[token.pool] = state
        breaker = self.breakers.breakers.get(token.to_artifact)
        paused = breaker is not None and breaker.paused
        force = scope is not None and scope.force
        ask = policy.Ask(
            node=node, capacity=request.capacity, load=request.load, force=force, time=now
        )
        decision = policy.decide(
            replace(state, paused=True) if paused else state, ask, now, self.policy
        )
        if not decision.granted:
            if decision.code in policy_queue.QUEUED:
                decision = self._queued(decision, state, node, now)
            detail = decision.to_gate_result().detail
            if paused and breaker is not None:
                detail = breaker.reason
            return self._refuse(
                token,
                decision.gate,
                decision.reason,
                detail,
                decision.retry_after,
                decision.queue_position,
            )
        lease = decision.lease
        assert lease is not None
        digest = hashlib.sha256(payload).hexdigest()
        info = self.leases.get(node)
        if decision.code == policy.EXISTING_LEASE:
            if info is None or info.digest != digest:
                left = max(1.0, lease.expires - now)
                return self._refuse(
                    token,
                    policy.gate_of(policy.LEASE_BUDGET),
                    "lease-held",
                    "this replica still holds a lease for this node under another token",
                    min(left, self.policy.base_retry),
                )
            return self._grant_answer(info, decision.reason)
        subnet = self.who(node).subnet
        cap = self.network().subnet_leases
        others = [(i.subnet, i.expires) for n, i in self.leases.items() if n != node]
        wait = policy_signals.subnet_lease_wait(
            others, subnet, cap=cap, now=now, max_wait=self.policy.base_retry
        )
        if wait is not None:
            if token.pool in self.queues:  # a freed slot of the pool does not end this wait
                self.queues[token.pool] = self.queues[token.pool].leave(node)
            return self._refuse(
                token,
                gates.GATE_CAPACITY,
                policy_signals.SUBNET_LEASES,
                f"nodes of this node's subnet ({subnet or 'unknown'}) hold {cap} of this "
                f"replica's leases, the network's cap per subnet",
                wait,
            )
        # The lease may outlive a crash of this replica: the horizon is on disk first.
        expires_wall = now_wall + (lease.expires - now)
        if self._horizon < expires_wall:
            horizon = now_wall + 2 * self.policy.lease_ttl
            self.store.set_grant_horizon(horizon)  # raises if not written: no grant then
            self._horizon = horizon
        self.pools[token.pool] = state.add(lease)
        if token.pool in self.queues:
            self.queues[token.pool] = self.queues[token.pool].leave(node)
        sig = self.signer.sign(docs.DepartureToken.TYPE, payload)
        info = LeaseInfo(
            nonce=token.nonce,
            digest=digest,
            sig=sig,
            pool=token.pool,
            artifact=token.to_artifact,
            expires_wall=expires_wall,
            forced=lease.forced,
            expires=lease.expires,
            subnet=subnet,
        )
        self.leases[node] = info
        self.last_refusals.pop(node, None)
        self.breakers.attempted(token.to_artifact, node, token.nonce)
        self.store.audit(
            AuditRow(
                time=now_wall,
                event="force" if lease.forced else "grant",
                node=node,
                pool=token.pool,
                artifact=token.to_artifact,
                gate=decision.gate,
                reason=decision.reason,
                detail=f"nonce {token.nonce.hex()} until {token.expires}",
            )
        )
        return self._grant_answer(info, decision.reason)

    def _grant_answer(self, info: LeaseInfo, reason: str) -> Answer:
        grant = proto.AskGrant(
            replica=self.keyid, sig=info.sig, reason=reason, lease_expires=info.expires_wall
        )
        return Answer(
            reply=grant,
            granted=True,
            gate=gates.GATE_CAPACITY,
            reason=reason,
        )

    def active_leases(self) -> dict[str, list[policy.Lease]]:
        now = self.clock()
        self.lapse(now)
        out: dict[str, list[policy.Lease]] = {}
        for pool, state in list(self.pools.items()):
            state = state.expire(now)
            self.pools[pool] = state
            if state.leases:
                out[pool] = list(state.leases)
        alive = {lease.node for leases in out.values() for lease in leases}
        for node in [n for n in self.leases if n not in alive]:
            del self.leases[node]
        return out
