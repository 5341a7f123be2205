"""Builds handed to the node by a file drop: the stand-in for gossip and the swarm.

Peer-to-peer discovery and fetching arrive with a later issue; until then a test, the
demo or an operator drops a build into ``--offer-dir``:

* ``<sha256>.tar.gz`` -- the artifact (``scripts/build-artifact``);
* ``<sha256>.release`` -- its release record, signed by the release role of the trusted
  root (``p2pupdate release``); required when the daemon has ``--trust-root``;
* or ``<sha256>.json`` -- ``{"name": "v2", "counter": 2}``, unsigned: accepted only without
  ``--trust-root`` (tests), with a warning at start.

``evaluate`` is what the daemon answers to ``EvaluateGates`` meanwhile: the offer with the
highest release counter above the installed one is the candidate (``gates.newest_upgrade``:
gate 1's counter rule, the rest of gates 1 and 2 stubbed: allowlist version and scope
serial 1).  A sticky deny is the updater's business, not this
module's.  ``fetch`` is ``Prefetch``: the artifact is verified (sha256, and length and every
chunk hash against a signed release) and copied into the store, so the swap never reads
from the drop directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Set
from dataclasses import dataclass
from pathlib import Path

from ..clock import SYSTEM
from ..core.documents import Release
from ..core.errors import P2PUpdateError, SchemaError
from ..core.gates import newest_upgrade, platform_supported
from ..core.swarm.chunks import ChunkMap
from ..core.updater import Candidate, GatesEvaluated
from ..errors import PeerFault
from ..fsutil import AtomicFile, FileTooLargeError, read_limited
from ..launcher.artifact import (
    SELF_CONTAINED_LIMITS,
    UnpackLimits,
    node_platforms,
)
from .truststate import TrustFile

MAX_OFFER_RECORD = 1024 * 1024 + 4096
#: Bytes copied at a time from an unsigned offer (a signed one is copied chunk by chunk).
COPY_BLOCK = 1024 * 1024
#: Gates 1 and 2 are stubbed: the candidate binds to these (the departure token would).
STUB_ALLOWLIST_VERSION = 1
STUB_SCOPE_SERIAL = 1


class OfferError(PeerFault):
    """An offered build that cannot be used (whoever dropped it is at fault: the file drop
    stands in for the peers a build will come from)."""

    rule = "bad-offer"


@dataclass(frozen=True, kw_only=True)
class Offer:
    artifact: str
    counter: int
    name: str
    #: The verified release record (None for an unsigned test offer).
    release: Release | None


def _is_sha(name: str) -> bool:
    return len(name) == 64 and not name.strip("0123456789abcdef")


class OfferSource:
    """One drop directory, read on every gate evaluation."""

    def __init__(
        self,
        directory: Path,
        *,
        trust: TrustFile | None,
        limits: UnpackLimits = SELF_CONTAINED_LIMITS,
        log: Callable[[str], None] = lambda _m: None,
        wall_clock: Callable[[], float] = SYSTEM.wall,
        platforms: Set[str] | None = None,
    ) -> None:
        #: The platform tags this node runs: a signed offer for another is skipped.
        self.platforms = node_platforms() if platforms is None else platforms
        self.directory = directory
        self.trust = trust
        self.limits = limits
        self.log = log
        self.wall_clock = wall_clock
        self._reported: set[str] = set()

    def _problem(self, key: str, message: str) -> None:
        if key not in self._reported:  # one line per bad file, not one per check
            self._reported.add(key)
            self.log(f"offer ignored: {message}")

    def scan(self) -> list[Offer]:
        """Every usable offer in the directory (bad ones are logged once and skipped)."""
        offers: list[Offer] = []
        try:
            names = sorted(p.name for p in self.directory.iterdir())
        except OSError as exc:
            self._problem("dir", f"{self.directory}: {exc.strerror or exc}")
            return []
        present = set(names)
        suffix = ".release" if self.trust is not None else ".json"
        for name in names:
            stem = name.removesuffix(suffix)
            if stem == name or not _is_sha(stem) or f"{stem}.tar.gz" not in present:
                continue
            try:
                offers.append(self._read(stem, self.directory / name))
            except OfferError as exc:
                self._problem(name, f"{name}: {exc}")
        return offers

    def _read(self, artifact: str, path: Path) -> Offer:
        try:
            data = read_limited(path, MAX_OFFER_RECORD)
        except (OSError, FileTooLargeError) as exc:
            raise OfferError(str(exc)) from None
        if self.trust is not None:
            try:
                signed = self.trust.store.verify(Release, data, int(self.wall_clock()))
            except P2PUpdateError as exc:
                raise OfferError(f"release record rejected: {exc.rule}: {exc}") from None
            rel = signed.doc
            if rel.artifact != artifact:
                raise OfferError(f"release record is for {rel.artifact[:16]}..., not this file")
            if not platform_supported(rel.platform, self.platforms):
                raise OfferError(f"wrong-platform: built for {rel.platform}, not this node")
            return Offer(artifact=artifact, counter=rel.counter, name=rel.name, release=rel)
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise OfferError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != {"name", "counter"}:
            raise OfferError('expected {"name": str, "counter": int}')
        name, counter = obj["name"], obj["counter"]
        if not isinstance(name, str) or not name or len(name) > 128:
            raise OfferError("name must be a string of 1-128 characters")
        if isinstance(counter, bool) or not isinstance(counter, int) or counter < 1:
            raise OfferError("counter must be an integer >= 1")
        return Offer(artifact=artifact, counter=counter, name=name, release=None)

    def evaluate(self, *, installed: str, installed_counter: int) -> GatesEvaluated:
        """The answer to ``EvaluateGates``: the newest offer above the installed counter."""
        counters = {o.artifact: o.counter for o in self.scan()}
        best = newest_upgrade(counters, installed=installed, installed_counter=installed_counter)
        if best is None:
            return GatesEvaluated.no_candidate(
                reason="no-newer-offer",
                detail=f"nothing above release counter {installed_counter} in {self.directory}",
            )
        return GatesEvaluated(
            candidate=Candidate(
                artifact=best,
                counter=counters[best],
                allowlist_version=STUB_ALLOWLIST_VERSION,
                scope_serial=STUB_SCOPE_SERIAL,
            )
        )

    def fetch(self, artifact: str, dest: Path) -> None:
        """Verify the offered artifact and copy it to ``dest`` (atomically), a chunk at a
        time (a self-contained plain tar is hundreds of MB: never held whole): its length
        and every chunk against a signed release (``ChunkMap.of_release``, the one home of
        the cut), its sha256 in every case; ``dest`` appears only if all of it matched."""
        offer = next((o for o in self.scan() if o.artifact == artifact), None)
        if offer is None:
            raise OfferError(f"{artifact[:16]}... is no longer offered")
        rel = offer.release
        try:
            cmap = ChunkMap.of_release(rel) if rel is not None else None
        except SchemaError as exc:
            raise OfferError(f"artifact: {exc}") from None
        out = AtomicFile(dest)
        try:
            self._copy_checked(artifact, cmap, out)
        except BaseException:
            out.discard()
            raise
        out.commit()

    def _copy_checked(self, artifact: str, cmap: ChunkMap | None, out: AtomicFile) -> None:
        path = self.directory / f"{artifact}.tar.gz"
        whole = hashlib.sha256()
        try:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.limits.max_artifact_bytes:
                    raise OfferError(
                        f"artifact too large: {size} B over {self.limits.max_artifact_bytes}"
                    )
                if cmap is not None and size != cmap.length:
                    raise OfferError(f"artifact: {size} bytes, the release says {cmap.length}")
                spans = (
                    [(c.index, c.length) for c in cmap.chunks]
                    if cmap is not None
                    else [(-1, COPY_BLOCK)] * (-(-size // COPY_BLOCK))
                )
                for index, length in spans:
                    data = f.read(length)
                    if cmap is not None and not cmap.check(index, data):
                        raise OfferError(f"artifact: chunk {index} does not match the release")
                    whole.update(data)
                    out.write(data)
                if f.read(1):
                    raise OfferError("artifact: grew while it was read")
        except OSError as exc:
            raise OfferError(str(exc)) from None
        actual = whole.hexdigest()
        if actual != artifact:
            raise OfferError(f"artifact sha256 is {actual}, expected {artifact}")
