"""One coordinator replica: documents, registry, asks, breaker -- everything but sockets.

``Replica`` is a thin front: it builds the parts from one ``ServiceConfig`` and routes
the shell's calls to them.  The network shell (``coordinator.server``) feeds it HTTP
requests and the node channel's typed requests (``p2pupdate.core.coordproto``) and
performs the pushes it asks for.

* ``publishing.Documents``  the trust store, published documents, the artifact origin;
* ``registry.Registry``     nodes' versions and states, and their pool estimates;
* ``asks.Asks``             gates 1-3 for each ask, leases, warm-up (the ask order is
                            that module's docstring); gate 3 itself is
                            ``coordinator.policy.decide``;
* ``breakers.Breakers``     failed moves counted, rollouts paused and resumed;
* ``ice.IceServers``        the STUN/TURN servers handed to nodes, TURN credentials minted;
* ``status.replica_status`` the operators' ``/status`` view.

Admission (P10): the replica reads its network document (``network.msgpack`` in the
network directory, signed by the root role; ``core.admission``) at start -- absent, the
network predates admission and ``admission.default_config`` applies; damaged, forged,
expired or of another network, the start is refused (``ConfigError``: this machine's
files, not a peer's fault).  ``admit`` is the hello's gate: the network's rule
(``admission.admit_hello``), then the registry's per-subnet registration cap.

Nudge at reconnect: at the first status report of each session (``on_status``) the
replica pushes the nudge it holds to the node when ``policy_signals.reconnect_nudge``
says so (a nudge for the build in force, the node in scope and behind);
``ServiceConfig.nudge_on_connect`` switches it off.

The queue's hold (``policy_hold``): a refused node behind the blocking leases waits in
proportion to its place times how long one node holds a slot.  The replica measures that
hold: the grant time of each lease it signs (``ask``) and the end of each lease a report
ended (rejoined, returned, failed: ``_lease_ended``), on the monotonic clock, the last
``HOLD_SAMPLES``; from ``HOLD_MIN_SAMPLES`` of them on, the queue waits with
``min(queue_hold, median)`` (``hold_in_force``) -- so the demos' 5-10 s swaps are not made
to wait for a guessed 90 s.  The measurement lives in memory (after a restart the prior
applies until enough leases ended) and is in ``/status`` (``queue_hold``).

Time: ``clock()`` (monotonic) for leases, ``wall()`` for documents and tokens; both are
arguments so tests can drive them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pupdate.core import admission, crypto, reporting, wire
from p2pupdate.core import coordproto as proto
from p2pupdate.core import documents as docs
from p2pupdate.core.departure import DEFAULT_MAX_SKEW, DEFAULT_TOKEN_TTL
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.core.session import Signer
from p2pupdate.core.trust import TrustStore
from p2pupdate.fsutil import read_limited

from . import policy, policy_hold, policy_signals
from .asks import Answer, Asks, LeaseInfo
from .breakers import Breaker, Breakers
from .errors import ConfigError, RequestError, StateDamaged
from .ice import IceConfig, IceServers
from .metrics import Metrics
from .origin import OriginConfig, OriginGate
from .publishing import PUBLISHABLE, ROOT_FILE, Documents, load_root, open_trust
from .registry import Registry
from .statefiles import DB_FILE, quarantine
from .status import replica_status
from .store import BreakerRow, NodeRow, Store

__all__ = [
    "PUBLISHABLE",
    "ROOT_FILE",
    "Answer",
    "Breaker",
    "ConfigError",
    "LeaseInfo",
    "Replica",
    "RequestError",
    "ServiceConfig",
    "load_network",
    "load_root",
]


def load_network(network_dir: Path, root: docs.Root, now_wall: float) -> docs.NetworkConfig:
    """The network document in force: ``NETWORK_FILE`` of the network directory, verified
    (root role), fresh and of this root's network; ``admission.default_config`` when the
    file is absent (a network made before admission).  Anything else is ``ConfigError``
    naming the file: the operator's files on this machine, which a replica cannot mend."""
    path = network_dir / admission.NETWORK_FILE
    what = f"{path} (the network document)"
    try:
        data = read_limited(path, wire.DOCUMENT_LIMITS.max_bytes)
    except FileNotFoundError:
        return admission.default_config(root.network, issued=int(now_wall))
    except OSError as exc:  # a directory, unreadable, too large (FileTooLargeError)
        raise ConfigError(f"{what}: {exc.strerror or exc}") from None
    try:
        signed = admission.open_network(data, root)
        docs.check_fresh(signed.doc, int(now_wall))
    except P2PUpdateError as exc:
        raise ConfigError(
            f"{what}: {exc.rule}: {exc} (sign a new one with the root key; "
            "the replica does not start without a valid one)"
        ) from None
    return signed.doc


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    network_dir: Path
    replica: int = 1
    state_dir: Path | None = None
    #: Lifetime of a departure token (integer seconds, as documents carry them).
    token_ttl: int = DEFAULT_TOKEN_TTL
    #: Clock difference tolerated between a node and this replica (seconds).
    max_skew: int = DEFAULT_MAX_SKEW
    #: Gate 3's knobs.  ``replicas``, ``quorum``, ``rank`` and ``lease_ttl`` are not read
    #: from here: the replica takes them from the root and ``token_ttl + max_skew``.
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)
    max_artifact: int = 1 << 30
    #: This replica is new and never granted anything: no warm-up on its first start.
    #: Ignored once the database holds a grant horizon (then that decides).
    first_start: bool = False
    #: STUN/TURN servers and coturn's secret (``serve --stun/--turn/--turn-secret-file``).
    ice: IceConfig = field(default_factory=IceConfig)
    #: The origin's downloader cap (``serve --origin-max-downloaders``).
    origin: OriginConfig = field(default_factory=OriginConfig)
    #: Whose signals count: lapse cooldowns, introductions (``policy_signals``).
    signals: policy_signals.SignalsConfig = field(default_factory=policy_signals.SignalsConfig)
    #: Heartbeat reports a second this replica aims for (``core.reporting``; P11).
    report_budget: float = reporting.DEFAULT_BUDGET
    #: Push the nudge held to a node whose session opens, if it is for the build in force
    #: and the node is in scope and behind (``policy_signals.reconnect_nudge``).
    nudge_on_connect: bool = True

    @property
    def replica_dir(self) -> Path:
        return self.state_dir or self.network_dir / f"replica-{self.replica}"


