"""One coordinator replica: documents, registry, leases, breaker -- everything but sockets.

``Replica`` holds the state and answers requests with plain method calls; the network
shell (``coordinator.server``) feeds it HTTP requests and node-channel messages and
performs the pushes it asks for.  Gate 3 itself is ``coordinator.policy.decide``: this
module only assembles its inputs (the pool aggregate, this replica's leases, the
breaker) and turns its ``Decision`` into a signature or a refusal.

An ask is answered in this order, and the first "no" is the answer (README "Capacity gate and
departure tokens": answers say why; "held back by scope" and "broken" never look alike):

1. the proposed token is well formed, names the asking node, and its times are this
   replica's (``issued`` within ``max_skew`` of our clock, ``expires = issued + ttl``);
2. gate 1 (``allowlisted``) against this replica's current allowlist, whose version the
   token must name; gate 2 (``in_scope``) against the current scope, same for the serial;
3. gate 3: ``policy.decide`` -- breaker pause, warm-up, stale aggregate, lease budget,
   min-serving, headroom, force budget.

A grant is a signature over the node's proposed payload; the lease it records lasts
``token_ttl + max_skew`` (``PolicyConfig.lease_ttl``), so it outlives the token on any
clock within the skew allowance.  Time: ``clock()`` (monotonic) for leases, ``wall()``
for documents and tokens; both are arguments so tests can drive them.

The aggregate of a pool is ``policy.median_aggregate`` of the freshest estimates from
distinct reporters: a lying minority cannot move it.  Estimates live in memory only and one per node (the latest).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto, gates
from p2pupdate.core import documents as docs
from p2pupdate.core.departure import DEFAULT_TOKEN_TTL, parse_token
from p2pupdate.core.errors import P2PUpdateError, SignatureError, WireError
from p2pupdate.core.origin import check_artifact
from p2pupdate.core.session import Signer
from p2pupdate.core.trust import TrustStore
from p2pupdate.errors import LocalStateFault, PeerFault
from p2pupdate.fsutil import atomic_write, read_limited

from . import policy
from .store import AuditRow, BreakerRow, NodeRow, Store

ROOT_FILE: Final = "root.msgpack"
PUBLISHABLE: Final[dict[str, type[docs.Document]]] = {
    "release": docs.Release,
    "allowlist": docs.Allowlist,
    "scope": docs.Scope,
    "nudge": docs.Nudge,
}


class ConfigError(LocalStateFault):
    """The replica cannot start with this network directory or these settings."""

    rule = "config"


class RequestError(PeerFault):
    """A request the node got wrong (not a refusal): answered ``ok: false``.

    ``error`` is the code the node sees (also this exception's ``rule``)."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail, rule=error)
        self.error = error
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    network_dir: Path
    replica: int = 1
    state_dir: Path | None = None
    #: Lifetime of a departure token (integer seconds, as documents carry them).
    token_ttl: int = DEFAULT_TOKEN_TTL
    #: Clock difference tolerated between a node and this replica (seconds).
    max_skew: int = 30
    #: Gate 3's knobs.  ``replicas``, ``quorum`` and ``lease_ttl`` are not read from here:
    #: the replica takes them from the root and ``token_ttl + max_skew``.
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)
    max_artifact: int = 1 << 30
    #: This replica is new and never granted anything: no warm-up on its first start.
    #: Ignored once the database holds a grant horizon (then that decides).
    first_start: bool = False

    @property
    def replica_dir(self) -> Path:
        return self.state_dir or self.network_dir / f"replica-{self.replica}"


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


@dataclass
class Breaker:
    artifact: str
    paused: bool = False
    reason: str = ""
    since: float = 0.0
    scope_serial: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)


@dataclass
class Answer:
    """A refusal or a grant, as sent to the node."""

    fields: dict[str, Any]
    granted: bool
    gate: str
    reason: str


