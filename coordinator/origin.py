"""The origin's share of a release: how many may download at once, and what it served.

The origin (a replica's ``GET /v1/artifacts/<sha>[/chunks/<i>]``) is the last resort of
a node that fetches a build (README "Artifacts peer to peer"): peers carry the bulk.  So
it caps the concurrent downloaders of each artifact and answers the rest "try peers" with
a ``retry_after``; and it counts the bytes it served per artifact, so an operator sees in
``/status`` and ``/metrics`` how much of a rollout came from it.

A *downloader* is who asked for the artifact in the last ``window`` seconds: the node id
the request names (``X-P2pupdate-Node``, 16-64 hex digits), else the client's address.
The header is not authenticated: the cap is the fleet's courtesy to the origin, not a
defence (a client that lies about its id only gets what it could get from many
addresses).  A downloader already counted is always admitted (a download under way is
never cut off between chunks); a new one beyond the cap is refused until the oldest
counted one has been quiet for ``window`` seconds, which is its ``retry_after``.

State is bounded: a refused downloader is not remembered, at most ``max_downloaders``
are per artifact, and only artifacts the replica holds are ever counted (the server asks
after it found the artifact).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from p2pupdate.core import coordproto as proto

__all__ = ["DEFAULT_MAX_DOWNLOADERS", "NODE_HEADER", "OriginConfig", "OriginGate", "downloader"]

DEFAULT_MAX_DOWNLOADERS: Final = 8
#: A downloader counts this long after its last request (seconds).
DEFAULT_WINDOW: Final = 5.0
NODE_HEADER: Final = proto.ORIGIN_NODE_HEADER
_NODE = re.compile(r"^[0-9a-f]{16,64}$")


def downloader(node_header: str | None, address: str) -> str:
    """Who a request counts as: its node id if it names a well-formed one, else its host."""
    if node_header is not None and _NODE.match(node_header):
        return f"node:{node_header}"
    return f"addr:{address.rpartition(':')[0] or address}"


@dataclass(frozen=True, kw_only=True, slots=True)
class OriginConfig:
    """``serve --origin-max-downloaders N``, and how long a downloader counts."""

    max_downloaders: int = DEFAULT_MAX_DOWNLOADERS
    window: float = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.max_downloaders < 1:
            raise ValueError("the origin admits at least one downloader per artifact")
        if not (math.isfinite(self.window) and self.window > 0):
            raise ValueError("the downloader window must be a positive number of seconds")


@dataclass(kw_only=True, slots=True)
class _Served:
    bytes: int = 0
    requests: int = 0
    refused: int = 0
    #: downloader -> when (monotonic) it last asked.
    seen: dict[str, float] = field(default_factory=dict)


class OriginGate:
    """Per artifact: who downloads now (capped), bytes and requests served, refusals."""

    def __init__(self, config: OriginConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self._per: dict[str, _Served] = {}

    def admit(self, artifact: str, who: str) -> int | None:
        """None: serve ``who``; else the seconds to tell it to wait ("try-peers")."""
        now = self.clock()
        s = self._per.setdefault(artifact, _Served())
        window = self.config.window
        for other, last in list(s.seen.items()):
            if now - last >= window:
                del s.seen[other]
        if who in s.seen or len(s.seen) < self.config.max_downloaders:
            s.seen[who] = now
            return None
        s.refused += 1
        oldest = min(s.seen.values())
        return max(1, math.ceil(oldest + window - now))

    def served(self, artifact: str, length: int) -> None:
        s = self._per.setdefault(artifact, _Served())
        s.bytes += length
        s.requests += 1

    def status(self, held: Callable[[str], bool]) -> dict[str, Any]:
        """``/status``'s ``origin``: only artifacts the replica still holds are listed."""
        now = self.clock()
        artifacts = {
            a: {
                "bytes": s.bytes,
                "requests": s.requests,
                "refused": s.refused,
                "downloaders": sum(1 for t in s.seen.values() if now - t < self.config.window),
            }
            for a, s in sorted(self._per.items())
            if held(a)
        }
        return {
            "max_downloaders": self.config.max_downloaders,
            "window": self.config.window,
            "bytes": sum(e["bytes"] for e in artifacts.values()),
            "refused": sum(e["refused"] for e in artifacts.values()),
            "artifacts": artifacts,
        }
