"""The node's client of all replicas of its network: ask in parallel, combine, report.

``QuorumClient`` runs one :class:`~p2pupdate.net.replica_link.ReplicaLink` per replica URL,
kept open or opened per request (``persistent``; the daemon's default is on demand).
An ask proposes one departure token (:mod:`p2pupdate.core.departure`), sends it to every
replica at once, checks each grant's signature, and combines ``q`` of them into a token it
verifies before handing it to the updater; grants it cannot use are handed back at once.
What it tells the updater when there is no token is ``departure.merge_answers``.  Time
comes from the owner's :class:`~p2pupdate.clock.Clock` (wall seconds for tokens).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import random
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

from .. import clock as clocks
from ..core import coordproto as proto
from ..core import crypto, departure
from ..core import documents as docs
from ..core.errors import P2PUpdateError, SchemaError
from ..core.swarm import packing
from ..core.swarm.chunks import ChunkMap
from ..core.swarm.packing import BadFrame
from ..core.timing import UpdaterConfig, refusal_wait
from ..core.trust import TrustStore
from ..errors import CoordinatorFault
from ..net.replica_link import CoordinatorUnavailable, ProtocolError, Push, ReplicaLink
from .chunkstore import ChunkStore

__all__ = [
    "AskOutcome",
    "BadChunk",
    "CoordinatorUnavailable",
    "OriginBusy",
    "ProtocolError",
    "QuorumClient",
    "ReplicaLink",
    "TryPeers",
]

#: One chunk GET from the origin may take this long (seconds).
CHUNK_TIMEOUT: Final = 60.0
#: The node names itself to the origin in this header (one home: ``coordproto``).
ORIGIN_NODE_HEADER: Final = proto.ORIGIN_NODE_HEADER
MAX_REFUSAL_BODY: Final = 4096
#: A "try-peers" ``retry_after`` above this is taken as this (a replica cannot park a node).
MAX_RETRY_AFTER: Final = 300.0
#: Waits for one chunk before the fetch gives up (the prefetch's own deadline is first).
MAX_TRY_PEERS_WAITS: Final = 50
#: The waits' floor and jitter: ``timing.refusal_wait`` of the updater's defaults.
ORIGIN_TIMING: Final = UpdaterConfig()

AskOutcome = departure.AskOutcome


class QuorumClient:
    """All replicas of one network: ask in parallel, combine ``q`` signatures, report."""

    def __init__(
        self,
        urls: Sequence[str],
        key: crypto.SigningKey,
        trust: Callable[[], TrustStore],
        *,
        on_push: Push | None = None,
        on_connect: Callable[[ReplicaLink], Awaitable[None]] | None = None,
        log: Callable[[str], None] = lambda _m: None,
        rng: random.Random | None = None,
        ask_timeout: float = 10.0,
        clock: clocks.Clock = clocks.SYSTEM,
        member: Callable[[], bytes | None] | None = None,
        local_address: str | None = None,
        persistent: bool = True,
    ) -> None:
        if not urls:
            raise ValueError("at least one coordinator URL")
        self.key = key
        self.node = key.keyid
        self.trust = trust
        self.log = log
        self.ask_timeout = ask_timeout
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.links = [
            ReplicaLink(
                u,
                key,
                on_push=on_push,
                on_connect=on_connect,
                log=log,
                rng=rng,
                replica_keys=lambda: self.trust().root.role_keys("coordinator"),
                member=member,
                local_address=local_address,
                persistent=persistent,
            )
            for u in urls
        ]
        #: Links kept open (True) or opened per request (``ReplicaLink``'s two modes).
        self.persistent = persistent

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links:
                await nursery.start(link.run)
            task_status.started()

    def connected(self) -> list[ReplicaLink]:
        return [link for link in self.links if link.is_connected]

    async def wait_connected(self, count: int = 1, timeout: float = 10.0) -> None:
        """Until ``count`` links are connected (on demand: asks them to connect first)."""
        for link in self.links:
            link.want()
        with trio.fail_after(timeout):
            while len(self.connected()) < count:
                await trio.sleep(0.02)

    @property
    def ttl(self) -> int:
        # on demand a link may have closed since its handshake: its TTL still holds
        now = self.connected()
        return departure.token_ttl(
            [link.ttl for link in now]
            + [link.ttl for link in self.links if link.connects and link not in now]
        )

    async def _each(
        self, request: proto.Request, timeout: float
    ) -> list[tuple[ReplicaLink, proto.Answer | CoordinatorUnavailable]]:
        results: list[tuple[ReplicaLink, proto.Answer | CoordinatorUnavailable]] = []

        async def one(link: ReplicaLink) -> None:
            try:
                results.append((link, await link.send(request, timeout)))
            except CoordinatorUnavailable as exc:
                results.append((link, exc))

        async with trio.open_nursery() as nursery:
            for link in self.links:
                nursery.start_soon(one, link)
        return results

    async def send(self, request: proto.Request, timeout: float = 10.0) -> int:
        """Send a report to every replica; how many acknowledged it (any answer but an
        ``ErrorAnswer``)."""
        return len(await self.acknowledged(request, timeout))

    async def acknowledged(
        self, request: proto.Request, timeout: float = 10.0
    ) -> list[proto.Answer]:
        """Send a report to every replica; the answers of those that acknowledged it."""
        results = await self._each(request, timeout)
        return [
            r
            for _link, r in results
            if not isinstance(r, CoordinatorUnavailable | proto.ErrorAnswer)
        ]

    async def ask(
        self,
        *,
        pool: str,
        from_artifact: str,
        to_artifact: str,
        allowlist_version: int,
        scope_serial: int,
        capacity: float,
        load: float,
    ) -> AskOutcome:
        store = self.trust()
        role = store.root.roles["coordinator"]
        threshold = role.threshold
        binding = departure.Binding(
            node=self.node,
            pool=pool,
            from_artifact=from_artifact,
            to_artifact=to_artifact,
            allowlist_version=allowlist_version,
            scope_serial=scope_serial,
        )
        token = departure.propose_token(
            binding,
            ttl=self.ttl,
            now_wall=self.clock.wall(),
            nonce=os.urandom(proto.TOKEN_NONCE_LEN),
        )
        payload = token.to_payload()
        try:  # the replica's own schema: an ask it would refuse is not sent at all
            request = proto.AskRequest(token=payload, capacity=capacity, load=load)
        except SchemaError as exc:
            self.log(f"ask not sent: schema: {exc}")
            return AskOutcome(error=f"ask not sent: schema: {exc}")
        results = await self._each(request, self.ask_timeout)
        sigs: dict[str, bytes] = {}
        granted_on: list[ReplicaLink] = []
        refusals: list[proto.AskRefusal] = []
        errors: list[str] = []
        for link, answer in results:
            if isinstance(answer, CoordinatorUnavailable):
                errors.append(str(answer))
                continue
            if isinstance(answer, proto.ErrorAnswer):
                errors.append(f"{link.base}: {answer.error}: {answer.detail}")
            elif isinstance(answer, proto.AskGrant):
                kid, sig = answer.replica, answer.sig
                pub = store.root.keys.get(kid)
                if (
                    pub is not None
                    and kid in role.keys
                    and crypto.verify_signature(pub, docs.DepartureToken.TYPE, payload, sig)
                ):
                    sigs[kid] = sig
                    granted_on.append(link)
                else:
                    errors.append(f"{link.base}: a grant whose signature does not verify")
            elif isinstance(answer, proto.AskRefusal):
                refusals.append(answer)
            else:  # pragma: no cover - proto.ANSWERS: an ask gets a grant or a refusal
                errors.append(f"{link.base}: not an answer to an ask: {answer!r}"[:300])
        if len(sigs) >= threshold:
            data = departure.combine(payload, sigs)
            try:
                departure.verify_departure(store, data, binding, now_wall=self.clock.wall())
            except P2PUpdateError as exc:
                await self._give_back(granted_on, token.nonce, "token-unverified")
                return AskOutcome(error=f"token did not verify: {exc.rule}: {exc}")
            return AskOutcome(token=data, lease_ttl=max(0.0, token.expires - self.clock.wall()))
        if granted_on:  # not enough for a token: hand the partial grants back at once
            await self._give_back(granted_on, token.nonce, "no-quorum")
        return departure.merge_answers(
            refusals, signatures=len(sigs), threshold=threshold, errors=errors
        )

    async def _give_back(self, links: list[ReplicaLink], nonce: bytes, reason: str) -> None:
        async def one(link: ReplicaLink) -> None:
            with contextlib.suppress(CoordinatorUnavailable):
                await link.send(proto.ReturnReport(nonce=nonce, reason=reason), 5.0)

        async with trio.open_nursery() as nursery:
            for link in links:
                nursery.start_soon(one, link)

    async def fetch_docs(self, timeout: float = 10.0) -> list[bytes]:
        """Every document the connected replicas hold now (allowlist, scope, releases)."""
        out: list[bytes] = []
        for link, answer in await self._each(proto.DocsRequest(), timeout):
            if isinstance(answer, proto.DocsAnswer):
                out.extend(answer.docs)
            elif isinstance(answer, proto.ErrorAnswer):
                self.log(f"coordinator {link.base}: docs refused: {answer.detail}")
        return out

    async def fetch_artifact(
        self,
        store: ChunkStore,
        chunk_map: ChunkMap,
        *,
        chunks: Sequence[int] | None = None,
        timing: UpdaterConfig = ORIGIN_TIMING,
    ) -> int:
        """Fetch chunks of an artifact from the replicas' origin into ``store`` (opened on
        ``chunk_map``), chunk by chunk; how many chunks came.

        ``chunks``: which (default: every chunk the store lacks); the swarm hands over only
        those no reachable peer has.  Each chunk is verified on arrival: a replica that
        serves a bad one is at fault (``BadChunk``, logged) and the next replica is asked
        for it.  When every replica answers "try-peers" (its downloader cap), the node
        waits that ``retry_after``, stretched by jitter (``timing.refusal_wait``), and asks
        again; one log line per wait.  Raises ``CoordinatorUnavailable`` when a chunk could
        be had from no replica.  Blocking urllib runs in a worker thread, one chunk at a
        time; the waits are trio sleeps (the node's clock)."""
        artifact = chunk_map.artifact
        todo = list(chunks) if chunks is not None else store.missing(artifact)
        if any(not 0 <= i < chunk_map.count for i in todo):
            raise ValueError(f"not chunks of {artifact[:16]}...: {sorted(set(todo))[:8]}")
        held = set(store.have(artifact))
        fetched = 0
        for index in todo:
            if index in held:
                continue  # nothing verified is fetched twice (nor asked for twice)
            data = await self.fetch_chunk(chunk_map, index, timing)
            if not await trio.to_thread.run_sync(store.put_chunk, artifact, index, data):
                raise CoordinatorUnavailable(f"chunk {index} of {artifact[:16]}... not stored")
            held.add(index)
            fetched += 1
        return fetched

    async def fetch_chunk(
        self,
        chunk_map: ChunkMap,
        index: int,
        timing: UpdaterConfig = ORIGIN_TIMING,
        *,
        wait: bool = True,
    ) -> bytes:
        """Chunk ``index`` of ``chunk_map``'s artifact from the replicas' origin, verified:
        the one home of the origin's rules for one chunk (``fetch_artifact`` and the swarm's
        ``FetchFromOrigin`` both come here).

        Replicas are asked in turn; one that serves bytes that are not the chunk is at fault
        (``BadChunk``, logged) and the next is asked.  When every replica that answered said
        "try-peers", the node waits the smallest ``retry_after`` with jitter
        (``timing.refusal_wait``; one log line per wait) and asks again, at most
        ``MAX_TRY_PEERS_WAITS`` times.  ``CoordinatorUnavailable`` when no replica has it.

        ``wait=False`` (the swarm): no wait; ``OriginBusy`` says how long to leave the origin
        alone (the same jittered wait), and the swarm gets the chunk from peers meanwhile."""
        artifact = chunk_map.artifact
        length = chunk_map.chunks[index].length
        for _wait in range(MAX_TRY_PEERS_WAITS + 1):
            errors: list[str] = []
            refused: list[TryPeers] = []
            for link in self.links:
                try:
                    got = await trio.to_thread.run_sync(
                        get_chunk, link.base, artifact, index, self.node, length
                    )
                except CoordinatorUnavailable as exc:
                    errors.append(str(exc))
                    continue
                except BadChunk as exc:  # a bad zstd frame
                    bad = exc
                else:
                    if isinstance(got, TryPeers):
                        refused.append(got)
                        continue
                    if await trio.to_thread.run_sync(chunk_map.check, index, got):
                        return got
                    bad = BadChunk(f"{link.base} served chunk {index} of {artifact[:16]}... wrong")
                self.log(f"origin: {bad}: asking the next replica for it")
                errors.append(str(bad))
            if not refused:
                raise CoordinatorUnavailable("; ".join(errors) or "no replica")
            wait_s = refusal_wait(timing, min(r.retry_after for r in refused), self.rng.random())
            if not wait:
                raise OriginBusy(
                    f"origin: {refused[0].base} says try-peers for {artifact[:16]}... "
                    f"({refused[0].why}): back in {wait_s:.1f} s",
                    retry_after=wait_s,
                )
            self.log(
                f"origin: {refused[0].base} says try-peers for {artifact[:16]}... "
                f"({refused[0].why}): waiting {wait_s:.1f} s before chunk {index}"
            )
            await trio.sleep(wait_s)
        raise CoordinatorUnavailable(
            f"origin: still try-peers after {MAX_TRY_PEERS_WAITS} waits for {artifact[:16]}..."
        )


class OriginBusy(CoordinatorUnavailable):
    """Every replica that answered said "try-peers": come back after ``retry_after``."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BadChunk(CoordinatorFault):
    """A replica served bytes that are not the chunk its release record lists."""

    rule = "origin-bad-chunk"


@dataclass(frozen=True, kw_only=True, slots=True)
class TryPeers:
    """A replica's origin is over its downloader cap for this artifact: come back after
    ``retry_after`` seconds (or get the chunks from peers meanwhile)."""

    base: str
    retry_after: float
    #: Why, in words for the log ("over its downloader cap" unless the replica said).
    why: str = "over its downloader cap"


#: The origin's reasons (``coordinator.origin.REFUSALS``) in words; another is not shown.
TRY_PEERS_WHY: Final = {
    "downloader-cap": "over its downloader cap",
    "just-sent": "the chunk just went to another node: peers will have it",
}


def get_chunk(base: str, artifact: str, index: int, node: str, length: int) -> bytes | TryPeers:
    """Blocking (run in a thread): chunk ``index`` from one replica's origin (at most
    ``length`` + 1 bytes read), or its "try-peers" answer.  The chunk is asked for
    zstd-compressed (the replica compresses it when it shrinks); a compressed answer is
    decompressed to exactly ``length`` bytes (``packing.decompress``) or is a ``BadChunk``."""
    url = f"{base}/v1/artifacts/{artifact}/chunks/{index}"
    headers = {ORIGIN_NODE_HEADER: node, "Accept-Encoding": packing.CODEC}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=CHUNK_TIMEOUT) as resp:
            body = bytes(resp.read(length + 1))
            encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding != packing.CODEC:
            raise BadChunk(f"{base} served chunk {index} as {encoding[:32]!r}, not asked for")
        try:
            return packing.decompress(body, length)
        except BadFrame as exc:
            raise BadChunk(f"{base} served chunk {index} of {artifact[:16]}...: {exc}") from None
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(MAX_REFUSAL_BODY) if exc.code == 503 else b""
        refusal = _try_peers(base, body)
        if refusal is not None:
            return refusal
        raise CoordinatorUnavailable(f"{url}: HTTP {exc.code}") from None
    except (OSError, http.client.HTTPException) as exc:  # IncompleteRead is no OSError
        raise CoordinatorUnavailable(f"{url}: {type(exc).__name__}: {exc}") from None


def _try_peers(base: str, body: bytes) -> TryPeers | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("error") != "try-peers":
        return None
    after = obj.get("retry_after")
    if isinstance(after, bool) or not isinstance(after, int | float) or not math.isfinite(after):
        return None
    why = TRY_PEERS_WHY.get(obj.get("why"), TRY_PEERS_WHY["downloader-cap"])  # type: ignore[arg-type]
    return TryPeers(base=base, retry_after=min(max(float(after), 0.0), MAX_RETRY_AFTER), why=why)
