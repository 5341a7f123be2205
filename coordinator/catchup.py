"""A replica catches up: it fetches the other replicas' documents, on start and periodically.

A replica that was down while the operator published (or that started empty after its
database was quarantined, ``coordinator.statefiles``) would otherwise serve the old scope
until someone publishes again, and nothing would say that the replicas disagree.  So each
replica started with ``serve --peer URL`` fetches ``GET URL/v1/documents`` (every document
that replica holds, ``Documents.held``) right away and then every ``interval`` seconds
(+-``jitter``), and hands each document it does not hold to ``Documents.catch_up``, which
verifies it exactly as an operator's publish is verified (the same ``publish``; the
floors and serials decide which one wins, so an older document from a replica that is
behind is refused, never installed).

What each peer held when last asked is kept for ``/status`` (``replicas``): the kinds whose
version, serial or set of releases differ from this replica's, or why the peer could not
be asked.  A peer that does not answer, or answers what is not a replica's answer, is a
``PeerReplicaFault`` (the coordinator's fault), logged in one line when its error changes,
and asked again after ``timing.capped_exponential`` of its failures in a row (capped at
the interval), never a crash.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from p2pupdate.core import crypto, timing, wire
from p2pupdate.core import documents as docs
from p2pupdate.core.coordproto import ANSWER_LIMITS
from p2pupdate.core.errors import P2PUpdateError
from p2pupdate.errors import CoordinatorFault, LocalStateFault

from .publishing import PUBLISH_ORDER, PUBLISHABLE, Documents

__all__ = ["DOCUMENTS_PATH", "CatchUp", "CatchUpConfig", "PeerReplicaFault", "documents_answer"]

#: The route a replica serves its documents on (``coordinator.server``).
DOCUMENTS_PATH: Final = "/v1/documents"

_ANSWER_FIELDS: Final[dict[str, wire.Check]] = {
    "replica": wire.uint(1 << 16),
    "keyid": wire.hex_digest(),
    "docs": wire.array(
        wire.blob(max_len=ANSWER_LIMITS.max_bin_len), ANSWER_LIMITS.max_container_len
    ),
}


class PeerReplicaFault(CoordinatorFault):
    """Another replica did not answer, or answered what is not a replica's documents."""

    rule = "peer-replica"


@dataclass(frozen=True, kw_only=True, slots=True)
class CatchUpConfig:
    """How often the other replicas are asked, and how patiently."""

    #: Mean seconds between two fetches from one replica, and the relative jitter.
    interval: float = 60.0
    jitter: float = 0.2
    #: First retry after a failed fetch; doubles per failure in a row, up to ``interval``.
    retry_base: float = 1.0
    #: Seconds for one whole fetch.
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not (0 < self.retry_base <= self.interval <= 86400 and 0 <= self.jitter < 1):
            raise ValueError("catch-up: need 0 < retry base <= interval <= 1 day, jitter in [0, 1)")


def documents_answer(replica: int, keyid: str, held: list[bytes]) -> bytes:
    """The body of ``GET /v1/documents``: who answers, and every document it holds."""
    return wire.encode({"replica": replica, "keyid": keyid, "docs": held})


def parse_documents_answer(body: bytes) -> tuple[int, str, list[bytes]]:
    """``(replica, keyid, documents)``; ``PeerReplicaFault`` for anything else."""
    try:
        fields = wire.check_fields(wire.decode(body, ANSWER_LIMITS), _ANSWER_FIELDS, where="docs")
    except P2PUpdateError as exc:
        raise PeerReplicaFault(f"not a replica's documents ({exc.rule}: {exc})") from None
    return fields["replica"], fields["keyid"], list(fields["docs"])


@dataclass
class PeerView:
    """What one other replica held when last asked (or why it could not be asked)."""

    url: str
    replica: int | None = None
    checked: float | None = None  # wall time of the last answer
    error: str | None = None
    failures: int = 0
    #: kind -> what the peer holds of it (``summarize``).
    holds: dict[str, Any] | None = None
    #: Digests this replica refused from the peer (logged once each), and the trust state
    #: they were refused under (a new one asks again).
    refused: set[str] = field(default_factory=set)
    refused_under: object = None
    itself: bool = False


