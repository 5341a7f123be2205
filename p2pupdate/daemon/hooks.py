"""What the gossip service and the coordinator link ask of the node, and what they tell it.

``GossipService`` and ``CoordinatorLink`` are built before the ``Node`` (``daemon.main``) and
know nothing of it; ``NodeHooks.attach`` plugs them in:

=============================  =================================================================
gossip ``status``              our heartbeat / push-sum contribution (``gossip_status``)
gossip ``on_deliver``          a verified document that was news here (``gossip_delivered``)
gossip ``introducer``          the coordinator's introductions (``--coordinator`` only)
gossip ``rtc``                 ``--rtc`` (``core.gossip.rtc_enabled`` decides ``auto``)
gossip ``signals``             the coordinator's ICE servers and signal relay (C2)
coordinator ``on_signal``      a relayed rtc offer or answer: to gossip
coordinator ``status_fields``  version, artifact, state, why gates 1-2 hold us back
coordinator ``on_nudge``       a verified nudge: ``Nudged`` for the updater
coordinator ``on_learned``     a newer allowlist / scope: ``AllowlistLearned`` / ``ScopeLearned``
coordinator ``on_slot``        a replica's signed word a slot freed for us: ``SlotFreed``
coordinator ``estimate_source``  the pool's push-sum totals (``gossip_estimate``)
coordinator ``versions_source``  push-sum's count of nodes per version (``gossip_versions``)
coordinator ``on_document``    a document a replica sent: spread by gossip (an allowlist also
                               rewrites the status file: ``replica_document``)
=============================  =================================================================

Events for the updater go through ``feed`` (the node's event channel, due in whatever state
the updater is in); a full channel drops the event with a log line rather than block gossip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import trio

from ..clock import Clock
from ..core import coordproto as proto
from ..core import documents as docs
from ..core import gossip as g
from ..core import updater as up
from ..core.errors import P2PUpdateError
from ..core.gates import GateResult
from ..launcher.state import SlotManifest
from .coordinator import CoordinatorLink
from .gossip import GossipService
from .options import DaemonOptions
from .status import newest_allowlist, report_fields
from .truststate import TrustFile
from .workhost import WorkHost

__all__ = ["NodeHooks"]


class NodeHooks:
    """The node's side of gossip and the coordinator link."""

    def __init__(
        self,
        *,
        slot: str,
        manifest: SlotManifest,
        opts: DaemonOptions,
        work: WorkHost,
        updater_state: Callable[[], up.State | None],
        feed: Callable[[up.Event], bool],
        write_status: Callable[[], None],
        clock: Clock,
        log: Callable[[str], None],
        coordinator: CoordinatorLink | None,
        gossip: GossipService | None,
        trust: TrustFile | None,
        store_summary: Callable[[], Mapping[str, tuple[int, int]]] = dict,
    ) -> None:
        self.slot = slot
        #: ``ChunkStore.summary``: what our heartbeats say we hold or are fetching.
        self.store_summary = store_summary
        self.manifest = manifest
        self.opts = opts
        self.work = work
        self.updater_state = updater_state
        self.feed = feed
        self.write_status = write_status
        self.clock = clock
        self.log = log
        self.coord = coordinator
        self.gossip = gossip
        self.trust = trust
        #: Why gates 1-2 hold this node back now (reported to the coordinator).
        self.held: GateResult | None = None
        #: The newest allowlist version learned by gossip, for the status file.
        self.allowlist_seen: int | None = None
        #: Who else hears of a release record newly held (the swarm seeds its artifact).
        self.on_release: list[Callable[[docs.Release], None]] = []

    def attach(self) -> None:
        """Plug the hooks into the gossip service and the coordinator link (if any)."""
        coordinator, gossip = self.coord, self.gossip
        if coordinator is not None:
            coordinator.status_fields = self.status_fields
            coordinator.on_nudge = self.nudged
            coordinator.on_learned = self.document_learned
            coordinator.on_slot = self.slot_freed
            coordinator.on_release = self.release_learned
        if gossip is not None:
            gossip.status = self.gossip_status
            gossip.on_deliver = self.gossip_delivered
            gossip.rtc = g.rtc_enabled(self.opts.rtc, [gossip.listen_host, gossip.advertise_host])
            if coordinator is not None:
                gossip.introducer = coordinator.introductions
                gossip.signals = coordinator
                coordinator.on_signal = gossip.on_signal
                coordinator.estimate_source = self.gossip_estimate
                coordinator.versions_source = self.gossip_versions
                coordinator.on_document = self.replica_document
                coordinator.gossip_peers = lambda: len(gossip.linked())

    def newest_allowlist(self) -> int | None:
        """The newest allowlist version known here (gossip or coordinator)."""
        return newest_allowlist(
            self.allowlist_seen, self.coord.allowlist if self.coord is not None else None
        )

    # -- the coordinator's hooks ----------------------------------------------------------------

    def status_fields(self) -> dict[str, Any]:
        return report_fields(
            manifest=self.manifest, slot=self.slot, state=self.updater_state(), held=self.held
        )

    def nudged(self, artifact: str) -> None:
        """A verified nudge: fed to the updater whatever state it is in now."""
        if not self.feed(up.Nudged(artifact=artifact)):
            self.log("nudge dropped: the updater is busy")

    def document_learned(self, doc: docs.Allowlist | docs.Scope) -> None:
        """A newer allowlist or scope than the one held (a replica's, or a peer's): the
        updater decides whether it ends a refusal's wait or brings a check forward."""
        if isinstance(doc, docs.Allowlist):
            self.allowlist_learned(doc)
        elif not self.feed(up.ScopeLearned(serial=doc.serial)):
            self.log("scope notice dropped: the updater is busy")

    def release_learned(self, rel: docs.Release) -> None:
        """A release record newly held (a replica's, or a peer's): the updater decides
        whether it ends a wait for it (gate 1's ``no-release-record``)."""
        if not self.feed(up.ReleaseLearned(artifact=rel.artifact)):
            self.log("release notice dropped: the updater is busy")
        for extra in self.on_release:
            extra(rel)

    def slot_freed(self, freed: proto.SlotFreed) -> None:
        """A replica's verified word that a departure slot freed and we head its queue."""
        if not self.feed(up.SlotFreed()):
            self.log("slot notice dropped: the updater is busy")

    def allowlist_learned(self, allow: docs.Allowlist) -> None:
        """A newer allowlist from a peer: fed to the updater, which decides when to check."""
        event = up.AllowlistLearned(version=allow.version, artifacts=allow.artifacts)
        if not self.feed(event):
            self.log("allowlist notice dropped: the updater is busy")

    def replica_document(self, data: bytes) -> None:
        """A document a replica sent (verified and kept by the coordinator link): spread by
        gossip.  An allowlist also rewrites the status file, whose ``gossip.allowlist``
        says the newest one known: on a node whose gossip view is not changing nothing
        else would rewrite it soon (the first allowlist a node gets is no "newer" one)."""
        assert self.gossip is not None
        self.gossip.publish(data)
        try:
            kind = docs.peek_type(data)
        except P2PUpdateError:
            return
        if kind == "allowlist":
            self.write_status()

    # -- gossip's hooks -------------------------------------------------------------------------

    def gossip_status(self) -> g.Status:
        """What our heartbeats and push-sum contributions say (refreshed every round), with
        the artifacts our chunk store holds or is fetching (README "Artifacts peer to peer")."""
        state = self.updater_state()
        load, capacity = self.work.load_and_capacity()
        return g.Status(
            version=self.manifest.version[:64],
            artifact=self.slot,
            state=state.heartbeat_state if state is not None else "serving",
            pool=self.opts.pool,
            load=min(max(load, 0.0), 1e18) if math.isfinite(load) else 0.0,
            capacity=min(max(capacity, 0.0), 1e18) if math.isfinite(capacity) else 0.0,
            holdings=g.holdings_from_summary(self.store_summary(), running=self.slot),
        )

    def gossip_estimate(self) -> dict[str, float] | None:
        """The pool's push-sum totals for the coordinator's status report."""
        assert self.gossip is not None
        got = self.gossip.estimate(self.opts.pool)
        if got is None:
            return None
        totals, age = got
        return {
            "capacity": totals.capacity,
            "load": totals.load,
            "serving": max(0, round(totals.serving)),
            "age": min(age, 1e9),
        }

    def gossip_versions(self) -> dict[str, object] | None:
        """Push-sum's count of nodes per version for the coordinator's status report."""
        assert self.gossip is not None
        got = self.gossip.versions()
        if got is None:
            return None
        counts, age = got
        return {"counts": dict(counts), "age": min(age, 1e9)}

    def gossip_delivered(self, doc: bytes, slot: str) -> None:
        """A verified document that was news here, learned from a peer.

        Releases, allowlists and scopes go where the coordinator's go (gates 1-2 read them
        there).  A nudge is acted on at once, as from the coordinator.  A newer allowlist
        goes to the updater as ``AllowlistLearned``: it brings its check forward by a random
        delay within ``--gossip-notice-spread`` (``UpdaterConfig.notice_spread``).
        """
        kind = slot.partition(":")[0]
        known = self.newest_allowlist() or 0
        if self.coord is not None and kind in ("release", "allowlist", "scope"):
            self.coord.take(doc, source="gossip")
        if self.trust is None:
            return
        now = self.clock.utc_now()
        if kind == "nudge":
            nudge = self.trust.store.verify(docs.Nudge, doc, now).doc
            self.log(f"gossip: nudged by a peer: {nudge.describe()}")
            self.nudged(nudge.artifact)
        elif kind == "allowlist":
            allow = self.trust.store.verify(docs.Allowlist, doc, now).doc
            if allow.version <= known:
                return  # the coordinator (or another peer) brought it first
            self.allowlist_seen = allow.version
            self.log(f"gossip: allowlist v{allow.version} learned from a peer")
            self.write_status()
            self.allowlist_learned(allow)
        elif kind == "root":
            self.log("gossip: a new trusted root was learned from a peer")

    async def start_zeroconf(self, nursery: trio.Nursery) -> None:
        """Announce our gossip contact on ``--zeroconf`` interfaces; found peers go to gossip."""
        from ..net.discovery import ZeroconfDiscovery  # zeroconf is imported only if asked for

        gossip = self.gossip
        assert gossip is not None
        me = gossip.contact
        disc = ZeroconfDiscovery(
            node=gossip.node,
            host=me.host,
            port=me.port,
            interfaces=self.opts.zeroconf,
            on_found=lambda c: gossip.add_contacts([c]),
            log=self.log,
        )
        await nursery.start(disc.run)
        self.log(f"zeroconf: announcing {me.host}:{me.port} on {', '.join(self.opts.zeroconf)}")
