"""Gate 3, the capacity policy: may this node leave its pool now?  Pure and deterministic.

A coordinator replica answers a node's *ask* with a departure lease or a refusal that
says why (README "Capacity gate and departure tokens").  This module is the whole rule,
with no IO, no clock and no randomness: time, configuration and state are arguments, and
every function returns a new value instead of changing one.  The coordinator service
calls ``decide`` once per ask; the simulations call ``coordinator.policy_batch``'s
``decide_batch`` once per tick with numpy arrays of ~17,000 asks.  Both must give the
same answers (a property test holds them to it), so the simulations measure the rule
that runs in production, not a copy of it.  The batch form lives in its own module so
that this one, and the service that calls it, never import numpy.

The rule, for one replica and one pool, with ``A`` = this replica's leases active at
``now`` (``now < expires``), ``C``/``L``/``S`` = the pool's aggregate serving capacity,
load and serving count, ``c``/``l`` = the asking node's capacity and load, ``B = S -
min_serving`` the pool's spare nodes, ``M = max_concurrent``, ``share(K)`` this replica's
share of ``K`` departures (``replica_share``) and ``w`` its share of the headroom
(``headroom_share``):

========================  ==========================================================
refused with              when
========================  ==========================================================
``paused``  (breaker)     the circuit breaker paused the rollout this pool asks for
``replica-warmup``        ``now < started_at + lease_ttl``: a restarted replica does
                          not know what it granted before, so it grants nothing for
                          one TTL and needs no durable lease state
``aggregate-stale``       ``now - as_of > aggregate_max_age``
``lease-budget``          ``|A| >= share(M) > 0``
``min-serving``           ``B <= 0``, or ``|A| >= share(B) > 0``
``replica-share``         ``share(M) = 0`` or ``share(B) = 0`` (with ``B >= 1``): this
                          replica holds none of the pool's departures, the others do
``no-spare-capacity``     ``cap(A) + c > w * (C - max(L, l) / u)``
``emergency-budget``      (force asks) ``|forced A| >= share(emergency_budget)``
========================  ==========================================================

checked in that order (the first that fails is the reason).  A node that already holds
an active lease on this replica gets the same lease back ("existing-lease"): its answer
was lost, and a second lease would count it twice.

Why the shares make the *global* limits safe, however each node picks its ``q``
replicas (all replicas seeing the same aggregate; each lagging view is its own
snapshot): a departure token needs ``q`` signatures of distinct replicas, so each node
away holds a lease on at least ``q`` replicas.

*Counts.*  For a budget ``K >= 1`` (``M``, ``B`` or the emergency budget) the fleet has
``U = q * (K + 1) - 1`` lease units, dealt round-robin to the ``n`` replicas starting at
a place fixed by the pool's name (``pool_slot``): unit ``k`` goes to the replica of rank
``(slot + k) mod n``, so ``share_r(K) = ceil((U - d_r) / n)`` with ``d_r = (rank_r -
slot) mod n``, and ``sum_r share_r(K) = U``.  A replica keeps ``|A_r| <= share_r`` (it
refuses at ``|A_r| >= share_r``; an unforced grant happens only below it), so ``T``
tokens hold ``T * q <= sum_r |A_r| <= U < q * (K + 1)`` leases: ``T <= K``.  No replica
needs to know another's share, only its own rank (``PolicyConfig.rank``, its place among
the root's coordinator keys) and ``n``, ``q``.  *Progress*: the replicas with a unit are
those with ``d_r < U``; there are ``min(n, U) >= q`` of them as soon as ``K >= 1`` (``U
>= 2q - 1 >= q``), the same ones for every budget of the pool (the deal starts at the
same place), so a node that asks every replica of an idle pool collects ``q`` grants.
The old uniform ``floor(K * q / n)`` gave 0 everywhere for ``K = 1, n = 3, q = 2`` (a
2-node pool with ``min_serving = 1`` was refused forever); the deal gives every replica
1 there, and is never below it (``floor(U / n) >= floor(K * q / n)``).  A share can still
be 0 (``n > U``: ``n = 3, q = 1, K = 1`` gives one replica the unit): that replica says
``replica-share``, which is true, and the node's token comes from the others.  With ``B
<= 0`` every share is 0 and the reason is ``min-serving``.

*Capacity.*  With ``H = C - L/u`` and ``T = min(M, B)`` the most unforced tokens the
counts allow at once, each replica keeps ``cap(A_r) <= w * H`` (its own ask's ``max(L,
l)`` only lowers ``H``), with ``w`` one of three safe values, the largest that applies:

* ``q/n`` always: ``q * cap(away) <= sum_r cap(A_r) <= n * (q/n) * H``;
* ``1/T``: each of the at most ``T`` nodes away passed ``c <= w * H`` on its replicas,
  so ``cap(away) <= T * H / T``;
* ``1`` when ``T * (n - q) < n``: then the ``k <= T`` tokens away share a replica (if
  each replica held at most ``k - 1`` of them, ``q * k <= n * (k - 1)``, i.e. ``k * (n -
  q) >= n``), and that replica holds all of them: ``cap(away) <= cap(A_r) <= H``.

So ``cap(away) <= H``, i.e. ``L <= u * (C - cap(away))``: the headroom rule of README
"Capacity gate and departure tokens" for the whole pool.  When one departure is all the
pool allows (``T = 1``) the replica's check is exactly that global rule.

With the default ``n = q = 1`` the three rules are exactly that section's ``L <= u * (C
- cap(A) - c)``, ``S - |A| - 1 >= min_serving`` and ``|A| < max_concurrent`` (the
capacity rule is written divided through by ``u``).

Two deliberate choices about the inputs:

* The aggregate may already exclude nodes that are away (gossip counts *serving*
  capacity), so subtracting ``cap(A)`` again double counts them.  That errs on the safe
  side: the replica cannot tell which of its leases the (lagging) estimate reflects.
* The asking node's own load ``l`` is a lower bound on the pool's load, so ``max(L, l)``
  keeps a too-low (e.g. not yet converged) estimate from waving a busy node through.

Force (an operator's ``force`` scope; gates 1 and 2 already passed) skips the capacity
gate: staleness, lease budget, min-serving and headroom.  It does not skip the breaker
(a pause treats the scope as "nobody" until an operator publishes a *new* scope, and the
shell evaluates the breaker against that newer scope) or warm-up (a restarted replica
cannot count the forced leases it granted before).  Forced leases draw from a separate
emergency budget of ``emergency_budget`` concurrent per pool; they count as departures
(``|A|``, ``cap(A)``) for everyone else's asks, but ordinary leases never use up the
emergency budget, so the global count can reach ``max_concurrent + emergency_budget``.

Numbers: reason codes are small ints (``REASONS[code]`` is the name), so batch results
are plain arrays.  ``retry_after`` is the time until the earliest lease that blocks the
ask expires, clamped to ``[min_retry, base_retry]`` (leases usually end sooner, on the
node's "rejoined" report); the exact end of warm-up; ``base_retry`` for a stale
aggregate; ``paused_retry`` for a pause (an operator must act; a nudge brings nodes back
sooner).  The service's queue of refused nodes then grows a queued refusal's wait with its
place (``policy_queue.queued_retry``, up to ``queue_retry_max``).  The queue position is a batch notion: the 1-based rank of a refusal among the
refused asks of the same batch, in ask-time order.

Batches: every ask of a batch is decided at the batch's ``now`` (leases run from ``now``);
``Ask.time`` only orders them, so asks are admitted in the order they arrived, each
seeing the grants before it.  One call covers one replica's view of one pool.
``decide_sequence`` is the reference semantics of a batch; ``decide_batch`` computes the
same answers with array passes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from typing import Final, TypeAlias

from p2pupdate.core.gates import GATE_CAPACITY, GateResult

#: The gate a breaker pause reports (a capacity refusal reports ``GATE_CAPACITY``).
GATE_BREAKER: Final = "breaker"

#: Nodes are key ids (str) in the service and dense indices (int) in the simulations.
NodeId: TypeAlias = int | str

# -- reason codes -----------------------------------------------------------------------

GRANTED: Final = 0
FORCED: Final = 1
EXISTING_LEASE: Final = 2
PAUSED: Final = 3
REPLICA_WARMUP: Final = 4
AGGREGATE_STALE: Final = 5
LEASE_BUDGET: Final = 6
MIN_SERVING: Final = 7
NO_SPARE_CAPACITY: Final = 8
EMERGENCY_BUDGET: Final = 9
REPLICA_SHARE: Final = 10

#: ``REASONS[code]`` is the stable reason string an operator or a test matches on.
REASONS: Final[tuple[str, ...]] = (
    "granted",
    "forced",
    "existing-lease",
    "paused",
    "replica-warmup",
    "aggregate-stale",
    "lease-budget",
    "min-serving",
    "no-spare-capacity",
    "emergency-budget",
    "replica-share",
)
REASON_CODES: Final[dict[str, int]] = {name: code for code, name in enumerate(REASONS)}
#: Codes at or below this are grants; the rest are refusals.
LAST_GRANT_CODE: Final = EXISTING_LEASE


def gate_of(code: int) -> str:
    """The gate a reason belongs to: pauses are the breaker's, the rest capacity's."""
    return GATE_BREAKER if code == PAUSED else GATE_CAPACITY


# -- configuration ----------------------------------------------------------------------

#: Largest global budget of concurrent departures per pool (``max_concurrent``).  No
#: pool of a real fleet lets a million nodes leave at once, and a bound keeps the
#: per-replica share and the batch policy's integer arrays far from overflow; a larger
#: number is a typo, refused rather than silently meaning "no limit".
MAX_CONCURRENT_LIMIT: Final = 1_000_000


def is_plain_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is not a node count)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """The operator's knobs, validated on construction (``ValueError`` names the knob).

    What *this* replica may hand out of a pool's budgets depends on the pool
    (``replica_share``, ``headroom_share``; the module docstring proves that ``n``
    replicas together stay within the global budgets).  ``lease_share`` and
    ``emergency_share`` are derived for display: the share every pool gets at least,
    ``floor((q * (K + 1) - 1) / n)``; some pools get one more.  ``capacity_share`` is
    ``q/n``, the headroom share of a pool that may lose many nodes.
    """

    #: ``u``: the share of the remaining capacity the load may use.
    utilization: float = 0.8
    #: Share of ``u`` held back for churn: nodes that go offline by themselves in the
    #: minutes after a grant must not push the pool under ``u``.  Grants use
    #: ``u * (1 - churn_margin)``; measured at 100k nodes, 1% removes the one-minute dip
    #: below the floor that granting right up to ``u`` caused (simulations/README.md).
    churn_margin: float = 0.01
    #: At least this many nodes of the pool keep serving.
    min_serving: int = 1
    #: Global budget of concurrent (unforced) departures per pool, over all replicas.
    max_concurrent: int = 10
    #: ``n``: coordinator replicas, each with its own key.
    replicas: int = 1
    #: ``q``: replica signatures a departure token needs (root's coordinator threshold).
    quorum: int = 1
    #: This replica's place, ``0 .. n - 1``, among the root's coordinator keys (sorted):
    #: which replicas hold the extra units of a pool's budgets (``replica_share``).
    #: Every replica has its own; the service takes it from the root.
    rank: int = 0
    #: Seconds a lease lasts unless the node reports "rejoined" first; also warm-up.
    lease_ttl: float = 300.0
    #: Concurrent forced departures per pool, over all replicas.
    emergency_budget: int = 1
    #: An aggregate estimate older than this (seconds) is not trusted for a grant.
    aggregate_max_age: float = 180.0
    #: Longest ``retry_after`` for a refusal that waiting fixes; also used when no
    #: lease expiry is in sight.
    base_retry: float = 60.0
    #: Shortest ``retry_after``, so a lease about to lapse does not invite a stampede.
    min_retry: float = 1.0
    #: Longest ``retry_after`` a queued refusal may grow to with its queue position
    #: (``policy_queue.queued_retry``): a node further back than the blocking leases
    #: waits ``position x hold / leases``, within ``[base_retry, queue_retry_max]``.
    #: At most ``base_retry``: no growth (every queued node asks again within it).
    #: Measured at 100k nodes, 20 leases, ~40,000 nodes waiting: 1800 s takes the asks
    #: from 219/s to 14/s on average with the same share updated (simulations/README.md).
    queue_retry_max: float = 1800.0
    #: A typical lease hold (seconds from grant to "rejoined": drain, restart, health
    #: check), the time one slot takes to serve one node of the queue: the prior and the
    #: ceiling of the hold the replica measures (``policy_hold.hold_in_force``: this
    #: until 8 leases ended by a report, then the median of the last 64 if shorter).
    queue_hold: float = 90.0
    #: ``retry_after`` while the breaker holds the rollout (an operator must act).
    paused_retry: float = 3600.0
    #: ``retry_after`` when gate 1 or 2 holds the node back at ask time (the allowlist or
    #: the scope says no): only a new document changes that, and nodes learn of one by
    #: gossip or push sooner than this.
    held_retry: float = 300.0
    #: Circuit breaker: failures from at least this many nodes trip it...
    breaker_min_failures: int = 2
    #: ... and at least this share of the nodes that attempted the artifact.
    breaker_failure_share: float = 0.05
    #: How much of a departure still in flight the breaker's share counts
    #: (``breaker_attempted``): 1, every node granted a departure to the artifact; 0,
    #: only the nodes whose move is known to have ended (reported rejoined or failed).
    #: Measured at 100k nodes without a canary: 0 pauses a 5% build after 4,931 grants
    #: (1: never) and a 10% one after 160 (1: 1,160), and paused none of 36 runs with a
    #: 1-3% background failure rate (simulations/README.md).
    breaker_in_flight: float = 0.0

    lease_share: int = field(init=False, compare=False)
    emergency_share: int = field(init=False, compare=False)
    #: ``share_units`` of ``max_concurrent`` and of ``emergency_budget``, dealt per pool.
    lease_units: int = field(init=False, compare=False)
    emergency_units: int = field(init=False, compare=False)
    capacity_share: float = field(init=False, compare=False)
    #: ``u * (1 - churn_margin)``: the utilization grants are computed against.
    grant_utilization: float = field(init=False, compare=False)

    def __post_init__(self) -> None:
        for name in (
            "min_serving",
            "max_concurrent",
            "replicas",
            "quorum",
            "rank",
            "emergency_budget",
            "breaker_min_failures",
        ):
            if not is_plain_int(getattr(self, name)):
                raise ValueError(f"policy: {name} must be an int")
        for name in (
            "utilization",
            "churn_margin",
            "lease_ttl",
            "aggregate_max_age",
            "base_retry",
            "min_retry",
            "queue_retry_max",
            "queue_hold",
            "paused_retry",
            "held_retry",
            "breaker_failure_share",
            "breaker_in_flight",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
                raise ValueError(f"policy: {name} must be a number")
        if not 0.0 < self.utilization <= 1.0:
            raise ValueError("policy: utilization must be in (0, 1]")
        if not 0.0 <= self.churn_margin < 1.0:
            raise ValueError("policy: churn_margin must be in [0, 1)")
        if self.min_serving < 0:
            raise ValueError("policy: min_serving must be >= 0")
        if self.max_concurrent < 1:
            raise ValueError("policy: max_concurrent must be >= 1")
        if self.max_concurrent > MAX_CONCURRENT_LIMIT:
            raise ValueError(f"policy: max_concurrent must be <= {MAX_CONCURRENT_LIMIT}")
        if self.replicas < 1:
            raise ValueError("policy: replicas must be >= 1")
        if not 1 <= self.quorum <= self.replicas:
            raise ValueError("policy: quorum must be in [1, replicas]")
        if not 0 <= self.rank < self.replicas:
            raise ValueError("policy: rank must be in [0, replicas)")
        if not 0.0 < self.lease_ttl < math.inf:
            raise ValueError("policy: lease_ttl must be positive and finite")
        if self.emergency_budget < 0:
            raise ValueError("policy: emergency_budget must be >= 0")
        if self.aggregate_max_age < 0.0:
            raise ValueError("policy: aggregate_max_age must be >= 0 (inf: never stale)")
        if not 0.0 < self.min_retry <= self.base_retry < math.inf:
            raise ValueError("policy: need 0 < min_retry <= base_retry < inf")
        if not 0.0 < self.queue_retry_max < math.inf:
            raise ValueError("policy: queue_retry_max must be positive and finite")
        if not 0.0 < self.queue_hold < math.inf:
            raise ValueError("policy: queue_hold must be positive and finite")
        if not 0.0 < self.paused_retry < math.inf:
            raise ValueError("policy: paused_retry must be positive and finite")
        if not 0.0 < self.held_retry < math.inf:
            raise ValueError("policy: held_retry must be positive and finite")
        if self.breaker_min_failures < 1:
            raise ValueError("policy: breaker_min_failures must be >= 1")
        if not 0.0 < self.breaker_failure_share <= 1.0:
            raise ValueError("policy: breaker_failure_share must be in (0, 1]")
        if not 0.0 <= self.breaker_in_flight <= 1.0:
            raise ValueError("policy: breaker_in_flight must be in [0, 1]")
        n, q = self.replicas, self.quorum
        object.__setattr__(self, "lease_units", share_units(self.max_concurrent, q))
        object.__setattr__(self, "emergency_units", share_units(self.emergency_budget, q))
        object.__setattr__(self, "lease_share", self.lease_units // n)
        object.__setattr__(self, "emergency_share", self.emergency_units // n)
        object.__setattr__(self, "capacity_share", q / n)
        object.__setattr__(self, "grant_utilization", self.utilization * (1.0 - self.churn_margin))


# -- the replicas' shares of a pool's budgets ---------------------------------------------


def share_units(budget: int, quorum: int) -> int:
    """Lease units the fleet may hold for ``budget`` departures: ``q * (K + 1) - 1``.

    The most that still cannot make ``K + 1`` tokens of ``q`` leases each (module
    docstring); none for a budget of 0 or less.
    """
    return quorum * (budget + 1) - 1 if budget > 0 else 0


def pool_slot(pool: str) -> int:
    """Where the deal of ``pool``'s units starts: the first 8 bytes of SHA-256 of its name.

    The same on every replica (unlike ``hash``), and different pools start at different
    replicas, so the extra units of many small pools spread over the replicas.
    """
    return int.from_bytes(hashlib.sha256(pool.encode()).digest()[:8], "big")


def replica_share(budget: int, slot: int, config: PolicyConfig) -> int:
    """This replica's share of ``budget`` departures of the pool at ``slot``.

    The fleet's ``share_units`` dealt round-robin from the replica of rank ``slot mod n``:
    ``ceil((U - d) / n)`` with ``d`` this replica's distance from the start.  The shares
    of the ``n`` ranks sum to ``U`` (module docstring); with ``n = 1`` it is ``budget``.
    """
    n = config.replicas
    return _dealt(share_units(budget, config.quorum), (config.rank - slot) % n, n)


def _dealt(units: int, distance: int, n: int) -> int:
    """Of ``units`` dealt round-robin to ``n`` ranks, those of the rank ``distance`` after
    the first: ``ceil((units - distance) / n)`` (0 when ``units <= distance``)."""
    return (units - distance + n - 1) // n


def headroom_share(departures: int, config: PolicyConfig) -> float:
    """``w``: the share of the pool's headroom this replica may hand out, when at most
    ``departures`` unforced nodes can be away at once fleet-wide (``min(M, B)``).

    The largest of the three safe values of the module docstring: ``1`` when any
    ``departures`` tokens must share a replica, else ``max(q/n, 1/departures)``.
    ``decide_batch`` uses the same value.
    """
    n, q = config.replicas, config.quorum
    if departures <= 0:
        return config.capacity_share
    if departures * (n - q) < n:
        return 1.0
    return max(config.capacity_share, 1.0 / departures)


def share_detail(budget: int, what: str, config: PolicyConfig) -> str:
    """The detail of a ``replica-share`` refusal: whose share is 0, of what."""
    plural = "" if budget == 1 else "s"
    return (
        f"this replica's share of {budget} {what} departure{plural} is 0 "
        f"({config.replicas} replicas, quorum {config.quorum}): the others grant it"
    )


# -- circuit breaker --------------------------------------------------------------------


def breaker_attempted(granted: int, outcomes: int, config: PolicyConfig) -> int:
    """The ``attempted`` the breaker's share is of: of the ``granted`` nodes (granted a
    departure to the artifact), the ``outcomes`` (reported rejoined or failed) and
    ``floor(breaker_in_flight x (granted - outcomes))`` of those still in flight.

    Failures trail grants by a whole departure, so during a fast rollout a share of the
    grants is diluted by moves still in flight: a build failing on 10% of the nodes
    paused only after ~1,160 grants at 100k nodes without a canary, and one failing on 5%
    never (simulations/README.md).  With ``breaker_in_flight = 0`` the share is of the
    outcomes: the failure rate itself.  Non-decreasing in ``breaker_in_flight`` and never
    above ``granted``, so counting fewer in-flight moves never trips the breaker later.
    ``ValueError`` when ``outcomes > granted`` (an outcome ends a grant).
    """
    for name, value in (("granted", granted), ("outcomes", outcomes)):
        if not is_plain_int(value) or value < 0:
            raise ValueError(f"breaker: {name} must be an int >= 0")
    if outcomes > granted:
        raise ValueError("breaker: more outcomes than grants")
    weight = Fraction(config.breaker_in_flight).limit_denominator(1_000_000)
    in_flight = granted - outcomes
    return outcomes + in_flight * weight.numerator // weight.denominator


def breaker_threshold(attempted: int, config: PolicyConfig) -> int:
    """Failed nodes that trip the breaker once ``attempted`` nodes tried the artifact.

    "Default 2 nodes or 5%" is read as *whichever is larger*:
    ``max(breaker_min_failures, ceil(breaker_failure_share * attempted))``.  The absolute
    floor keeps one flaky machine from pausing a small rollout; the share keeps a wide
    rollout from pausing on a background failure rate it always has.  The share is taken
    as an exact fraction (0.05 is 1/20), so 100 attempts need exactly 5 failures.
    """
    if not is_plain_int(attempted) or attempted < 0:
        raise ValueError("breaker: attempted must be an int >= 0")
    share = Fraction(config.breaker_failure_share).limit_denominator(1_000_000)
    by_share = -(-attempted * share.numerator // share.denominator)
    return max(config.breaker_min_failures, by_share)


def breaker_tripped(failures: int, attempted: int, config: PolicyConfig) -> bool:
    """Whether an artifact's rollout is paused: ``failures >= breaker_threshold(...)``.

    ``failures`` counts distinct nodes that reported a failed swap (probation failed,
    rolled back), so one node reporting twice cannot trip it alone; ``attempted`` counts
    distinct nodes that were granted a departure to the artifact.  The shell keeps both
    counts per artifact and passes ``paused`` to ``PoolState`` for pools asking for it.
    """
    if not is_plain_int(failures) or failures < 0:
        raise ValueError("breaker: failures must be an int >= 0")
    return failures >= breaker_threshold(attempted, config)


def breaker_pause_reason(
    *,
    artifact: str,
    failures: int,
    attempted: int,
    last_reason: str,
    paused: bool,
    config: PolicyConfig,
) -> str | None:
    """The breaker's trip: the pause text if this failure report pauses the rollout now.

    ``None`` when it stays as it is: already paused (one pause per scope serial), or not
    yet at ``breaker_threshold``.  The text is what operators and refused nodes see.
    """
    if paused or not breaker_tripped(failures, attempted, config):
        return None
    threshold = breaker_threshold(attempted, config)
    return (
        f"circuit breaker: {failures} of {attempted} nodes that moved to "
        f"{artifact[:16]}... failed (threshold {threshold}); last: {last_reason}"
    )


def breaker_resumes(*, paused: bool, paused_at_serial: int, scope_serial: int) -> bool:
    """The breaker's resume: a paused rollout resumes when an operator publishes a scope
    newer than the one in force when it tripped (``paused_at_serial``); then counting
    starts again from zero."""
    return paused and scope_serial > paused_at_serial


# -- gates 1-2 at ask time --------------------------------------------------------------

#: ``document_retry`` kinds: why gates 1-2 refused at ask time.
NO_DOCUMENT: Final = "no-document"
DOCUMENT_CHANGED: Final = "document-changed"
HELD_BY_DOCUMENT: Final = "held"


def document_retry(kind: str, config: PolicyConfig) -> float:
    """``retry_after`` for a refusal by gate 1 or 2 at ask time.

    * ``NO_DOCUMENT``: nothing published yet -- ``base_retry``;
    * ``DOCUMENT_CHANGED``: the token names an older allowlist version or scope serial than
      the replica holds; the node re-reads its documents and asks again -- ``min_retry``;
    * ``HELD_BY_DOCUMENT``: the current allowlist or scope says no -- ``held_retry``.
    """
    if kind == NO_DOCUMENT:
        return config.base_retry
    if kind == DOCUMENT_CHANGED:
        return config.min_retry
    if kind == HELD_BY_DOCUMENT:
        return config.held_retry
    raise ValueError(f"document_retry: unknown kind {kind!r}")


# -- inputs -----------------------------------------------------------------------------


def _finite_nonneg(where: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, int | float) and 0.0 <= value < math.inf):
            raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Aggregate:
    """A replica's estimate of one pool (median of the freshest gossip estimates).

    Per-node loads never reach the coordinator: only these sums.
    """

    #: ``C``: sum of the serving nodes' capacity.
    capacity: float
    #: ``L``: sum of their load, in the same units.
    load: float
    #: ``S``: how many nodes serve.
    serving: int
    #: When the estimate was made (same clock as ``now``).
    as_of: float

    def __post_init__(self) -> None:
        _finite_nonneg("aggregate", capacity=self.capacity, load=self.load)
        if not is_plain_int(self.serving) or self.serving < 0:
            raise ValueError("aggregate: serving must be an int >= 0")
        if not math.isfinite(self.as_of):
            raise ValueError("aggregate: as_of must be finite")
        # Floats from here on, so decide() and decide_batch() compute with equal values.
        for name in ("capacity", "load", "as_of"):
            object.__setattr__(self, name, float(getattr(self, name)))


#: Estimates considered for a pool's median (the freshest from distinct reporters).
FRESHEST: Final = 64


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """One reporter's latest gossip estimate of its pool, as of ``as_of`` (``now``'s clock)."""

    as_of: float
    capacity: float
    load: float
    serving: int

    def __post_init__(self) -> None:
        _finite_nonneg("estimate", capacity=self.capacity, load=self.load)
        if not is_plain_int(self.serving) or self.serving < 0:
            raise ValueError("estimate: serving must be an int >= 0")
        if not math.isfinite(self.as_of):
            raise ValueError("estimate: as_of must be finite")


def is_fresh(estimate: Estimate, now: float, config: PolicyConfig) -> bool:
    """Whether an estimate may enter a median: no older than ``aggregate_max_age``."""
    return now - estimate.as_of <= config.aggregate_max_age


def median_aggregate(estimates: Iterable[Estimate], now: float, config: PolicyConfig) -> Aggregate:
    """A pool's aggregate: the median, per component, of the freshest estimates.

    At most ``FRESHEST`` of them, one per reporter (the caller keeps the latest of each),
    none older than ``aggregate_max_age``: a lying minority cannot move a median.  With
    none fresh the aggregate is stale on purpose (``as_of`` past the limit), so gate 3
    grants nothing but forced departures instead of guessing.  ``serving`` is the lower
    median, so it is always a count some reporter saw.
    """
    max_age = config.aggregate_max_age
    fresh = [e for e in estimates if is_fresh(e, now, config)]
    if not fresh:
        return Aggregate(capacity=0.0, load=0.0, serving=0, as_of=now - max_age - 1.0)
    fresh.sort(key=lambda e: e.as_of, reverse=True)
    fresh = fresh[:FRESHEST]
    return Aggregate(
        capacity=_median([e.capacity for e in fresh]),
        load=_median([e.load for e in fresh]),
        serving=sorted(e.serving for e in fresh)[(len(fresh) - 1) // 2],  # the lower median
        as_of=_median([e.as_of for e in fresh]),
    )


def median_counts(
    reports: Iterable[tuple[float, Mapping[str, float]]],
) -> tuple[dict[str, float], float] | None:
    """Counts per key (push-sum's nodes per version) from many reporters' ``(as_of,
    counts)``: per key, the median over the ``FRESHEST`` newest reports, a report that
    does not name the key counting 0 -- so, as in ``median_aggregate``, a lying minority
    cannot move a count nor make up a key (a key whose median is 0 is left out).  With
    the median ``as_of``; None without reports.  No age limit: operators read ``as_of``.
    """
    fresh = sorted(reports, key=lambda r: r[0], reverse=True)[:FRESHEST]
    if not fresh:
        return None
    keys = {k for _, counts in fresh for k in counts}
    out = {k: _median([counts.get(k, 0.0) for _, counts in fresh]) for k in sorted(keys)}
    return {k: v for k, v in out.items() if v > 0.0}, _median([a for a, _ in fresh])


def _median(values: list[float]) -> float:
    """``statistics.median``, spelled out (the same arithmetic: the mean of the middle two
    of an even count), so this module imports nothing beyond its allowlist."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


@dataclass(frozen=True, kw_only=True)
class Ask:
    """One node asking to leave its pool now (gates 1 and 2 already passed)."""

    node: NodeId
    #: The node's serving capacity: what the pool loses while it is away.
    capacity: float
    #: The node's current load (a lower bound on the pool's load).
    load: float = 0.0
    #: The ask rides on an operator's ``force`` scope.
    force: bool = False
    #: When the ask arrived.  Orders the asks of a batch (``decide_sequence``,
    #: ``decide_batch``); the decision itself is taken at ``now``.
    time: float = 0.0

    def __post_init__(self) -> None:
        _finite_nonneg("ask", capacity=self.capacity, load=self.load)
        if not math.isfinite(self.time):
            raise ValueError("ask: time must be finite")
        for name in ("capacity", "load", "time"):
            object.__setattr__(self, name, float(getattr(self, name)))


@dataclass(frozen=True, kw_only=True)
class Lease:
    """A granted departure: the node may be away until ``expires`` (or until it rejoins)."""

    node: NodeId
    pool: str
    capacity: float
    expires: float
    forced: bool = False

    def __post_init__(self) -> None:
        _finite_nonneg("lease", capacity=self.capacity)
        if math.isnan(self.expires):
            raise ValueError("lease: expires must be a number")
        for name in ("capacity", "expires"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def active(self, now: float) -> bool:
        return now < self.expires


@dataclass(frozen=True, kw_only=True)
class Usage:
    """What a replica's active leases in one pool take: the ``A`` of the rule."""

    count: int
    #: ``cap(A)``, summed left to right in grant order (the batch sums the same way,
    #: so both give bit-identical floats).
    capacity: float
    forced: int
    #: Earliest expiry among the leases (``inf`` if none), for ``retry_after``.
    earliest: float
    earliest_forced: float

    @classmethod
    def of(cls, leases: Iterable[Lease]) -> Usage:
        count = forced = 0
        capacity = 0.0
        earliest = earliest_forced = math.inf
        for lease in leases:
            count += 1
            capacity += lease.capacity
            earliest = min(earliest, lease.expires)
            if lease.forced:
                forced += 1
                earliest_forced = min(earliest_forced, lease.expires)
        return cls(
            count=count,
            capacity=capacity,
            forced=forced,
            earliest=earliest,
            earliest_forced=earliest_forced,
        )

    def plus(self, lease: Lease) -> Usage:
        """With ``lease`` added last: the same left-to-right sum ``of`` would compute."""
        return Usage(
            count=self.count + 1,
            capacity=self.capacity + lease.capacity,
            forced=self.forced + lease.forced,
            earliest=min(self.earliest, lease.expires),
            earliest_forced=min(self.earliest_forced, lease.expires)
            if lease.forced
            else self.earliest_forced,
        )


@dataclass(frozen=True, kw_only=True)
class PoolState:
    """One replica's view of one pool: the aggregate, its own leases, breaker, start time.

    Leases are kept in grant order (the order ``cap(A)`` is summed in).  Values are
    immutable: ``add``, ``expire`` and ``end_lease`` return new states.
    """

    pool: str
    aggregate: Aggregate
    #: When this replica (re)started; it grants nothing until ``started_at + lease_ttl``.
    #: Required on purpose: a replica that forgets it would grant blind after a restart.
    started_at: float
    leases: tuple[Lease, ...] = ()
    #: The circuit breaker holds the rollout this pool is asking for.
    paused: bool = False

    #: ``pool_slot(pool)``, computed once: where the deal of the pool's units starts.
    slot: int = field(init=False, repr=False, compare=False)
    _usage: Usage = field(init=False, repr=False, compare=False)
    _by_node: dict[NodeId, Lease] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if math.isnan(self.started_at):
            raise ValueError("pool: started_at must be a number")
        by_node: dict[NodeId, Lease] = {}
        for lease in self.leases:
            if lease.pool != self.pool:
                raise ValueError(f"pool {self.pool!r}: holds a lease for pool {lease.pool!r}")
            if lease.node in by_node:
                raise ValueError(f"pool {self.pool!r}: two leases for node {lease.node!r}")
            by_node[lease.node] = lease
        object.__setattr__(self, "_by_node", by_node)
        object.__setattr__(self, "_usage", Usage.of(self.leases))
        object.__setattr__(self, "slot", pool_slot(self.pool))

    def usage(self, now: float) -> Usage:
        """``A`` at ``now``: the leases not yet expired (cached when none has)."""
        if now < self._usage.earliest:
            return self._usage
        return Usage.of(lease for lease in self.leases if lease.active(now))

    def active(self, now: float) -> tuple[Lease, ...]:
        return tuple(lease for lease in self.leases if lease.active(now))

    def lease_of(self, node: NodeId, now: float) -> Lease | None:
        """The node's active lease on this replica, if any."""
        lease = self._by_node.get(node)
        return lease if lease is not None and lease.active(now) else None

    def add(self, lease: Lease) -> PoolState:
        """With ``lease`` appended (replacing any older, lapsed lease of the same node).

        Appending costs two C-level copies, not a Python pass over every lease: the
        derived usage and node index are extended rather than rebuilt (the service and
        ``decide_sequence`` add one lease per grant).
        """
        if lease.pool != self.pool:
            raise ValueError(f"pool {self.pool!r}: cannot add a lease for pool {lease.pool!r}")
        if lease.node in self._by_node:
            kept = tuple(old for old in self.leases if old.node != lease.node)
            return replace(self, leases=(*kept, lease))
        new = object.__new__(PoolState)
        for f in fields(self):
            object.__setattr__(new, f.name, getattr(self, f.name))
        object.__setattr__(new, "leases", (*self.leases, lease))
        object.__setattr__(new, "_usage", self._usage.plus(lease))
        object.__setattr__(new, "_by_node", {**self._by_node, lease.node: lease})
        return new

    def expire(self, now: float) -> PoolState:
        """Without the leases that lapsed by ``now``: a dead node holds nothing hostage."""
        if now < self._usage.earliest:
            return self
        return replace(self, leases=self.active(now))

    def end_lease(self, node: NodeId) -> PoolState:
        """Without ``node``'s lease: it reported "rejoined" with the new version."""
        if node not in self._by_node:
            return self
        return replace(self, leases=tuple(old for old in self.leases if old.node != node))

    def with_aggregate(self, aggregate: Aggregate) -> PoolState:
        return replace(self, aggregate=aggregate)


# -- the answer -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A grant (with its lease) or a refusal (with gate, reason and when to retry)."""

    granted: bool
    reason: str
    gate: str = GATE_CAPACITY
    #: Seconds to wait before asking again (refusals only; the node adds jitter).
    retry_after: float | None = None
    #: 1-based place among the refused asks of a batch (``decide_sequence``/batch only).
    queue_position: int | None = None
    lease: Lease | None = None
    #: What the reason code alone does not say (``replica-share``: whose share, of what).
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASON_CODES:
            raise ValueError(f"decision: unknown reason {self.reason!r}")
        if self.granted != (self.code <= LAST_GRANT_CODE):
            raise ValueError(f"decision: reason {self.reason!r} contradicts granted")
        if self.granted != (self.lease is not None):
            raise ValueError("decision: a grant carries a lease and a refusal does not")

    @property
    def code(self) -> int:
        return REASON_CODES[self.reason]

    def to_gate_result(self) -> GateResult:
        """The same answer in the shape gates 1 and 2 use, for status and logs."""
        if self.lease is not None:
            forced = " (forced)" if self.lease.forced else ""
            detail = f"lease until {self.lease.expires:g}{forced}"
        else:
            place = f", queue position {self.queue_position}" if self.queue_position else ""
            why = f"{self.detail}; " if self.detail else ""
            detail = f"{why}retry after {self.retry_after:g} s{place}"
        return GateResult(
            ok=self.granted,
            gate=self.gate,
            reason=self.reason,
            detail=detail,
            retry_after=self.retry_after,
        )


def retry_until(earliest: float, now: float, config: PolicyConfig) -> float:
    """Until the earliest blocking lease lapses, within ``[min_retry, base_retry]``.

    ``decide_batch`` applies the same clamp elementwise.
    """
    return min(config.base_retry, max(config.min_retry, earliest - now))


def _refuse(code: int, retry_after: float) -> Decision:
    return Decision(
        granted=False, reason=REASONS[code], gate=gate_of(code), retry_after=retry_after
    )


def _refuse_share(detail: str, config: PolicyConfig) -> Decision:
    """``replica-share``: no lease of this replica's lapsing changes a share of 0, only
    a new aggregate does, so ``base_retry`` (the node's token comes from the others)."""
    return Decision(
        granted=False,
        reason=REASONS[REPLICA_SHARE],
        gate=gate_of(REPLICA_SHARE),
        retry_after=config.base_retry,
        detail=detail,
    )


def headroom(aggregate: Aggregate, load: float, share: float, config: PolicyConfig) -> float:
    """This replica's share of the capacity that may leave: ``w * (C - max(L, l)/u')``

    with ``u' = u * (1 - churn_margin)`` and ``w = share`` (``headroom_share``).

    ``decide_batch`` evaluates the same expression elementwise, operation for operation.
    """
    worst_load = max(aggregate.load, load)
    return share * (aggregate.capacity - worst_load / config.grant_utilization)


def decide(pool: PoolState, ask: Ask, now: float, config: PolicyConfig) -> Decision:
    """Gate 3 for one ask at ``now``.  To record a grant, ``pool.add(decision.lease)``.

    Checks run in the order of the module docstring's table and the first failure is the
    answer, so an operator sees the most fundamental reason (a pause before a full pool).
    """
    existing = pool.lease_of(ask.node, now)
    if existing is not None:
        return Decision(granted=True, reason="existing-lease", lease=existing)
    if pool.paused:
        return _refuse(PAUSED, config.paused_retry)
    warm_until = pool.started_at + config.lease_ttl
    if now < warm_until:
        return _refuse(REPLICA_WARMUP, warm_until - now)
    used = pool.usage(now)
    n = config.replicas
    distance = (config.rank - pool.slot) % n  # replica_share's, for all three budgets
    if ask.force:
        if used.forced >= _dealt(config.emergency_units, distance, n):
            return _refuse(EMERGENCY_BUDGET, retry_until(used.earliest_forced, now, config))
        code = FORCED
    else:
        aggregate = pool.aggregate
        if now - aggregate.as_of > config.aggregate_max_age:
            return _refuse(AGGREGATE_STALE, config.base_retry)
        lease_share = _dealt(config.lease_units, distance, n)
        if 0 < lease_share <= used.count:
            return _refuse(LEASE_BUDGET, retry_until(used.earliest, now, config))
        spare_nodes = aggregate.serving - config.min_serving
        node_share = _dealt(share_units(spare_nodes, config.quorum), distance, n)
        if spare_nodes <= 0 or 0 < node_share <= used.count:
            return _refuse(MIN_SERVING, retry_until(used.earliest, now, config))
        if node_share == 0:
            return _refuse_share(share_detail(spare_nodes, "spare", config), config)
        if lease_share == 0:
            return _refuse_share(share_detail(config.max_concurrent, "concurrent", config), config)
        departures = min(config.max_concurrent, spare_nodes)
        room = headroom(aggregate, ask.load, headroom_share(departures, config), config)
        if used.capacity + ask.capacity > room:
            return _refuse(NO_SPARE_CAPACITY, retry_until(used.earliest, now, config))
        code = GRANTED
    lease = Lease(
        node=ask.node,
        pool=pool.pool,
        capacity=ask.capacity,
        expires=now + config.lease_ttl,
        forced=ask.force,
    )
    return Decision(granted=True, reason=REASONS[code], lease=lease)


def decide_sequence(
    pool: PoolState, asks: Sequence[Ask], now: float, config: PolicyConfig
) -> tuple[tuple[Decision, ...], PoolState]:
    """``decide`` for each ask in ask-time order (ties: given order), recording grants.

    The reference semantics of ``decide_batch``.  Returns the decisions in the order the
    asks were given, with queue positions filled in, and the state after expiring lapsed
    leases and adding the grants.
    """
    order = sorted(range(len(asks)), key=lambda i: asks[i].time)
    state = pool.expire(now)
    decisions: list[Decision | None] = [None] * len(asks)
    refused = 0
    for i in order:
        decision = decide(state, asks[i], now, config)
        if decision.lease is not None:
            if decision.code != EXISTING_LEASE:
                state = state.add(decision.lease)
        else:
            refused += 1
            decision = replace(decision, queue_position=refused)
        decisions[i] = decision
    return tuple(d for d in decisions if d is not None), state