def summarize(held: list[bytes], root: docs.Root) -> dict[str, Any]:
    """What a list of documents amounts to, for comparing replicas: the highest root
    version published (None: only the network's first), allowlist version, scope and
    nudge serials, and the set of releases."""
    out: dict[str, Any] = {"root": None, "releases": set()}
    for data in held:
        try:
            env = crypto.Envelope.from_wire(data)
            if env.type == "root":
                version = docs.open_root(data).doc.version
                out["root"] = max(out["root"] or 0, version)
                continue
            cls = PUBLISHABLE.get(env.type)
            if cls is None:
                continue
            doc: Any = docs.open_signed(cls, env, root).doc
        except P2PUpdateError:
            continue  # shown as a difference: this replica cannot verify it
        if env.type == "release":
            out["releases"].add(doc.artifact)
        elif doc.floor_value is not None and doc.floor_value >= out.get(env.type, -1):
            out[env.type] = doc.floor_value
    return out


def differences(here: dict[str, Any], there: dict[str, Any]) -> dict[str, Any]:
    """Kind -> ``{"here": ..., "there": ...}`` for every kind the two summaries disagree on
    (releases: how many each holds, and the artifacts only one of them holds)."""
    out: dict[str, Any] = {}
    for kind in ("root", "allowlist", "scope"):
        if here.get(kind) != there.get(kind):
            out[kind] = {"here": here.get(kind), "there": there.get(kind)}
    mine, theirs = here["releases"], there["releases"]
    if mine != theirs:
        out["releases"] = {
            "here": len(mine),
            "there": len(theirs),
            "only_here": sorted(mine - theirs),
            "only_there": sorted(theirs - mine),
        }
    return out


