"""The node's client of all replicas of its network: ask in parallel, combine, report.

``QuorumClient`` runs one :class:`~p2pupdate.net.replica_link.ReplicaLink` per replica URL.
An ask proposes one departure token (:mod:`p2pupdate.core.departure`), sends it to every
replica at once, checks each grant's signature, and combines ``q`` of them into a token it
verifies before handing it to the updater; grants it cannot use are handed back at once.
What it tells the updater when there is no token is ``departure.merge_answers``.  Time
comes from the owner's :class:`~p2pupdate.clock.Clock` (wall seconds for tokens).
"""

from __future__ import annotations

import contextlib
import os
import random
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import trio

from .. import clock as clocks
from ..core import coordproto as proto
from ..core import crypto, departure
from ..core import documents as docs
from ..core.errors import P2PUpdateError, SchemaError
from ..core.origin import check_artifact
from ..core.trust import TrustStore
from ..fsutil import atomic_write
from ..net.replica_link import CoordinatorUnavailable, ProtocolError, Push, ReplicaLink

__all__ = [
    "AskOutcome",
    "CoordinatorUnavailable",
    "ProtocolError",
    "QuorumClient",
    "ReplicaLink",
]

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
    ) -> None:
        if not urls:
            raise ValueError("at least one coordinator URL")
        self.key = key
        self.node = key.keyid
        self.trust = trust
        self.log = log
        self.ask_timeout = ask_timeout
        self.clock = clock
        self.links = [
            ReplicaLink(
                u,
                key,
                on_push=on_push,
                on_connect=on_connect,
                log=log,
                rng=rng,
                replica_keys=lambda: self.trust().root.role_keys("coordinator"),
            )
            for u in urls
        ]

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links:
                await nursery.start(link.run)
            task_status.started()

    def connected(self) -> list[ReplicaLink]:
        return [link for link in self.links if link.is_connected]

    async def wait_connected(self, count: int = 1, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while len(self.connected()) < count:
                await trio.sleep(0.02)

    @property
    def ttl(self) -> int:
        return departure.token_ttl([link.ttl for link in self.connected()])

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
        results = await self._each(request, timeout)
        return sum(
            1
            for _link, r in results
            if not isinstance(r, CoordinatorUnavailable | proto.ErrorAnswer)
        )

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

    def fetch_artifact(self, artifact: str, dest: Path, release: docs.Release, limit: int) -> None:
        """Blocking (run in a thread): the artifact from a replica's origin, verified
        against its release record chunk by chunk, written atomically to ``dest``."""
        errors: list[str] = []
        for link in self.links:
            url = f"{link.base}/v1/artifacts/{artifact}"
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    data = resp.read(limit + 1)
            except OSError as exc:
                errors.append(f"{url}: {exc}")
                continue
            problem = check_artifact(data, release, limit)
            if problem:
                errors.append(f"{url}: {problem}")
                continue
            atomic_write(dest, data)
            return
        raise CoordinatorUnavailable("; ".join(errors) or "no replica")
