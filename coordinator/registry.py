"""The replica's node registry: who reported which version and state, and pool estimates.

Each status report registers the node (version, update state, why gates 1-2 hold it:
rollout progress for operators, kept in the database) and keeps its aggregate estimate
in memory -- one per node, the latest -- for ``policy.median_aggregate`` (README
"Capacity gate and departure tokens": the coordinator sees aggregate load only).

Admission (P10, ``core.admission`` has the rules): node keys cost nothing to make, so
what a node id weighs depends on the network document (``NetworkConfig``):

* ``admit``, at each hello the network's rule let in: a node id this registry does not
  know yet is refused (``admission/subnet-full``) when its subnet already holds
  ``subnet_nodes`` ids seen recently; a known id always gets back in.  The session's
  subnet, member document expiry and member pool are kept while it lasts (``sessions``).
* a node's row keeps ``first_seen`` (set once, at its first registration: the hello of
  the session it first reported in), the subnet it was last seen from and its member
  document's expiry, so ``who`` answers the same after a restart;
* ``who``: whether the node is counted (``admission.has_standing``) and its subnet --
  what the version counts, the aggregate's reporters, leases and the breaker weigh;
* ``aggregate``: the median over counted reporters only, at most ``subnet_reporters``
  per subnet, the longest-standing first (``admission.pick_reporters``);
* in an ``enrolled`` network the member document's pool is the node's pool: a status
  report naming another one is refused (``admission/wrong-pool``) and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from p2pupdate.core import admission
from p2pupdate.core import coordproto as proto
from p2pupdate.core import documents as docs

from . import policy
from .errors import RequestError
from .store import NodeRow, Store

__all__ = ["Registry", "Session"]

#: A registered node's row is written again at least this often while it reports (its
#: ``seen``): the registration window counts from it after a restart.
_SEEN_EVERY = 60.0
#: A pool's choice of reporters is made again when either clock moved this much, or a
#: counted node reports in the pool for the first time (a new id without standing cannot
#: enter it, so a flood of them costs no new choice).  Why a cache: the choice is one
#: pass over every reporter of the pool (~2 us each), and gate 3 reads the aggregate on
#: the ask path after every report; the estimates' values are read fresh each time.
CHOOSE_EVERY = 1.0
#: How often (monotonic seconds) ``maybe_forget`` scans the registry: one pass over every
#: row, so rarely; the first call (at start) scans at once.
FORGET_EVERY = 3600.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Session:
    """What the hello of a node's current session said about it (``admission``)."""

    #: When the session was admitted (wall): a node's ``first_seen`` if it registers in it.
    since: float
    subnet: str | None
    #: Its member document's expiry and pool (enrolled networks; None: open).
    member_expires: int | None = None
    member_pool: str | None = None