class CatchUp:
    """Fetches the other replicas' documents into this one (``run``); ``view`` for status."""

    def __init__(
        self,
        *,
        documents: Documents,
        peers: list[str],
        index: int,
        keyid: str,
        wall: Callable[[], float],
        rng: random.Random,
        config: CatchUpConfig = CatchUpConfig(),
        log: Callable[[str], None] = lambda _m: None,
        fetch: Callable[[str, float], bytes] | None = None,
    ) -> None:
        self.documents = documents
        self.index = index
        self.keyid = keyid
        self.wall = wall
        self.rng = rng
        self.config = config
        self.log = log
        self.fetch = fetch or _fetch
        self.peers = {url: PeerView(url=url) for url in dict.fromkeys(peers)}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for peer in self.peers.values():
                nursery.start_soon(self._follow, peer)

    async def _follow(self, peer: PeerView) -> None:
        while not peer.itself:
            await self.check(peer)
            await trio.sleep(self.next_wait(peer))

    def next_wait(self, peer: PeerView) -> float:
        """The jittered interval after an answer; the capped backoff after failures."""
        c = self.config
        if peer.failures:
            d = timing.capped_exponential(c.retry_base, c.interval, peer.failures - 1)
            return self.rng.uniform(d / 2, d)  # equal jitter, as timing.backoff
        return c.interval * self.rng.uniform(1 - c.jitter, 1 + c.jitter)

    async def check(self, peer: PeerView) -> None:
        """Ask one replica once; take what it holds that verifies here."""
        try:
            # the socket timeout bounds each read; this bounds a peer that trickles
            with trio.fail_after(2 * self.config.timeout):
                body = await trio.to_thread.run_sync(
                    self.fetch, peer.url, self.config.timeout, abandon_on_cancel=True
                )
            replica, keyid, held = parse_documents_answer(body)
            if keyid != self.keyid and keyid not in self.coordinator_keys():
                raise PeerReplicaFault(f"answers as {keyid[:16]}..., not a replica of this root")
        except trio.TooSlowError:
            exc = PeerReplicaFault(f"no whole answer in {2 * self.config.timeout:g} s")
            self._failed(peer, exc)
            return
        except PeerReplicaFault as exc:
            self._failed(peer, exc)
            return

        if keyid == self.keyid:
            peer.itself = True
            self.log(f"--peer {peer.url} is this replica itself: not followed")
            return
        if peer.error is not None:
            self.log(f"replica {peer.url}: answers again")
        peer.error, peer.failures = None, 0
        peer.replica, peer.checked = replica, self.wall()
        try:
            self.take(peer, held)
        except LocalStateFault as exc:  # this replica's database: said, and tried next time
            self.log(f"catching up from replica {peer.url}: {exc}")
        peer.holds = summarize(held, self.documents.trust.root)

    def coordinator_keys(self) -> tuple[str, ...]:
        return self.documents.trust.root.roles["coordinator"].keys

    def _failed(self, peer: PeerView, exc: PeerReplicaFault) -> None:
        """One line when the error changes (not one per retry), and the next wait grows."""
        peer.failures += 1
        if str(exc) != peer.error:
            c = self.config
            wait = timing.capped_exponential(c.retry_base, c.interval, peer.failures - 1)
            self.log(f"replica {peer.url}: {exc}; asking again in up to {wait:.0f} s")
        peer.error = str(exc)

    def take(self, peer: PeerView, held: list[bytes]) -> None:
        """Each document this replica does not hold, in publish order, through ``publish``."""

        def order(data: bytes) -> int:
            try:
                return PUBLISH_ORDER.get(docs.peek_type(data), 9)
            except P2PUpdateError:
                return 9

        if peer.refused_under is not self.documents.trust:
            # the trust store changed (a new root, a raised floor): refusals may not hold
            peer.refused, peer.refused_under = set(), self.documents.trust
        for data in sorted(held, key=order):
            digest = hashlib.sha256(data).hexdigest()
            if digest in peer.refused:
                continue  # refused under this same trust state: asked and answered
            result = self.documents.catch_up(data)
            if result is None:
                continue
            kind, status, answer = result
            if status == 200:
                self.log(f"caught up from replica {peer.url}: {answer.get('describe')}")
                continue
            if status == 400:
                peer.refused.add(digest)
            self.log(
                f"replica {peer.url} holds a {kind} this replica "
                f"{'refuses' if status == 400 else 'could not store'}: "
                f"{answer.get('error')}: {answer.get('reason')}"
            )

    def view(self) -> dict[str, Any]:
        """``/status``'s ``replicas``: per peer URL, whether it agrees with this replica,
        and where not, which kinds differ (``here`` / ``there``)."""
        d = self.documents
        here: dict[str, Any] = {
            "root": d.trust.root.version if d.roots else None,
            "releases": set(d.releases),
        }
        for kind, signed in (("allowlist", d.allowlist), ("scope", d.scope), ("nudge", d.nudge)):
            if signed is not None:
                here[kind] = signed.doc.floor_value
        now = self.wall()
        out: dict[str, Any] = {}
        for url, peer in self.peers.items():
            if peer.itself:
                continue
            entry: dict[str, Any] = {
                "replica": peer.replica,
                "checked_ago": None if peer.checked is None else round(now - peer.checked, 3),
                "error": peer.error,
            }
            if peer.holds is None:
                entry["state"] = "down" if peer.error else "not asked yet"
                entry["differs"] = {}
            else:
                diff = differences(here, peer.holds)
                entry["differs"] = diff
                entry["state"] = "differs" if diff else "agrees"
                if peer.error:
                    entry["state"] = "down"
            out[url] = entry
        return out


def _fetch(url: str, timeout: float) -> bytes:
    """``GET url/v1/documents`` (in a worker thread): the body, or ``PeerReplicaFault``."""
    limit = ANSWER_LIMITS.max_bytes
    try:
        with urllib.request.urlopen(url.rstrip("/") + DOCUMENTS_PATH, timeout=timeout) as resp:
            body: bytes = resp.read(limit + 1)
            status = resp.status
    except urllib.error.HTTPError as exc:
        raise PeerReplicaFault(f"HTTP {exc.code}, not a replica's documents") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise PeerReplicaFault(f"unreachable ({getattr(exc, 'reason', exc)})") from None
    if status != 200:
        raise PeerReplicaFault(f"HTTP {status}, not a replica's documents")
    if len(body) > limit:
        raise PeerReplicaFault(f"answer over {limit} bytes")
    return body
