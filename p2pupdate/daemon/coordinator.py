"""The daemon's side of the coordinator: documents, gates 1-2, asks, reports, nudges.

``CoordinatorLink`` wraps ``replica.QuorumClient`` (one channel per replica, opened on
demand, or kept open with ``persistent=True``: ``--persistent-sessions``)
with what the node keeps: its ``TrustFile`` (allowlists and scopes raise floors on disk),
the release records it was sent, its identity key, and its pool.  The ``Node`` calls it
for the effects that involve the coordinator; it never decides anything itself:

* ``evaluate``   gates 1-2 over the documents held (``gates.choose_target``), locally;
* ``prefetch``   the artifact from a replica's origin, chunk by chunk into the node's
                 ``chunkstore`` (each verified on arrival; a partial download resumes);
* ``ask``        every replica in parallel; ``q`` signatures combined and the token
                 verified (threshold, binding, strict expiry) before ``Granted``;
* ``report``     rejoined / failed / return (each ends this node's lease), and status
                 reports with the version, the update state, why gates 1-2 hold the
                 node back, and the aggregate estimate.

Status reports (P11, ``core.reporting``).  On demand (the default) a report is sent when
what it says changed (``reporting.report_reason``; changes within
``reporting.CHANGE_COALESCE`` of the last report go together) and as a heartbeat, whose
interval the replicas set (``StatusAck.next_report_s``, the longest of them: each
replica's budget then holds) and the node spreads (``reporting.heartbeat_delay``); until a
replica has said, and with a replica that does not, ``report_interval``.  A channel opens
for what it has to send and closes when idle (``ReplicaLink``), so documents and nudges
come by gossip; a node with no gossip peer polls the replicas' documents every
``docs_interval`` (its check interval).  With ``persistent=True`` it is as before: a
report every ``report_interval`` and at each state change, documents at each connect, and
pushes at any time.

The aggregate estimate comes from gossip (``estimate_source``: the pool's push-sum totals
of the last complete epoch, and their age); ``--aggregate-stub C:L:S`` overrides it (tests),
and with neither the node reports none, so the coordinator's aggregate goes stale and it
grants nothing but forced departures: the capacity gate never guesses.  Status reports
also carry ``addrs`` (the node's gossip link address), which is what the coordinator's
introductions (``introductions``, the ``peers`` request) hand to other nodes.  Documents
taken from a replica go to ``on_document`` too, so the node can spread them by gossip; an
allowlist or scope newer than the one held goes to ``on_learned`` (the updater ends a
refusal's wait bound to the older one); the first ones after start do not (nothing waited
on an older one, and a fleet that boots together must keep its first checks spread over
the check interval).  A replica's ``SlotPush`` (a slot freed and this
node heads its queue) is verified -- signed by a coordinator key of the root, addressed to
this node -- and goes to ``on_slot``.

Admission (P10, ``core.admission``): in an ``enrolled`` network every hello carries the
node's member document (``MemberSource``: the copy kept in the state dir, read again when
it changes, so a renewed one dropped there is carried without a restart; a day before it
expires the log says so).  A replica that turns the hello away leaves its reason on the
link (``ReplicaLink.refused``); ``summary`` puts it in the status file per replica, beside
what this node knows of the rule (and why its key will be refused, if it will).

WebRTC needs two more things from the replicas (README "Gossip and links"):
``ice_servers`` (the STUN and TURN servers the network configured, with a TURN credential
a replica minted for this node; cached until two thirds of its lifetime have passed, on the
node's own monotonic clock) and ``send_signal`` / ``on_signal`` (opaque signaling blobs
relayed to and from other nodes through every connected replica: the target may be
connected to only some).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from ..clock import Clock
from ..core import admission, crypto, departure, reporting, wire
from ..core import coordproto as proto
from ..core import documents as docs
from ..core import gossip as g
from ..core import updater as up
from ..core.errors import EquivocationError, P2PUpdateError, RollbackError, SchemaError
from ..core.gates import choose_target
from ..core.swarm.chunks import ChunkMap
from ..core.timing import UpdaterConfig
from ..fsutil import read_limited
from ..launcher.artifact import node_platforms
from .chunkstore import ChunkStore
from .gossip import parse_link_address
from .identity import weak_identity
from .replica import CoordinatorUnavailable, QuorumClient, ReplicaLink
from .truststate import TrustFile

#: How long a report waits for a replica to (re)connect before it counts as failed.
REPORT_CONNECT_WAIT = 5.0
#: How long one replica gets to answer an ``ice`` or a ``signal`` request.
ICE_TIMEOUT = 5.0
SIGNAL_TIMEOUT = 3.0
#: How long an answer without a TURN credential (STUN only, or nothing configured) is kept.
ICE_PLAIN_CACHE = 300.0
#: ``heard`` in the summary is rounded down to this many seconds (see ``heard_wall``).
HEARD_GRAIN = 30

#: A report no replica acknowledged is tried again after this long (seconds).
REPORT_RETRY: Final = 60.0
#: On demand, the first documents poll (no gossip peer) comes within this long of start.
FIRST_DOCS_SPREAD: Final = 10.0
#: How long before its member document expires the node starts saying so (seconds).
MEMBER_WARN_BEFORE: Final = 86400


class MemberSource:
    """The member document a hello carries: ``current()`` gives its bytes.

    It starts with what ``options.open_admission`` verified, and reads ``path`` (the copy
    in the state dir) again whenever its size or time changes; a new one is taken only if
    the operator role signed it and it names this node (otherwise the log says why, once,
    and the one held stays).  Expiry is the replica's to judge: an expired one is still
    carried, and refused with its reason."""

    def __init__(
        self,
        path: Path,
        data: bytes,
        doc: docs.Member,
        *,
        node: str,
        root: Callable[[], docs.Root],
        log: Callable[[str], None],
    ) -> None:
        self.path = path
        self.data = data
        self.doc = doc
        self.node = node
        self.root = root
        self.log = log
        self._seen = self._stamp()
        self._warned_for: int | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> bytes:
        stamp = self._stamp()
        if stamp is not None and stamp != self._seen:
            self._seen = stamp
            try:
                data = read_limited(self.path, wire.DOCUMENT_LIMITS.max_bytes)
                doc = docs.open_signed(docs.Member, data, self.root()).doc
            except (OSError, P2PUpdateError) as exc:
                self.log(f"{self.path}: not taken ({exc}); the hello carries the one held")
                return self.data
            if doc.node != self.node:
                self.log(
                    f"{self.path}: not taken: it names node {doc.node}, this node is {self.node}"
                )
                return self.data
            if data != self.data:
                self.log(f"{self.path}: a new member document, until {doc.expires}")
            self.data, self.doc = data, doc
        return self.data

    def expiry_warning(self, now: int) -> str | None:
        """A line to log once per document when it expires within ``MEMBER_WARN_BEFORE``."""
        expires = self.doc.expires
        if now < expires - MEMBER_WARN_BEFORE or self._warned_for == expires:
            return None
        self._warned_for = expires
        when = "expired" if now > expires else f"expires in {(expires - now) / 3600:.1f} h"
        return (
            f"WARNING: this node's member document {when} (at {expires}): the replicas will "
            f"then refuse its hello. Put a new one in {self.path} (or give --member)"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class _IceCache:
    """One ``ice`` answer as aiortc takes it, and when (node monotonic seconds) to ask
    again and to stop using it (its credential's end, as the replica counted it)."""

    servers: tuple[proto.IceServer, ...]
    refresh_at: float
    valid_until: float


def heard_wall(wall: float) -> int:
    """A replica's last message as wall seconds, rounded down to ``HEARD_GRAIN``."""
    return int(wall) // HEARD_GRAIN * HEARD_GRAIN


def _snapshot(fields: dict[str, Any]) -> reporting.Snapshot:
    """What ``core.reporting`` compares, from a status report's fields."""
    held = fields.get("held")
    return reporting.Snapshot(
        version=str(fields.get("version", "")),
        artifact=str(fields.get("artifact", "")),
        state=str(fields.get("state", "")),
        held=(str(held.get("gate")), str(held.get("reason"))) if isinstance(held, dict) else None,
    )


def parse_stub(text: str) -> tuple[float, float, int]:
    """``C:L:S`` -> (capacity, load, serving)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"{text!r}: expected CAPACITY:LOAD:SERVING")
    c, load, s = float(parts[0]), float(parts[1]), int(parts[2])
    if not (c >= 0 and load >= 0 and s >= 0):
        raise ValueError(f"{text!r}: values must be >= 0")
    return c, load, s


def _contacts_of(peer: proto.Peer) -> list[g.Contact]:
    """One introduction -> gossip contacts (its ``tcp:HOST:PORT`` addresses)."""
    seen = peer.observed.rpartition(":")[0].strip("[]")
    out = []
    for addr in peer.addrs[:8]:
        hostport = parse_link_address(addr, seen)
        if hostport is None:
            continue
        with contextlib.suppress(ValueError):
            out.append(g.Contact(node=peer.node, host=hostport[0], port=hostport[1]))
    return out


class CoordinatorLink:
    def __init__(
        self,
        urls: list[str],
        key: crypto.SigningKey,
        trust: TrustFile,
        *,
        pool: str,
        estimate: tuple[float, float, int] | None,
        report_interval: float,
        log: Callable[[str], None],
        clock: Clock,
        on_signal: Callable[[str, bytes], None] = lambda _sender, _data: None,
        member: MemberSource | None = None,
        network: docs.NetworkConfig | None = None,
        persistent: bool = False,
        docs_interval: float = UpdaterConfig().check_interval,
        rng: random.Random | None = None,
        platforms: Set[str] | None = None,
    ) -> None:
        #: The platform tags this node runs (default: this interpreter's,
        #: ``node_platforms``): gate 1 refuses a release for another as ``wrong-platform``.
        self.platforms = node_platforms() if platforms is None else platforms
        #: Channels kept open (``--persistent-sessions``) or opened on demand (default).
        self.persistent = persistent
        self.docs_interval = docs_interval
        self.rng = rng if rng is not None else random.Random()
        #: The heartbeat interval the replicas asked for (None: none said yet).
        self.heartbeat_s: float | None = None
        #: What the last acknowledged status report said (on demand: what changed).
        self.last_reported: reporting.Snapshot | None = None
        #: Set by the node when gossip runs: how many gossip links it has now (None: no
        #: gossip; then, as with none linked, documents are polled from the replicas).
        self.gossip_peers: Callable[[], int] | None = None
        #: Status reports and documents polls sent (status, tests).
        self.reports_sent = 0
        self.docs_polls = 0
        self._fetching = False
        #: Wall time for document expiry (the node's owner injects it).
        self.clock = clock
        self.key = key
        self.node = key.keyid
        self.trust = trust
        self.pool = pool
        self.estimate = estimate
        self.report_interval = report_interval
        self.log = log
        self.releases: dict[str, docs.Release] = {}
        #: Each held release record as it was signed (the store keeps it beside its
        #: artifact: ``ChunkStore.keep_release``).
        self.release_records: dict[str, bytes] = {}
        self.allowlist: docs.Allowlist | None = None
        self.scope: docs.Scope | None = None
        #: The root those documents were taken under (``_forget_rotated``).
        self._held_under = trust.store.root
        #: The allowlist version and scope serial this node had accepted before this start
        #: (its trust store's floors, on disk): what the first documents after a restart
        #: must beat to be news (``take``).
        floors = trust.store.floors
        self._known_at_start = {
            kind: floors[kind].value if kind in floors else 0 for kind in ("allowlist", "scope")
        }
        #: Set by the node: what to report, and where nudges go.
        self.status_fields: Callable[[], dict[str, Any]] = lambda: {}
        self.on_nudge: Callable[[str], None] = lambda _artifact: None
        #: Set by the node: a newer allowlist or scope than the one held; a replica's
        #: verified word that a slot of our pool freed for us.
        self.on_learned: Callable[[docs.Allowlist | docs.Scope], None] = lambda _doc: None
        self.on_slot: Callable[[proto.SlotFreed], None] = lambda _freed: None
        #: Set by the node: a release record newly held (the swarm seeds the artifact if
        #: the store holds it whole).
        self.on_release: Callable[[docs.Release], None] = lambda _rel: None
        #: Set by the node when gossip runs: the live estimate, the link addresses, and
        #: where verified documents go to be spread.
        self.estimate_source: Callable[[], dict[str, float] | None] = lambda: None
        #: And its push-sum count of nodes per version (``{"counts": ..., "age": ...}``).
        self.versions_source: Callable[[], dict[str, Any] | None] = lambda: None
        self.addrs: list[str] = []
        self.on_document: Callable[[bytes], object] = lambda _doc: None
        #: Called with (sender node id, data) for every signal another node relayed to
        #: this one through a replica (settable; exceptions are logged, not raised).
        self.on_signal = on_signal
        self._ice: _IceCache | None = None
        self._ice_lock = trio.Lock()
        #: STUN URLs to use when no replica gives ICE servers (the bundle's: a STUN
        #: server needs no credential; TURN does, so it comes from a replica only).
        self.fallback_stun: tuple[str, ...] = ()
        #: What the hello carries, and the admission rule this node knows (status).
        self.member = member
        self.network = network
        self.client = QuorumClient(
            urls,
            key,
            lambda: self.trust.store,
            on_push=self._on_push,
            on_connect=self._on_connect,
            log=log,
            clock=clock,
            member=member.current if member is not None else None,
            persistent=persistent,
        )
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- running ----------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.client.run)
            if self.persistent:
                nursery.start_soon(self._report_loop)
            else:
                nursery.start_soon(self._report_on_demand)
                nursery.start_soon(self._docs_poll_loop)
            task_status.started()

    async def _report_loop(self) -> None:
        """Persistent sessions: a report every ``report_interval`` and at each change."""
        while True:
            self.warn_member_expiry()
            with trio.move_on_after(self.report_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.client.connected():
                await self.send_status()

    def heartbeat_interval(self) -> float:
        """The replicas' word (``StatusAck``), else ``report_interval``."""
        return self.heartbeat_s if self.heartbeat_s is not None else self.report_interval

    async def _report_on_demand(self) -> None:
        """On demand: report on change (``reporting.report_reason``) and on the heartbeat.

        A change reported within ``CHANGE_COALESCE`` of the last report waits out the rest
        of it, so a burst of state changes costs one report.  A report no replica
        acknowledged is tried again after ``REPORT_RETRY`` (or sooner, on a change)."""
        now = trio.current_time
        next_beat = now()  # the first report at start ("first")
        last_sent = -reporting.CHANGE_COALESCE
        while True:
            self.warn_member_expiry()
            with trio.move_on_after(max(0.0, next_beat - now())):
                await self._wake.wait()
            self._wake = trio.Event()
            fields = self.status_fields()
            if not fields:
                next_beat = now() + self.heartbeat_interval()
                continue
            reason = reporting.report_reason(self.last_reported, _snapshot(fields))
            if reason is None and now() < next_beat:
                continue
            if reason is not None and now() < last_sent + reporting.CHANGE_COALESCE:
                await trio.sleep_until(last_sent + reporting.CHANGE_COALESCE)
                fields = self.status_fields() or fields
            last_sent = now()
            if await self.send_status(fields):
                wait = reporting.heartbeat_delay(self.heartbeat_interval(), self.rng.random())
            else:
                wait = min(REPORT_RETRY, self.heartbeat_interval())
            next_beat = now() + wait

    async def _docs_poll_loop(self) -> None:
        """On demand, with no gossip peer: the replicas' documents every ``docs_interval``
        (spread: ``heartbeat_delay``), the first within ``FIRST_DOCS_SPREAD`` of start."""
        await trio.sleep(FIRST_DOCS_SPREAD * self.rng.random())
        while True:
            peers = self.gossip_peers() if self.gossip_peers is not None else 0
            if peers == 0:
                await self.poll_documents()
            await trio.sleep(reporting.heartbeat_delay(self.docs_interval, self.rng.random()))

    def _documents_probe(self, acks: list[proto.StatusAck]) -> None:
        """A replica holds newer documents than this node: fetch them after
        ``DOCS_GRACE`` (jittered) unless gossip brought them meanwhile."""
        allow = self.allowlist.version if self.allowlist is not None else None
        scope = self.scope.serial if self.scope is not None else None
        behind = [a for a in acks if reporting.documents_behind(allow, scope, a.allowlist, a.scope)]
        if not behind or self._fetching or self._nursery is None:
            return
        self._fetching = True
        want = (max(a.allowlist for a in behind), max(a.scope for a in behind))

        async def later() -> None:
            try:
                await trio.sleep(reporting.heartbeat_delay(reporting.DOCS_GRACE, self.rng.random()))
                allow = self.allowlist.version if self.allowlist is not None else None
                scope = self.scope.serial if self.scope is not None else None
                if reporting.documents_behind(allow, scope, *want):
                    await self.poll_documents()
            finally:
                self._fetching = False

        self._nursery.start_soon(later)

    async def poll_documents(self) -> None:
        """Take every document the replicas hold now (``DocsRequest`` to each)."""
        self.docs_polls += 1
        for data in await self.client.fetch_docs():
            self.accept(data)

    def warn_member_expiry(self) -> None:
        if self.member is not None:
            self.member.current()  # a renewed one first
            line = self.member.expiry_warning(self.clock.utc_now())
            if line:
                self.log(line)

    def summary(self) -> dict[str, Any]:
        """The status file's ``coordinator`` entry: the session mode and the heartbeat
        interval in use; each replica, whether it is connected (on demand: only while a
        session is open), and the admission refusal it last gave this node's hello
        (``reason``: the ``admission/...`` code; ``detail``: what to do), and the rule
        this node knows."""
        net = self.network
        rule: dict[str, Any] | None = None
        if net is not None:
            rule = {"rule": net.admission, "version": net.version, "pow_bits": net.pow_bits}
            if net.admission == "open":
                rule["node_bits"] = admission.leading_zero_bits(self.node)
                rule["key_problem"] = weak_identity(self.node, net.pow_bits)
        if self.member is not None:
            rule = {
                **(rule or {}),
                "member_pool": self.member.doc.pool or "default",
                "member_expires": self.member.doc.expires,
            }
        return {
            "admission": rule,
            # P11: kept open or on demand, and the heartbeat interval in use (seconds)
            "sessions": "persistent" if self.persistent else "on-demand",
            "heartbeat_s": self.heartbeat_interval(),
            "replicas": [
                {
                    "url": link.base,
                    "connected": link.is_connected,
                    # wall seconds of its last message (``p2pupdate status``), rounded down
                    # to HEARD_GRAIN: the summary (and so the fsynced status file) changes at
                    # most once per grain while a session is busy, not with every message
                    "heard": None
                    if link.heard is None
                    else heard_wall(self.clock.wall() - (self.clock.monotonic() - link.heard)),
                    "admission_refused": None
                    if link.refused is None
                    else {"reason": link.refused.reason, "detail": link.refused.detail},
                }
                for link in self.client.links
            ],
        }

    def status_changed(self) -> None:
        """Report soon (the update state changed)."""
        self._wake.set()

    async def send_status(self, fields: dict[str, Any] | None = None) -> bool:
        """One status report to every replica; whether one acknowledged it.  A replica's
        ``StatusAck`` sets the heartbeat interval (the longest asked for)."""
        fields = self.status_fields() if fields is None else fields
        if not fields:
            return False
        estimate: proto.Estimate | None = None
        try:  # the replica's own schema: an estimate it would refuse is left out, not sent
            if self.estimate is not None:
                c, load, s = self.estimate
                estimate = proto.Estimate(capacity=c, load=load, serving=s, age=0.0)
            elif (live := self.estimate_source()) is not None:
                estimate = proto.Estimate.from_wire(live)
        except SchemaError as exc:
            self.log(f"status report: aggregate estimate left out: schema: {exc}")
        versions: proto.Versions | None = None
        try:
            if (counts := self.versions_source()) is not None:
                versions = proto.Versions.from_wire(counts)
        except SchemaError as exc:
            self.log(f"status report: version counts left out: schema: {exc}")
        try:
            report = proto.StatusReport.from_wire(
                {
                    **fields,
                    "pool": self.pool,
                    "estimate": estimate,
                    "addrs": self.addrs[:8],
                    "versions": versions,
                }
            )
        except SchemaError as exc:  # not sent: a replica would close the channel over it
            self.log(f"status report not sent: schema: {exc}")
            return False
        self.reports_sent += 1
        answers = await self.client.acknowledged(report)
        acks = [a for a in answers if isinstance(a, proto.StatusAck)]
        if acks:
            self.heartbeat_s = max(a.next_report_s for a in acks)
            self._documents_probe(acks)
        if answers:
            self.last_reported = _snapshot(fields)
        return bool(answers)

    async def _on_connect(self, link: ReplicaLink) -> None:
        """A (re)connected replica: take its documents, tell it where we are.

        Runs as its own task: the answer arrives through the link's read loop, which
        starts only after this hook returns.
        """

        async def later() -> None:
            with contextlib.suppress(CoordinatorUnavailable):
                answer = await link.send(proto.DocsRequest())
                for data in answer.docs if isinstance(answer, proto.DocsAnswer) else ():
                    self.accept(data)
            self.status_changed()

        if self._nursery is not None and self.persistent:  # on demand: polled, reported
            self._nursery.start_soon(later)

    async def _on_push(self, link: ReplicaLink, push: proto.Push) -> None:
        """A document a replica just published, its signed word that a slot freed for us,
        or a signal another node relayed (the link checked its schema)."""
        if isinstance(push, proto.SlotPush):
            self._slot_pushed(link, push)
            return
        if isinstance(push, proto.SignalPush):
            try:
                self.on_signal(push.sender, push.data)
            except Exception as exc:  # the channel outlives a callback's bug
                self.log(
                    f"signal from {push.sender[:16]}... via {link.base}: handler failed: {exc!r}"
                )
            return
        if not isinstance(push, proto.DocumentPush):
            return
        data = push.doc
        if not push.nudge:
            self.accept(data)
        else:
            try:
                signed = self.trust.accept(docs.Nudge, data, self.clock.utc_now())
            except (RollbackError, EquivocationError):
                return  # an old nudge again: already acted on
            except P2PUpdateError as exc:
                self.log(f"nudge from {link.base} rejected: {exc.rule}: {exc}")
                return
            self.log(f"nudged: {signed.doc.describe()}")
            self.on_nudge(signed.doc.artifact)
            self.on_document(data)

    def _slot_pushed(self, link: ReplicaLink, push: proto.SlotPush) -> None:
        root = self.trust.store.root
        role = root.roles["coordinator"]
        keys = {kid: root.keys[kid] for kid in role.keys if kid in root.keys}
        try:
            freed = push.open(coordinators=keys, node=self.node)
        except P2PUpdateError as exc:
            self.log(f"slot push from {link.base} rejected: {exc.rule}: {exc}")
            return
        self.log(f"{link.base}: a departure slot of pool {freed.pool!r} freed; asking again")
        self.on_slot(freed)

    def accept(self, data: bytes) -> None:
        """A document from a replica: verified, floors raised (on disk), kept."""
        if self.take(data, source="the coordinator"):
            self.on_document(data)

    def _forget_rotated(self) -> None:
        """Drop what a rotated role signed, whichever way the newer root came (a replica,
        gossip, a bundle): the trust store reset that kind's floor, and a forged
        allowlist must not outlive the key that signed it.  The replicas' documents,
        signed by the new keys, replace it."""
        now, was = self.trust.store.root, self._held_under
        if now is was:
            return
        if was.roles["coordinator"] != now.roles["coordinator"]:
            self.allowlist = None
        if was.roles["operator"] != now.roles["operator"]:
            self.scope = None
        if was.roles["release"] != now.roles["release"]:
            self.releases = {}
            self.release_records = {}
        self._held_under = now

    def restore_releases(self, kept: Iterable[tuple[str, bytes]]) -> int:
        """Hold the release records the store kept beside its complete artifacts (at
        start, before anything is seeded: ``Node._seed_known`` then serves them at once),
        each verified again under the trust store held now; one whose signature, role or
        artifact does not match is left out with a log line.  No hook is called.  How
        many were taken."""
        now = self.clock.utc_now()
        self._forget_rotated()
        taken = 0
        for artifact, data in kept:
            try:
                if docs.peek_type(data) != "release":
                    raise SchemaError("not a release record")
                rel = self.trust.store.verify(docs.Release, data, now).doc
                if rel.artifact != artifact:
                    raise SchemaError(f"it is the record of {rel.artifact[:16]}...")
            except P2PUpdateError as exc:
                self.log(f"store: the kept release record of {artifact[:16]}... is not used: "
                         f"{exc.rule}: {exc}")  # fmt: skip
                continue
            self.releases.setdefault(artifact, rel)
            self.release_records.setdefault(artifact, data)
            taken += 1
        return taken

    def take(self, data: bytes, *, source: str) -> bool:
        """Verify and keep a release, allowlist or scope, or take a newer root (from a
        replica or from gossip).

        True if it was kept (authentic, and not older than what is held)."""
        now = self.clock.utc_now()
        self._forget_rotated()
        try:
            kind = docs.peek_type(data)
            if kind == "release":
                rel = self.trust.store.verify(docs.Release, data, now).doc
                new = rel.artifact not in self.releases
                self.releases[rel.artifact] = rel
                self.release_records[rel.artifact] = data
                if new:
                    self.on_release(rel)
            elif kind == "allowlist":
                allow = self.trust.accept(docs.Allowlist, data, now).doc
                held = self.allowlist
                if held is None or allow.version >= held.version:
                    self.allowlist = allow
                known = held.version if held is not None else self._known_at_start["allowlist"]
                if allow.version > known:
                    # news: newer than the one held, or -- the first after start -- than the
                    # one this node had accepted before it (a fleet booting together keeps
                    # its first checks spread), so a node that started before the allowlist
                    # was published does not sleep a whole check interval for it
                    self.on_learned(allow)
            elif kind == "scope":
                scope = self.trust.accept(docs.Scope, data, now).doc
                was = self.scope
                if was is None or scope.serial >= was.serial:
                    self.scope = scope
                known = was.serial if was is not None else self._known_at_start["scope"]
                if scope.serial > known:  # news, as for an allowlist (above)
                    self.on_learned(scope)
            elif kind == "root":  # a rotation (README "A stolen key")
                before = self.trust.store.root.version
                after = self.trust.update_root(data, now).doc
                if after.version == before:
                    return False  # the root we hold, again
                self._forget_rotated()
                self.log(f"took root v{after.version} from {source}")
            else:
                return False
        except (RollbackError, EquivocationError):
            return False  # older than what we hold: another replica is behind
        except P2PUpdateError as exc:
            self.log(f"document from {source} rejected: {exc.rule}: {exc}")
            return False
        return True

    def _links(self) -> list[ReplicaLink]:
        """The links to ask: the connected ones (kept open), or all (on demand: a request
        opens its session), the connected first."""
        now = self.client.connected()
        if self.persistent:
            return now
        return now + [link for link in self.client.links if link not in now]

    async def introductions(self, count: int) -> list[g.Contact]:
        """Other nodes' gossip contacts, from the first connected replica (``peers``)."""
        out: list[g.Contact] = []
        for link in self._links()[:1]:
            try:
                answer = await link.send(proto.PeersRequest(count=count))
            except CoordinatorUnavailable:
                continue
            for peer in answer.peers if isinstance(answer, proto.PeersAnswer) else ():
                out.extend(_contacts_of(peer))
        return out

    async def ice_servers(self) -> list[dict[str, Any]]:
        """The ICE servers for aiortc (``RTCIceServer(**s)`` for each), STUN then TURN with
        a credential a replica minted for this node; never raises.

        Cached until a third of the credential's lifetime is left, then asked again of one
        connected replica (the first that answers).  ``[]`` when no replica is connected
        (or none answers) and nothing valid is cached, or none is configured; a cached
        answer still valid is returned while no replica can be asked (a link can then form
        with a peer's signaling relay); with nothing, ``fallback_stun``."""
        async with self._ice_lock:
            now = self.clock.monotonic()
            cache = self._ice
            if cache is None or now >= cache.refresh_at:
                fresh = await self._ask_ice(now)
                if fresh is not None:
                    cache = self._ice = fresh
            if cache is None or self.clock.monotonic() >= cache.valid_until:
                return [{"urls": url} for url in self.fallback_stun]
            return [s.as_aiortc() for s in cache.servers]

    async def _ask_ice(self, now: float) -> _IceCache | None:
        problems: list[str] = []
        for link in self._links():
            try:
                answer = await link.send(proto.IceRequest(), ICE_TIMEOUT)
            except CoordinatorUnavailable as exc:
                problems.append(str(exc))
                continue
            if isinstance(answer, proto.IceAnswer):
                ttl = float(answer.ttl) if answer.ttl else ICE_PLAIN_CACHE
                return _IceCache(
                    servers=answer.servers, refresh_at=now + ttl * 2.0 / 3.0, valid_until=now + ttl
                )
            if isinstance(answer, proto.ErrorAnswer):
                problems.append(f"{link.base}: {answer.error}: {answer.detail}")
        if problems:
            self.log(f"ice servers: no replica answered: {'; '.join(problems)}"[:500])
        return None

    async def send_signal(self, to: str, data: bytes) -> bool:
        """Relay ``data`` (at most ``coordproto.MAX_SIGNAL`` bytes) to node ``to`` through
        every connected replica at once: True when at least one took it (``Ack``).  A
        replica the target is not connected to says so; that is no error, and nothing
        here raises (a blob the schema refuses is logged and not sent)."""
        try:
            request = proto.SignalRequest(to=to, data=data)
        except SchemaError as exc:
            self.log(f"signal to {to[:16]!r} not sent: schema: {exc}")
            return False
        took: list[bool] = []
        problems: list[str] = []

        async def one(link: ReplicaLink) -> None:
            try:
                answer = await link.send(request, SIGNAL_TIMEOUT)
            except CoordinatorUnavailable as exc:
                problems.append(str(exc))
                return
            if isinstance(answer, proto.Ack):
                took.append(True)
            elif isinstance(answer, proto.ErrorAnswer) and answer.error != "not-connected":
                problems.append(f"{link.base}: {answer.error}: {answer.detail}")

        async with trio.open_nursery() as nursery:
            for link in self._links():
                nursery.start_soon(one, link)
        if not took and problems:
            self.log(f"signal to {to[:16]}... not relayed: {'; '.join(problems)}"[:500])
        return bool(took)

    # -- effects ----------------------------------------------------------------------------

    def evaluate(self, *, installed: str, installed_counter: int) -> up.GatesEvaluated:
        """Gates 1 and 2 over the documents held now.

        ``installed_counter`` is the slot's own record of the running build's counter: the
        downgrade rule needs it when no release record of that build is held.
        """
        self._forget_rotated()
        if self.allowlist is None and self.scope is None:
            return up.GatesEvaluated.no_candidate(
                reason="no-documents", detail="nothing from the coordinator yet"
            )
        target = choose_target(
            self.node,
            installed=self.releases.get(installed),
            installed_counter=installed_counter,
            allowlist=self.allowlist,
            releases=self.releases,
            scope=self.scope,
            now=self.clock.utc_now(),
            platforms=self.platforms,
        )
        return up.GatesEvaluated.from_target(target, allowlist=self.allowlist, scope=self.scope)

    def has_release(self, artifact: str) -> bool:
        return artifact in self.releases

    def chunk_map(self, artifact: str, limit: int) -> ChunkMap:
        """How the release record held for ``artifact`` cuts it (``CoordinatorUnavailable``
        without one, or when it is over ``limit`` bytes): what a fetch, from the origin or
        the swarm, verifies each chunk against."""
        release = self.releases.get(artifact)
        if release is None:
            raise CoordinatorUnavailable(f"no release record for {artifact[:16]}...")
        if release.length > limit:
            raise CoordinatorUnavailable(
                f"{artifact[:16]}... is {release.length} bytes, over the limit of {limit}"
            )
        return ChunkMap.of_release(release)

    async def lend_held(self, store: ChunkStore, artifact: str) -> None:
        """Before ``artifact``'s download opens: tell ``store`` how every other build whose
        release record is held is cut, so the ones it holds whole (the running build, the
        previous one) lend their chunks to it (``chunkstore``'s content-addressed reuse).
        Both prefetch paths call it, the origin's and the swarm's: without it the reuse
        sees only what is open already, and a prefetch that starts before the node's
        start-up seeding opened the running build fetched all of it (a clean-clone suite
        run's fleet demo: 2,800 of 2,860 chunks, 167 s, where the other nodes fetched 2)."""
        known = [ChunkMap.of_release(r) for a, r in self.releases.items() if a != artifact]

        def remember() -> None:
            for m in known:  # only a hint: if it fails, those chunks are fetched
                with contextlib.suppress(OSError):
                    store.remember(m)

        if known:
            await trio.to_thread.run_sync(remember)

    async def prefetch(self, artifact: str, store: ChunkStore, limit: int) -> tuple[int, int]:
        """The artifact into ``store`` (``store.path(artifact)`` once complete), resuming
        from the verified chunks it holds, from the origin only (``--swarm off``); (chunks
        held before, chunks fetched now)."""
        chunk_map = self.chunk_map(artifact, limit)
        await self.lend_held(store, artifact)
        held = await trio.to_thread.run_sync(store.open, chunk_map)
        fetched = await self.client.fetch_artifact(store, chunk_map)
        return len(held), fetched

    async def ask(self, effect: up.AskCoordinator, *, capacity: float, load: float) -> up.Event:
        candidate = effect.candidate
        if not self.client.connected():
            with trio.move_on_after(REPORT_CONNECT_WAIT):
                await self.client.wait_connected(1, REPORT_CONNECT_WAIT)
        outcome = await self.client.ask(
            pool=self.pool,
            from_artifact=effect.from_artifact,
            to_artifact=candidate.artifact,
            allowlist_version=candidate.allowlist_version,
            scope_serial=candidate.scope_serial,
            capacity=capacity,
            load=load,
        )
        if outcome.token is not None:
            self.log(
                f"departure to {candidate.artifact[:16]}... GRANTED by the coordinator "
                f"(token verified, lease {outcome.lease_ttl:.0f} s)"
            )
            return up.Granted(token=outcome.token, lease_ttl=outcome.lease_ttl)
        if outcome.error:
            return up.CoordinatorError(reason=outcome.error[:500])
        self.log(
            f"departure refused: {outcome.gate}/{outcome.reason}"
            + (f" ({outcome.detail})" if outcome.detail else "")
            + (f", retry after {outcome.retry_after:g} s" if outcome.retry_after else "")
        )
        return up.Refused(
            gate=outcome.gate,
            reason=outcome.reason,
            retry_after=outcome.retry_after,
            position=outcome.position,
        )

    async def report(self, request: proto.Request) -> up.Event:
        """Send a lease-ending report (waiting a little for a replica to connect)."""
        if not self.client.connected():
            with trio.move_on_after(REPORT_CONNECT_WAIT):
                await self.client.wait_connected(1, REPORT_CONNECT_WAIT)
        acked = await self.client.send(request)
        if acked == 0:
            return up.CoordinatorError(reason=f"no replica acknowledged the {request.KIND} report")
        return up.Reported()

    async def report_rejoined(self, effect: up.ReportRejoined) -> up.Event:
        return await self.report(
            proto.RejoinedReport(
                artifact=effect.artifact, nonce=departure.token_nonce(effect.token)
            )
        )

    async def report_failure(self, effect: up.ReportFailure) -> up.Event:
        return await self.report(
            proto.FailedReport(
                artifact=effect.artifact,
                counter=effect.counter,
                reason=effect.reason[:500],
                nonce=departure.token_nonce(effect.token),
            )
        )

    async def return_lease(self, token: bytes, reason: str) -> None:
        with contextlib.suppress(CoordinatorUnavailable):
            await self.client.send(
                proto.ReturnReport(nonce=departure.token_nonce(token), reason=reason[:500])
            )