class Registry:
    def __init__(
        self,
        *,
        store: Store,
        clock: Callable[[], float],
        wall: Callable[[], float],
        config: policy.PolicyConfig,
        network: docs.NetworkConfig,
    ) -> None:
        self.store = store
        self.clock = clock
        self.wall = wall
        self.policy = config
        #: The network document in force (its admission rule and subnet caps).
        self.network = network
        self.nodes: dict[str, NodeRow] = {r.node: r for r in store.load_nodes()}
        self.estimates: dict[str, dict[str, policy.Estimate]] = {}
        #: Each node's latest push-sum count of nodes per version: ``(as_of, counts)``.
        self.version_counts: dict[str, tuple[float, dict[str, float]]] = {}
        #: Admitted sessions, by node (``admit`` adds, ``left`` drops).
        self.sessions: dict[str, Session] = {}
        self._next_forget = float("-inf")
        #: Per pool: (clock, wall, reporters chosen) -- ``reporters``' cache.
        self._chosen: dict[str, tuple[float, float, list[str]]] = {}
        #: Node ids by the subnet their row names (the registration cap reads one subnet).
        self._by_subnet: dict[str | None, set[str]] = {}
        for row in self.nodes.values():
            self._by_subnet.setdefault(row.subnet, set()).add(row.node)

    # -- the hello ------------------------------------------------------------------------

    def admit(
        self, node: str, *, subnet: str | None, admitted: admission.Admitted
    ) -> admission.Refused | None:
        """A hello the network's rule let in: the registration cap, then the session kept."""
        now = self.wall()
        row = self.nodes.get(node)
        if row is None and node not in self.sessions:
            refused = admission.registration_refused(
                self.network, subnet=subnet, recent=self._recent(subnet, now)
            )
            if refused is not None:
                return refused
        self.sessions[node] = Session(
            since=now,
            subnet=subnet,
            member_expires=admitted.member_expires,
            member_pool=admitted.pool,
        )
        if row is not None:  # seen again, maybe from elsewhere, maybe with a new member doc
            if row.subnet != subnet:
                self._chosen.clear()  # its place among its subnet's reporters moved
            self._save(
                replace(row, seen=now, subnet=subnet, member_expires=admitted.member_expires),
                old=row,
            )
        return None

    def _recent(self, subnet: str | None, now: float) -> int:
        """Ids of ``subnet`` registered and seen within the window, plus its admitted
        sessions not registered yet."""
        since = now - admission.REGISTRATION_WINDOW
        rows = sum(1 for n in self._by_subnet.get(subnet, ()) if self.nodes[n].seen >= since)
        pending = sum(
            1 for n, s in self.sessions.items() if s.subnet == subnet and n not in self.nodes
        )
        return rows + pending

    def left(self, node: str) -> None:
        """The node's session ended (the server's connection closed): it was seen until
        now, which counts toward its standing (``admission.has_standing``)."""
        if self.sessions.pop(node, None) is None:
            return
        row = self.nodes.get(node)
        if row is not None:
            self._save(replace(row, seen=max(row.seen, self.wall())), old=row)

    def member_pool(self, node: str) -> str | None:
        """The pool the node's member document names (None: no member document)."""
        session = self.sessions.get(node)
        return session.member_pool if session is not None else None

    def check_pool(self, node: str, pool: str) -> None:
        """``RequestError`` (``admission/wrong-pool``) if ``pool`` is not the member's."""
        member = self.member_pool(node)
        if member is not None and pool != member:
            raise RequestError(
                "admission/wrong-pool",
                f"this node's member document puts it in pool {member!r}, not {pool!r}",
            )

    # -- reports ----------------------------------------------------------------------------

    def on_status(self, node: str, report: proto.StatusReport) -> str | None:
        """Register the node; the pool whose estimates changed (None if none did)."""
        pool = report.pool or "default"
        self.check_pool(node, pool)
        held = report.held
        held_text = f"{held.gate}/{held.reason}" if held else None
        self.register(node, pool, report.version, report.artifact, report.state, held_text)
        if report.versions is not None:
            as_of = self.clock() - report.versions.age
            self.version_counts[node] = (as_of, dict(report.versions.counts))
        else:
            self.version_counts.pop(node, None)
        estimate = report.estimate
        if estimate is not None:
            held_now = self.estimates.setdefault(pool, {})
            if node not in held_now and self.counted(node):
                self._chosen.pop(pool, None)  # a new reporter that may enter: choose again
            held_now[node] = policy.Estimate(
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
        session = self.sessions.get(node)
        if old is not None:
            first_seen, subnet, expires = old.first_seen, old.subnet, old.member_expires
        elif session is not None:
            first_seen, subnet, expires = session.since, session.subnet, session.member_expires
        else:  # reported without a hello (a test calling the replica directly)
            first_seen, subnet, expires = now, None, None
        row = NodeRow(
            node=node,
            pool=pool,
            version=version,
            artifact=artifact,
            state=state,
            held=held,
            seen=now,
            first_seen=first_seen,
            subnet=subnet,
            member_expires=expires,
        )
        self._save(row, old=old)

    def _save(self, row: NodeRow, *, old: NodeRow | None) -> None:
        self.nodes[row.node] = row
        if old is not None and old.subnet != row.subnet:
            self._by_subnet.get(old.subnet, set()).discard(row.node)
        self._by_subnet.setdefault(row.subnet, set()).add(row.node)
        if old is None or replace(old, seen=row.seen) != row or row.seen - old.seen > _SEEN_EVERY:
            self.store.save_node(row)

    def maybe_forget(self) -> int:
        """``forget_idle`` at most every ``FORGET_EVERY`` (the server's flusher calls it)."""
        now = self.clock()
        if now < self._next_forget:
            return 0
        self._next_forget = now + FORGET_EVERY
        return self.forget_idle()

    def forget_idle(self) -> int:
        """Forget the registered ids ``admission.forgettable`` lets go (never counted, not
        seen for ``FORGET_UNCOUNTED``, no session now): their rows, their estimates.  The
        number forgotten.  What bounds the registry of an open network over time."""
        now = self.wall()
        gone = [
            row.node
            for row in self.nodes.values()
            if row.node not in self.sessions
            and admission.forgettable(
                self.network,
                first_seen=row.first_seen,
                member_expires=row.member_expires,
                seen=row.seen,
                now=now,
            )
        ]
        for node in gone:
            row = self.nodes.pop(node)
            self._by_subnet.get(row.subnet, set()).discard(node)
            self.version_counts.pop(node, None)
            for pool, held in self.estimates.items():
                if held.pop(node, None) is not None:
                    self._chosen.pop(pool, None)
            self.store.forget_node(node)
        return len(gone)

    def rejoined(self, node: str, artifact: str) -> None:
        """The node runs ``artifact`` now and serves (its version is known if it did)."""
        old = self.nodes.get(node)
        pool = old.pool if old else "default"
        version = old.version if old and old.artifact == artifact else "?"
        self.register(node, pool, version, artifact, "serving", None)

    # -- who counts -------------------------------------------------------------------------

    def who(self, node: str) -> admission.Standing:
        """Whether ``node`` is counted (``admission.has_standing``), and its subnet.

        A registered node by its row; one admitted but not registered yet by its session
        (its standing would count from the hello); an unknown node is not counted."""
        wall = self.wall()
        known = self._known(node, wall)
        if known is None:
            return admission.Standing(counted=False, subnet=None)
        first_seen, last_seen, expires, subnet = known
        counted = admission.has_standing(
            self.network,
            first_seen=first_seen,
            last_seen=last_seen,
            member_expires=expires,
            now=wall,
        )
        return admission.Standing(counted=counted, subnet=subnet)

    def _known(self, node: str, wall: float) -> tuple[float, float, int | None, str | None] | None:
        """``(first_seen, last_seen, member_expires, subnet)`` of a registered or admitted
        node; a node holding a session now is seen now."""
        row = self.nodes.get(node)
        session = self.sessions.get(node)
        if row is not None:
            last = wall if session is not None else row.seen
            return row.first_seen, last, row.member_expires, row.subnet
        if session is not None:
            return session.since, wall, session.member_expires, session.subnet
        return None

    def counted(self, node: str) -> bool:
        return self.who(node).counted

    def counted_rows(self) -> list[NodeRow]:
        """The registered nodes counted now (``/status``: one pass, as ``who`` would)."""
        network, wall, has_standing = self.network, self.wall(), admission.has_standing
        sessions = self.sessions
        return [
            row
            for row in self.nodes.values()
            if has_standing(
                network,
                first_seen=row.first_seen,
                last_seen=wall if row.node in sessions else row.seen,
                member_expires=row.member_expires,
                now=wall,
            )
        ]

    def reporters(self, pool: str) -> dict[str, policy.Estimate]:
        """The estimates that enter the pool's median: fresh ones (as ``median_aggregate``
        takes them: a stale one must not hold its subnet's place) of counted nodes, at
        most ``subnet_reporters`` per subnet, the longest-standing first.  The choice is
        made again at most every ``CHOOSE_EVERY`` (see there); between two choices an
        estimate that went stale is left out by ``median_aggregate`` itself."""
        now, wall = self.clock(), self.wall()
        cached = self._chosen.get(pool)
        if (
            cached is None
            or abs(now - cached[0]) >= CHOOSE_EVERY
            or abs(wall - cached[1]) >= CHOOSE_EVERY
        ):
            cached = (now, wall, self._choose(pool, now, wall))
            self._chosen[pool] = cached
        estimates = self.estimates.get(pool, {})
        return {node: estimates[node] for node in cached[2] if node in estimates}

    def _choose(self, pool: str, now: float, wall: float) -> list[str]:
        network, has_standing, known = self.network, admission.has_standing, self._known
        estimates = self.estimates.get(pool, {})
        candidates = []
        for node, estimate in estimates.items():  # the ask path: one pass, no more
            if not policy.is_fresh(estimate, now, self.policy):
                continue
            seen = known(node, wall)
            if seen is None:
                continue
            first_seen, last_seen, expires, subnet = seen
            if has_standing(
                network,
                first_seen=first_seen,
                last_seen=last_seen,
                member_expires=expires,
                now=wall,
            ):
                candidates.append(admission.Reporter(node, subnet, first_seen))
        return admission.pick_reporters(candidates, network.subnet_reporters)

    def gossip_versions(self, counted: set[str]) -> tuple[dict[str, float], float] | None:
        """Nodes per version as gossip counts them, whole fleet: ``policy.median_counts``
        over the push-sum counts of the ``counted`` nodes that report them, and its
        ``as_of`` (monotonic).

        Next to ``/status``'s ``nodes.versions`` (the reports' own versions, counted
        nodes, exact but each as old as its node's last report: up to ~1.5x
        ``next_report_s``, ~7,500 s at 10^6 nodes), these are estimates of the whole
        fleet (every node that gossips, counted or not, at most ``MAX_VERSIONS`` versions)
        as old as one push-sum epoch (~50 s) plus the reporter's heartbeat age."""
        reports = (v for node, v in self.version_counts.items() if node in counted)
        return policy.median_counts(reports)

    def aggregate(self, pool: str) -> policy.Aggregate:
        """The pool's aggregate now (``policy.median_aggregate`` of ``reporters``)."""
        return policy.median_aggregate(self.reporters(pool).values(), self.clock(), self.policy)
