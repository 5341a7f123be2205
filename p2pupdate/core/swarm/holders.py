"""Which holders of an artifact a fetching node opens extra links to: the one home of the rule.

README "Artifacts peer to peer" (finding holders).  A fetching node opens swarm sessions
over every link it has, and over a few extra links (``EXTRA_LINKS``, bounded: each costs
the holder a connection) to nodes whose heartbeats say they hold or are fetching the
artifact (``core.gossip.Gossip.holders``).  ``pick_holders`` chooses them:

* never this node, a node already linked (its session runs over that link), a banned one,
  or one without a known contact (nothing to dial);
* whole holders before partial ones, then the larger fraction held;
* ties broken by ``sha256(picker || node)``: deterministic for one picker, but every
  fetcher orders the same holders differently, so a fleet that starts together does not
  pile onto the same few seeds.

Pure: the daemon and the simulator call it with what they know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from typing import Final

__all__ = ["EXTRA_LINKS", "pick_holders"]

#: Extra links a fetching node opens per artifact, at most.
EXTRA_LINKS: Final = 4


def pick_holders(
    holders: Iterable[tuple[str, str, int]],
    *,
    me: str,
    linked: Collection[str],
    reachable: Collection[str],
    banned: Collection[str] = (),
    limit: int = EXTRA_LINKS,
) -> list[str]:
    """Up to ``limit`` node ids from ``holders`` (``(node, state, fraction)`` as
    ``Gossip.holders`` gives them) to open extra links to, best first.

    ``linked``: peers with a link already (also extra links already open: they count
    against nothing here, the caller subtracts them from ``limit``); ``reachable``: nodes
    with a known contact; ``banned``: refused peers."""
    if limit <= 0:
        return []
    best: dict[str, tuple[int, int, bytes]] = {}
    for node, state, fraction in holders:
        if node == me or node in linked or node in banned or node not in reachable:
            continue
        if state not in ("held", "fetching") or fraction <= 0:
            continue
        tie = hashlib.sha256(f"{me}:{node}".encode()).digest()
        key = (0 if state == "held" else 1, -fraction, tie)
        if node not in best or key < best[node]:
            best[node] = key
    return sorted(best, key=best.__getitem__)[:limit]