def load_root(network_dir: Path) -> bytes:
    path = network_dir / ROOT_FILE
    try:
        return read_limited(path, 1024 * 1024 + 4096)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None


class Replica:
    def __init__(
        self,
        config: ServiceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        d = config.replica_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "artifacts").mkdir(exist_ok=True)
        self.dir = d
        self.store = Store(d / "state.sqlite")
        now_wall = wall()
        saved = self.store.get("trust")
        try:
            if saved is not None:
                self.trust = TrustStore.from_bytes(saved)
            else:
                self.trust = TrustStore.from_root(load_root(config.network_dir), int(now_wall))
                self.store.put("trust", self.trust.to_bytes())
        except P2PUpdateError as exc:
            raise ConfigError(f"root: {exc.rule}: {exc}") from None
        key_path = config.network_dir / "keys" / f"coordinator-{config.replica}.pem"
        try:
            self.key = crypto.private_key_from_pem(read_limited(key_path, crypto.MAX_PEM_BYTES))
        except (OSError, P2PUpdateError) as exc:
            raise ConfigError(f"{key_path}: {exc}") from None
        self.keyid = self.key.keyid
        self.signer = Signer(self.key)
        role = self.trust.root.roles["coordinator"]
        if self.keyid not in role.keys:
            raise ConfigError(f"{key_path} is not a coordinator key of the root")
        if not 1 <= config.token_ttl <= 86400 or not 0 <= config.max_skew <= 3600:
            raise ConfigError("token ttl must be 1 s .. 1 day and max skew 0 .. 1 h")
        try:
            self.policy = replace(
                config.policy,
                replicas=len(role.keys),
                quorum=role.threshold,
                lease_ttl=float(config.token_ttl + config.max_skew),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # Warm-up: grant nothing while a lease we may have granted before could be alive.
        # No horizon on record: unknown (a lost state dir looks new), so a full TTL --
        # unless the operator says this replica is new and has never granted anything.
        now = clock()
        ttl = self.policy.lease_ttl
        horizon = self.store.grant_horizon()
        if horizon is None:
            horizon = now_wall if config.first_start else now_wall + ttl
            self.store.set_grant_horizon(horizon)
        self._horizon = horizon
        wait = min(ttl, max(0.0, horizon - now_wall))
        self.started_at = now - ttl + wait
        self.started_wall = now_wall
        self.warm_until_wall = now_wall + wait

        self.pools: dict[str, policy.PoolState] = {}
        self._agg_dirty: set[str] = set()
        self.estimates: dict[str, dict[str, policy.Estimate]] = {}
        self.leases: dict[str, LeaseInfo] = {}
        self.nodes: dict[str, NodeRow] = {r.node: r for r in self.store.load_nodes()}
        self.refusals: Counter[tuple[str, str, str]] = Counter()
        for artifact, gate, reason, count in self.store.refusal_counts():
            self.refusals[(artifact, gate, reason)] += count
        self.allowlist: docs.Signed[docs.Allowlist] | None = None
        self.scope: docs.Signed[docs.Scope] | None = None
        self.nudge: docs.Signed[docs.Nudge] | None = None
        self.releases: dict[str, docs.Signed[docs.Release]] = {}
        self._load_documents()
        self.breakers: dict[str, Breaker] = {}
        for row in self.store.load_breakers():
            b = Breaker(
                artifact=row.artifact,
                paused=row.paused,
                reason=row.reason,
                since=row.since,
                scope_serial=row.scope_serial,
            )
            b.failures = self.store.failures_since(row.artifact, row.since)
            b.attempted = self.store.granted_nodes(row.artifact, row.since)
            self.breakers[row.artifact] = b
        #: Hooks the shell sets: push a message to every connected node.
        self.push_all: Callable[[dict[str, Any]], None] = lambda _msg: None
        self.connected: Callable[[], int] = lambda: 0
        from .metrics import Metrics

        self.metrics = Metrics(self)

    @property
    def index(self) -> int:
        return self.config.replica

    # -- documents ------------------------------------------------------------------------------

    def _load_documents(self) -> None:
        root = self.trust.root
        for kind, cls in PUBLISHABLE.items():
            for data in self.store.documents(kind):
                try:
                    signed: docs.Signed[Any] = docs.open_signed(cls, data, root)
                except P2PUpdateError:
                    continue  # signed by keys a newer root rotated out
                self._install(kind, signed)

    def _install(self, kind: str, signed: docs.Signed[Any]) -> None:
        doc = signed.doc
        if kind == "release":
            self.releases[doc.artifact] = signed
        elif kind == "allowlist":
            if self.allowlist is None or doc.version >= self.allowlist.doc.version:
                self.allowlist = signed
        elif kind == "scope":
            if self.scope is None or doc.serial >= self.scope.doc.serial:
                self.scope = signed
        elif kind == "nudge" and (self.nudge is None or doc.serial >= self.nudge.doc.serial):
            self.nudge = signed

    def publish(self, data: bytes) -> tuple[int, dict[str, Any]]:
        """Verify and store one signed document: ``(HTTP status, JSON answer)``.

        Anything that does not verify is a 400 with the rule and reason, and changes
        nothing (the ``TrustStore`` is a value; it is replaced only after success).
        """
        now = int(self.wall())
        try:
            kind = docs.peek_type(data)
        except WireError as exc:
            return self._bad("publish", exc.rule, f"not a signed document: {exc}")
        try:
            if kind == "root":
                signed_root, store = self.trust.update_root(data, now)
                store.check_current_root(now)
                self.store.add_document(
                    type_="root",
                    floor=signed_root.doc.version,
                    artifact=None,
                    digest=signed_root.digest,
                    data=data,
                    trust=store.to_bytes(),
                )
                self.trust = store
                self.metrics.published("root", "ok")
                return 200, {"ok": True, "type": kind, "describe": signed_root.doc.describe()}
            cls = PUBLISHABLE.get(kind)
            if cls is None:
                why = {
                    "departure": "departure tokens are issued by replicas, never published",
                    "heartbeat": "heartbeats are gossiped between nodes, never published",
                }.get(kind, f"unknown document type {kind!r}")
                return self._bad(kind, "wrong-type", why)
            try:
                accepted: tuple[docs.Signed[Any], TrustStore] = self.trust.accept(cls, data, now)
                signed, store = accepted
            except SignatureError as exc:
                raise self._explain_signers(kind, cls.ROLE, data, exc) from None
        except P2PUpdateError as exc:
            return self._bad(kind, exc.rule, str(exc))
        doc = signed.doc
        self.store.add_document(
            type_=kind,
            floor=doc.floor_value,
            artifact=getattr(doc, "artifact", None),
            digest=signed.digest,
            data=data,
            trust=store.to_bytes(),
        )
        self.trust = store
        self._install(kind, signed)
        answer: dict[str, Any] = {"ok": True, "type": kind, "describe": doc.describe()}
        if kind == "scope":
            resumed = self._resume_for(doc)
            if resumed:
                answer["resumed"] = resumed
        if kind == "nudge":
            self.push_all({"push": "nudge", "doc": data})
        else:
            self.push_all({"push": "doc", "doc": data})
        self.metrics.published(kind, "ok")
        return 200, answer

    def _bad(self, kind: str, rule: str, reason: str) -> tuple[int, dict[str, Any]]:
        self.metrics.published(kind, "rejected")
        return 400, {"ok": False, "error": rule, "reason": reason}

    def _explain_signers(
        self, kind: str, role: str, data: bytes, exc: SignatureError
    ) -> P2PUpdateError:
        """A signature failure that is really a key of another role says so."""
        root = self.trust.root
        try:
            env = crypto.Envelope.from_wire(data)
        except P2PUpdateError:
            return exc
        good = env.valid_keyids(root.keys)
        others = sorted(
            {r for r, info in root.roles.items() if r != role and good & set(info.keys)}
        )
        if others and not good & set(root.roles[role].keys):
            return P2PUpdateError(
                f"a {kind} must be signed by {role} keys; this one is signed by "
                f"{', '.join(others)} key(s) only",
                rule="wrong-role",
            )
        return exc

    def put_artifact(self, artifact: str, data: bytes) -> tuple[int, dict[str, Any]]:
        """Store artifact bytes for the origin; only builds with a published release."""
        release = self.releases.get(artifact)
        if release is None:
            return 400, {
                "ok": False,
                "error": "no-release-record",
                "reason": f"publish the release record of {artifact[:16]}... first",
            }
        problem = check_artifact(data, release.doc, self.config.max_artifact)
        if problem:
            return 400, {"ok": False, "error": "artifact-mismatch", "reason": problem}
        atomic_write(self.dir / "artifacts" / artifact, data)
        return 200, {"ok": True, "artifact": artifact, "length": len(data)}

    def artifact_path(self, artifact: str) -> Path | None:
        if len(artifact) != 64 or artifact.strip("0123456789abcdef"):
            return None
        path = self.dir / "artifacts" / artifact
        return path if path.is_file() else None

    def current_documents(self) -> list[bytes]:
        out: list[bytes] = []
        wanted: set[str] = set()
        if self.allowlist is not None:
            out.append(self.allowlist.envelope.to_wire())
            wanted |= set(self.allowlist.doc.artifacts)
        if self.scope is not None:
            out.append(self.scope.envelope.to_wire())
            wanted.add(self.scope.doc.artifact)
        out += [self.releases[a].envelope.to_wire() for a in sorted(wanted) if a in self.releases]
        return out

    # -- node reports ---------------------------------------------------------------------------

    def on_status(self, node: str, report: proto.StatusReport) -> None:
        pool = report.pool or "default"
        held = report.held
        held_text = f"{held.gate}/{held.reason}" if held else None
        self._register(node, pool, report.version, report.artifact, report.state, held_text)
        estimate = report.estimate
        if estimate is not None:
            self.estimates.setdefault(pool, {})[node] = policy.Estimate(
                as_of=self.clock() - estimate.age,
                capacity=estimate.capacity,
                load=estimate.load,
                serving=estimate.serving,
            )
            self._agg_dirty.add(pool)

    def _register(
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

    def aggregate(self, pool: str) -> policy.Aggregate:
        """The pool's aggregate now (``policy.median_aggregate`` of the reporters')."""
        return policy.median_aggregate(
            self.estimates.get(pool, {}).values(), self.clock(), self.policy
        )

    def pool_state(self, pool: str) -> policy.PoolState:
        state = self.pools.get(pool)
        if state is None:
            state = policy.PoolState(
                pool=pool, aggregate=self.aggregate(pool), started_at=self.started_at
            )
            self._agg_dirty.discard(pool)
        elif pool in self._agg_dirty:
            state = state.with_aggregate(self.aggregate(pool))
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
        return True

    def on_rejoined(self, node: str, report: proto.RejoinedReport) -> None:
        self.end_lease(node, report.nonce, "rejoined")
        old = self.nodes.get(node)
        pool = old.pool if old else "default"
        version = old.version if old and old.artifact == report.artifact else "?"
        self._register(node, pool, version, report.artifact, "serving", None)

    def on_return(self, node: str, report: proto.ReturnReport) -> None:
        self.end_lease(node, report.nonce, "return", report.reason)

    def on_failed(self, node: str, report: proto.FailedReport) -> dict[str, Any]:
        artifact, reason = report.artifact, report.reason or "failed"
        self.end_lease(node, report.nonce, "failed", reason)
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
            b.scope_serial = self.scope.doc.serial if self.scope is not None else 0
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
        return {"paused": b.paused}

    def _resume_for(self, scope: docs.Scope) -> list[str]:
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

    # -- asks -----------------------------------------------------------------------------------

    def _refuse(
        self,
        token: docs.DepartureToken,
        gate: str,
        reason: str,
        detail: str,
        retry_after: float | None,
        position: int | None = None,
    ) -> Answer:
        self.refusals[(token.to_artifact, gate, reason)] += 1
        self.store.audit(
            AuditRow(
                time=self.wall(),
                event="refuse",
                node=token.node,
                pool=token.pool,
                artifact=token.to_artifact,
                gate=gate,
                reason=reason,
                detail=detail,
            )
        )
        refusal = proto.AskRefusal(
            gate=gate, reason=reason, detail=detail, retry_after=retry_after, position=position
        )
        return Answer(
            fields=refusal.to_wire(),
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
        now_wall = self.wall()
        cfg = self.config
        if abs(token.issued - now_wall) > cfg.max_skew + 1:
            raise RequestError(
                "clock-skew",
                f"token issued at {token.issued}, this replica's clock says {int(now_wall)} "
                f"(more than {cfg.max_skew} s apart)",
            )
        if token.expires - token.issued != cfg.token_ttl:
            raise RequestError("bad-ttl", f"tokens here last exactly {cfg.token_ttl} s")

        # Gate 1: the allowlist this replica holds, exactly the version the token names.
        allow = self.allowlist
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
        scope = self.scope.doc if self.scope is not None else None
        releases = {a: s.doc for a, s in self.releases.items()}
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
        # Gate 3: the capacity policy (breaker, warm-up, aggregate, budgets, headroom).
        now = self.clock()
        state = self.pool_state(token.pool).expire(now)
        self.pools[token.pool] = state
        breaker = self.breakers.get(token.to_artifact)
        paused = breaker is not None and breaker.paused
        force = scope is not None and scope.force
        ask = policy.Ask(
            node=node, capacity=request.capacity, load=request.load, force=force, time=now
        )
        decision = policy.decide(
            replace(state, paused=True) if paused else state, ask, now, self.policy
        )
        if not decision.granted:
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
        # The lease may outlive a crash of this replica: the horizon is on disk first.
        expires_wall = now_wall + (lease.expires - now)
        if self._horizon < expires_wall:
            self._horizon = now_wall + 2 * self.policy.lease_ttl
            self.store.set_grant_horizon(self._horizon)
        self.pools[token.pool] = state.add(lease)
        sig = self.signer.sign(docs.DepartureToken.TYPE, payload)
        info = LeaseInfo(
            nonce=token.nonce,
            digest=digest,
            sig=sig,
            pool=token.pool,
            artifact=token.to_artifact,
            expires_wall=expires_wall,
            forced=lease.forced,
        )
        self.leases[node] = info
        self.breakers.setdefault(
            token.to_artifact, Breaker(artifact=token.to_artifact)
        ).attempted.add(node)
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
            fields=grant.to_wire(),
            granted=True,
            gate=gates.GATE_CAPACITY,
            reason=reason,
        )

    # -- status ---------------------------------------------------------------------------------

    def active_leases(self) -> dict[str, list[policy.Lease]]:
        now = self.clock()
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

    def status(self) -> dict[str, Any]:
        now, now_wall = self.clock(), self.wall()
        root = self.trust.root
        role = root.roles["coordinator"]
        warm = max(0.0, self.started_at + self.policy.lease_ttl - now)
        scope = self.scope.doc if self.scope is not None else None
        allow = self.allowlist.doc if self.allowlist is not None else None
        artifacts: dict[str, dict[str, Any]] = {}

        def entry(artifact: str) -> dict[str, Any]:
            if artifact not in artifacts:
                rel = self.releases.get(artifact)
                artifacts[artifact] = {
                    "name": rel.doc.name if rel else None,
                    "counter": rel.doc.counter if rel else None,
                    "allowlisted": bool(allow and artifact in allow.artifacts),
                    "in_scope": scope.describe() if scope and scope.artifact == artifact else None,
                    "nodes": 0,
                    "probation": 0,
                    "failed": 0,
                    "failures": [],
                    "paused": False,
                    "paused_reason": None,
                    "leases": 0,
                    "refusals": {},
                    "held": {},
                }
            return artifacts[artifact]

        versions: Counter[str] = Counter()
        states: Counter[str] = Counter()
        for row in self.nodes.values():
            versions[row.version] += 1
            states[row.state] += 1
            e = entry(row.artifact)
            e["nodes"] += 1
            if row.state == "probation":
                e["probation"] += 1
            if row.held and scope is not None:
                held = entry(scope.artifact)["held"]
                held[row.held] = held.get(row.held, 0) + 1
        for artifact in allow.artifacts if allow else ():
            entry(artifact)
        if scope is not None:
            entry(scope.artifact)
        for artifact, b in self.breakers.items():
            if not b.failures and not b.paused:
                continue
            e = entry(artifact)
            e["failed"] = len(b.failures)
            e["failures"] = [{"node": n, "reason": r} for n, r in b.failures.items()]
            e["paused"] = b.paused
            e["paused_reason"] = b.reason or None
        for (artifact, gate, reason), count in self.refusals.items():
            entry(artifact)["refusals"][f"{gate}/{reason}"] = count
        pools: dict[str, Any] = {}
        for pool, leases in self.active_leases().items():
            pools[pool] = {"leases": []}
            for lease in leases:
                info = self.leases.get(str(lease.node))
                if info is not None:
                    entry(info.artifact)["leases"] += 1
                pools[pool]["leases"].append(
                    {
                        "node": lease.node,
                        "artifact": info.artifact if info else None,
                        "expires_in": round(lease.expires - now, 3),
                        "forced": lease.forced,
                    }
                )
        for pool in set(self.estimates) | set(self.pools):
            agg = self.aggregate(pool)
            p = pools.setdefault(pool, {"leases": []})
            age = now - agg.as_of
            p["aggregate"] = {
                "capacity": agg.capacity,
                "load": agg.load,
                "serving": agg.serving,
                "age": round(age, 3),
                "stale": age > self.policy.aggregate_max_age,
                "reporters": len(self.estimates.get(pool, {})),
            }
        refusals: Counter[str] = Counter()
        for (_a, gate, reason), count in self.refusals.items():
            refusals[f"{gate}/{reason}"] += count
        held_all: Counter[str] = Counter(r.held for r in self.nodes.values() if r.held)
        return {
            "replica": {
                "index": self.config.replica,
                "keyid": self.keyid,
                "network": root.network,
                "replicas": len(role.keys),
                "quorum": role.threshold,
                "token_ttl": self.config.token_ttl,
                "lease_ttl": self.policy.lease_ttl,
                "max_concurrent": self.policy.max_concurrent,
                "lease_share": self.policy.lease_share,
                "warming_up_for": round(warm, 3),
                "connected_nodes": self.connected(),
                "time": now_wall,
            },
            "documents": {
                "allowlist": {
                    "version": allow.version,
                    "expires": allow.expires,
                    "artifacts": list(allow.artifacts),
                }
                if allow
                else None,
                "scope": {
                    "serial": scope.serial,
                    "artifact": scope.artifact,
                    "kind": scope.kind,
                    "force": scope.force,
                    "expires": scope.expires,
                    "describe": scope.describe(),
                }
                if scope
                else None,
                "releases": [
                    {"artifact": a, "name": s.doc.name, "counter": s.doc.counter}
                    for a, s in sorted(self.releases.items(), key=lambda kv: kv[1].doc.counter)
                ],
            },
            "nodes": {"total": len(self.nodes), "versions": dict(versions), "states": dict(states)},
            "artifacts": artifacts,
            "pools": pools,
            "refusals": dict(refusals),
            "held": dict(held_all),
            "paused": {a: b.reason for a, b in self.breakers.items() if b.paused},
        }