class Replica:
    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.log = log
        d = config.replica_dir
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.origin = OriginGate(config.origin, clock=clock)
        # A database that does not open or check is quarantined here (``store.damage``);
        # a row that fails its check on load is found by the part that reads it.
        self.store = Store(d / DB_FILE, wall=wall, log=log)
        artifacts = d / "artifacts"
        if artifacts.is_symlink() or (artifacts.exists() and not artifacts.is_dir()):
            moved = quarantine(artifacts)
            self.store.damaged(f"{artifacts.name} is not a directory", moved.name, "made again")
        artifacts.mkdir(exist_ok=True)
        try:
            self._open_parts()
        except StateDamaged as exc:
            self.store.quarantine(str(exc))
            self._open_parts()
        self.store.serving(self._persist_memory)
        log(self.network.describe())
        if self.documents.retired:
            log(
                f"{self.documents.retired} stored documents are signed by keys the current "
                "root no longer lists: not served"
            )

    def _open_parts(self) -> None:
        """Build the parts from the database (each reads its own rows)."""
        config, clock, wall = self.config, self.clock, self.wall
        trust = open_trust(self.store, config.network_dir, wall())
        key_path = config.network_dir / "keys" / f"coordinator-{config.replica}.pem"
        try:
            self.key = crypto.private_key_from_pem(read_limited(key_path, crypto.MAX_PEM_BYTES))
        except (OSError, P2PUpdateError) as exc:
            raise ConfigError(f"{key_path}: {exc}") from None
        self.keyid = self.key.keyid
        self.signer = Signer(self.key)
        self.network = load_network(config.network_dir, trust.root, wall())
        role = trust.root.roles["coordinator"]
        if self.keyid not in role.keys:
            raise ConfigError(f"{key_path} is not a coordinator key of the root")
        if not 1 <= config.token_ttl <= 86400 or not 0 <= config.max_skew <= 3600:
            raise ConfigError("token ttl must be 1 s .. 1 day and max skew 0 .. 1 h")
        try:
            self.policy = replace(
                config.policy,
                replicas=len(role.keys),
                quorum=role.threshold,
                rank=sorted(role.keys).index(self.keyid),
                lease_ttl=float(config.token_ttl + config.max_skew),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        #: Hooks the shell sets: push a message to every connected node, or to one; how
        #: many are connected.
        self.push_all: Callable[[proto.Push], None] = lambda _msg: None
        self.push_to: Callable[[str, proto.Push], None] = lambda _node, _msg: None
        self.connected: Callable[[], int] = lambda: 0
        #: Set by the shell (``coordinator.catchup``): what the other replicas hold.
        self.peers: Callable[[], dict[str, Any]] = dict
        self.metrics = Metrics(self)
        self.ice_servers = IceServers(config.ice, wall=wall)
        self.breakers = Breakers(
            store=self.store,
            wall=wall,
            config=self.policy,
            who=lambda n: self.registry.who(n),
            network=lambda: self.network,
        )
        self.documents = Documents(
            store=self.store,
            trust=trust,
            directory=self.dir,
            max_artifact=config.max_artifact,
            wall=wall,
            metrics=self.metrics,
            push=lambda msg: self.push_all(msg),
            on_scope=self.breakers.resume_for,
            damaged=lambda why, moved: self.store.damaged(why, moved, "not served"),
        )
        self.registry = Registry(
            store=self.store, clock=clock, wall=wall, config=self.policy, network=self.network
        )
        #: Hellos turned away, by reason (``admission/...``), since start.
        self.hellos_refused: Counter[str] = Counter()
        self.asks = Asks(
            token_ttl=config.token_ttl,
            max_skew=config.max_skew,
            # a quarantined database may have granted: its horizon is unknown, so wait
            first_start=config.first_start and not self.store.emptied,
            config=self.policy,
            store=self.store,
            clock=clock,
            wall=wall,
            signer=self.signer,
            documents=self.documents,
            registry=self.registry,
            breakers=self.breakers,
            signals=config.signals,
            network=lambda: self.network,
        )
        self.signals = config.signals
        self.asks.push_to = lambda node, msg: self.push_to(node, msg)
        #: The session (the registry's, one per hello) whose first status report came,
        #: by node (``on_status``); ``left`` drops it.
        self.reported: dict[str, object] = {}
        #: Nudges pushed to nodes whose session opened (``reconnect_nudge``), since start.
        self.reconnect_nudges = 0
        #: How long the leases that ended by a report were held (``policy_hold``).
        self.holds = policy_hold.Holds()
        #: Per node holding a lease signed here: its nonce and grant time (monotonic).
        self.granted_at: dict[str, tuple[bytes, float]] = {}

    def _persist_memory(self) -> None:
        """The database was found damaged while serving and replaced by an empty one:
        write back what this replica holds.  The grant horizon is the one in memory (the
        exact value: nothing is forgotten, so no warm-up); the audit log is lost (its
        copy is in the quarantined file)."""
        if self.store.last_horizon is not None:
            self.store.set_grant_horizon(self.store.last_horizon)
        self.documents.persist()
        for b in self.breakers.breakers.values():
            if b.paused or b.failures:
                self.store.save_breaker(
                    BreakerRow(
                        artifact=b.artifact,
                        paused=b.paused,
                        reason=b.reason,
                        since=b.since,
                        scope_serial=b.scope_serial,
                    )
                )
            for node, reason in b.failures.items():
                self.store.add_failure(b.artifact, node, reason, b.since)
        for row in self.registry.nodes.values():
            self.store.save_node(row)

    @property
    def index(self) -> int:
        return self.config.replica

    # -- the parts' state, for the shell and for tests --------------------------------------

    @property
    def trust(self) -> TrustStore:
        return self.documents.trust

    @property
    def allowlist(self) -> docs.Signed[docs.Allowlist] | None:
        return self.documents.allowlist

    @property
    def scope(self) -> docs.Signed[docs.Scope] | None:
        return self.documents.scope

    @property
    def releases(self) -> dict[str, docs.Signed[docs.Release]]:
        return self.documents.releases

    @property
    def nodes(self) -> dict[str, NodeRow]:
        return self.registry.nodes

    @property
    def estimates(self) -> dict[str, dict[str, policy.Estimate]]:
        return self.registry.estimates

    @property
    def leases(self) -> dict[str, LeaseInfo]:
        return self.asks.leases

    @property
    def pools(self) -> dict[str, policy.PoolState]:
        return self.asks.pools

    @property
    def refusals(self) -> Counter[tuple[str, str, str]]:
        return self.asks.refusals

    @property
    def started_at(self) -> float:
        return self.asks.started_at

    @property
    def warm_until_wall(self) -> float:
        return self.asks.warm_until_wall

    # -- documents --------------------------------------------------------------------------

    def publish(self, data: bytes) -> tuple[int, dict[str, Any]]:
        return self.documents.publish(data)

    def put_artifact(self, artifact: str, data: bytes) -> tuple[int, dict[str, Any]]:
        return self.documents.put_artifact(artifact, data)

    def artifact_path(self, artifact: str) -> Path | None:
        return self.documents.artifact_path(artifact)

    def current_documents(self) -> list[bytes]:
        return self.documents.current_documents()

    # -- the hello ----------------------------------------------------------------------------

    def admit(
        self, node: str, member: bytes | None, peer: str
    ) -> admission.Admitted | admission.Refused:
        """Whether a node whose hello verified may hold a session (``core.admission``):
        the network's rule, then the per-subnet registration cap for an id not known
        here yet.  ``peer``: the session's source ``HOST:PORT`` as the replica saw it."""
        verdict = admission.admit_hello(
            self.network, node=node, member=member, root=self.trust.root, now=int(self.wall())
        )
        if isinstance(verdict, admission.Admitted):
            subnet = admission.subnet_of(admission.host_of(peer))
            refused = self.registry.admit(node, subnet=subnet, admitted=verdict)
            if refused is None:
                return verdict
            verdict = refused
        self.hellos_refused[verdict.reason] += 1
        self.metrics.hello_refused(verdict.reason)
        return verdict

    def left(self, node: str) -> None:
        """The node's session ended."""
        self.registry.left(node)
        self.reported.pop(node, None)

    # -- node reports -----------------------------------------------------------------------

    def on_status(self, node: str, report: proto.StatusReport) -> None:
        pool = self.registry.on_status(node, report)
        if pool is not None:
            self.asks.aggregate_changed(pool)
        session = self.registry.sessions.get(node)
        if node not in self.reported or self.reported[node] is not session:
            self.reported[node] = session  # a new hello is a new session
            self._reconnect_nudge(node, report.artifact)

    def _reconnect_nudge(self, node: str, running: str) -> None:
        """The node's session opened: push it the nudge held if the rule says so."""
        nudge, scope = self.documents.nudge, self.documents.scope
        if not self.config.nudge_on_connect or nudge is None:
            return
        if policy_signals.reconnect_nudge(
            nudge=nudge.doc,
            scope=scope.doc if scope is not None else None,
            node=node,
            running=running,
            now=int(self.wall()),
        ):
            self.reconnect_nudges += 1
            self.push_to(node, proto.DocumentPush(doc=nudge.envelope.to_wire(), nudge=True))

    def status_ack(self, pool: str) -> proto.StatusAck:
        """The answer to a status report of a node of ``pool`` (``next_report_s``), with
        the versions of the documents held (a node behind fetches them)."""
        allow, scope = self.documents.allowlist, self.documents.scope
        return proto.StatusAck(
            next_report_s=self.next_report_s(pool),
            allowlist=allow.doc.version if allow is not None else 0,
            scope=scope.doc.serial if scope is not None else 0,
        )

    def next_report_s(self, pool: str) -> float:
        """When a node of ``pool`` should send its next heartbeat (``StatusAck``): the
        one rule, ``reporting.heartbeat_interval``, of the nodes this replica knows (its
        registry: every node that ever registered, so the count errs high and the rate
        low) and of the pool's estimates held (the per-pool freshness cap; a pool that
        never sent one has none to keep fresh)."""
        registry = self.registry
        reporters = len(registry.estimates.get(pool, ()))
        return float(
            reporting.heartbeat_interval(
                float(len(registry.nodes)),
                float(reporters) if reporters else None,  # none yet: nothing to keep fresh
                budget=self.config.report_budget,
                max_age=self.config.policy.aggregate_max_age,
            )
        )

    def aggregate(self, pool: str) -> policy.Aggregate:
        return self.registry.aggregate(pool)

    def pool_state(self, pool: str) -> policy.PoolState:
        return self.asks.pool_state(pool)

    def end_lease(self, node: str, nonce: bytes, event: str, reason: str = "") -> bool:
        """End ``node``'s lease (``Asks.end_lease``); its hold is measured."""
        info = self.asks.leases.get(node)
        ended = self.asks.end_lease(node, nonce, event, reason)
        if ended and info is not None:
            self._lease_ended(node, info.nonce)
        return ended

    def _lease_ended(self, node: str, nonce: bytes) -> None:
        """A report ended the lease ``nonce`` of ``node``: its hold is a sample, and the
        queue's hold in force follows (``policy_hold.hold_in_force``)."""
        granted = self.granted_at.pop(node, None)
        if granted is None or granted[0] != nonce:
            return
        self.holds = self.holds.add(max(0.0, self.clock() - granted[1]))
        hold = policy_hold.hold_in_force(self.holds, self.policy)
        # ``Asks`` answers a queued refusal with ``policy_queue.queued_retry`` of its
        # policy: the hold in force is that policy's ``queue_hold`` (the prior stays in
        # ``self.policy``).
        if hold != self.asks.policy.queue_hold:
            self.asks.policy = replace(self.asks.policy, queue_hold=hold)

    def _granted(self, node: str) -> None:
        """``ask`` granted: a lease new to this replica starts its hold now."""
        info = self.asks.leases.get(node)
        if info is None:
            return
        held = self.granted_at.get(node)
        if held is None or held[0] != info.nonce:  # not the same lease answered again
            self.granted_at[node] = (info.nonce, self.clock())
        if len(self.granted_at) > 2 * len(self.asks.leases) + 64:  # leases that lapsed
            leases = self.asks.leases
            self.granted_at = {
                n: g for n, g in self.granted_at.items() if n in leases and leases[n].nonce == g[0]
            }

    def on_rejoined(self, node: str, report: proto.RejoinedReport) -> None:
        self.end_lease(node, report.nonce, "rejoined")
        self.registry.rejoined(node, report.artifact)
        self.breakers.rejoined(node, report.artifact, report.nonce)

    def on_return(self, node: str, report: proto.ReturnReport) -> None:
        self.end_lease(node, report.nonce, "return", report.reason)

    def on_failed(self, node: str, report: proto.FailedReport) -> bool:
        """End the node's lease and count the failure; whether the rollout is paused."""
        reason = report.reason or "failed"
        self.end_lease(node, report.nonce, "failed", reason)
        scope = self.documents.scope
        return self.breakers.failed(
            node,
            report.artifact,
            reason,
            nonce=report.nonce,
            scope_serial=scope.doc.serial if scope else 0,
        )

    def introduced(self, conn: Any) -> tuple[str, ...]:
        """The link addresses to introduce a connected node by: the host its session came
        from with the ports it claims, never a host it claims (``policy_signals``; README
        "Abuse limits").  ``conn``: the server's ``NodeConn`` (``addrs``, ``peer``)."""
        return policy_signals.introduced_addrs(conn.addrs, conn.peer, self.signals)

    def ice(self, node: str) -> proto.IceAnswer:
        """The ICE servers for ``node``, the id its session proved (README "Gossip and
        links"): only an authenticated node's request reaches here."""
        answer = self.ice_servers.answer(node)
        if answer.ttl:
            self.metrics.turn_credentials.inc()
        return answer

    # -- asks and status --------------------------------------------------------------------

    def ask(self, node: str, request: proto.AskRequest) -> Answer:
        """Gates 1-3 for one proposed token (``coordinator.asks``)."""
        answer = self.asks.ask(node, request)
        if answer.granted:
            self._granted(node)
        return answer

    def active_leases(self) -> dict[str, list[policy.Lease]]:
        return self.asks.active_leases()

    def status(self) -> dict[str, Any]:
        status = replica_status(
            index=self.config.replica,
            token_ttl=self.config.token_ttl,
            connected=self.connected(),
            documents=self.documents,
            registry=self.registry,
            asks=self.asks,
            breakers=self.breakers,
            damage=[d.to_json() for d in self.store.damage],
            peers=self.peers(),
            ice=self.ice_servers.status(),
            origin=self.origin.status(lambda a: self.documents.artifact_path(a) is not None),
        )
        # P10: reports no lease of this replica backs, and nodes cooling off after a lapse
        status["failures_ignored"] = self.breakers.ignored
        status["reconnect_nudges"] = self.reconnect_nudges
        status["queue_hold"] = {
            "prior": self.policy.queue_hold,
            "measured": self.holds.measured(),
            "samples": len(self.holds.recent),
            "in_force": self.asks.policy.queue_hold,
        }
        now = self.clock()
        status["lapse_cooldowns"] = sum(1 for c in self.asks.cooldowns.values() if c.until > now)
        net = self.network
        status["admission"] = {
            "rule": net.admission,
            "version": net.version,
            "pow_bits": net.pow_bits,
            "standing_s": net.standing_s,
            "caps": {
                "subnet_nodes": net.subnet_nodes,
                "subnet_reporters": net.subnet_reporters,
                "subnet_leases": net.subnet_leases,
                "subnet_failures": net.subnet_failures,
            },
            "expires": net.expires,
            "describe": net.describe(),
            "refused": dict(self.hellos_refused),
            "sessions": len(self.registry.sessions),
        }
        return status
