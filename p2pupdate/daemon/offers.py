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

import json
from collections.abc import Callable, Set
from dataclasses import dataclass
from pathlib import Path

from ..clock import SYSTEM
from ..core.documents import Release
from ..core.errors import P2PUpdateError
from ..core.gates import newest_upgrade, platform_supported
from ..core.origin import check_artifact
from ..core.updater import Candidate, GatesEvaluated
from ..errors import PeerFault
from ..fsutil import FileTooLargeError, atomic_write, read_limited
from ..launcher.artifact import (
    SELF_CONTAINED_LIMITS,
    ArtifactError,
    UnpackLimits,
    node_platforms,
    read_artifact,
)
from .truststate import TrustFile

MAX_OFFER_RECORD = 1024 * 1024 + 4096
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
        """Verify the offered artifact and copy it to ``dest`` (atomically)."""
        offer = next((o for o in self.scan() if o.artifact == artifact), None)
        if offer is None:
            raise OfferError(f"{artifact[:16]}... is no longer offered")
        try:
            data = read_artifact(self.directory / f"{artifact}.tar.gz", artifact, self.limits)
        except (OSError, ArtifactError) as exc:
            raise OfferError(str(exc)) from None
        rel = offer.release
        if rel is not None:
            why = check_artifact(data, rel, len(data))
            if why:
                raise OfferError(f"artifact: {why}")
        atomic_write(dest, data)
