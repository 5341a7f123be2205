"""What ``NodeHooks.gossip_status`` builds for a test service: holdings from a real store."""

from __future__ import annotations

from collections.abc import Callable

from p2pupdate.core import gossip as g
from p2pupdate.daemon.chunkstore import ChunkStore


def status_of(store: ChunkStore, running: str) -> Callable[[], g.Status]:
    """A heartbeat status whose holdings come from ``store.summary()`` (the running build
    ``running``), as the node's hooks make it."""

    def status() -> g.Status:
        return g.Status(
            version="1.0",
            artifact=running,
            state="serving",
            pool="default",
            load=1.0,
            capacity=10.0,
            holdings=g.holdings_from_summary(store.summary(), running=running),
        )

    return status
