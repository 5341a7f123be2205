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

A chunk is the swarm's once one copy is out: the origin does not send the same chunk
to a second downloader within ``repeat_window`` seconds of sending it to the first (it
answers "try peers", ``retry_after`` 1).  On release day nodes that start together pick
their origin chunks at random among those no peer of theirs has; without the window two
of them often fetched the same chunk at once, and the origin sent it twice while the swarm
could have carried the second copy within a second or two.  Measured with the swarm
simulator (24 nodes, 16 MiB, 64 KiB chunks, seeds 1-8; README "Artifacts peer to peer"):
the origin's copies went from 1.26 to 1.12 and the last node's time from 35.9 s to
34.1 s at 10 ms between nodes; from 1.16 to 1.06 copies and 52.2 s to 40.9 s at 250 ms
(the refused node takes other chunks from its peers meanwhile).  A node that is
refused waits one second and may then be sent the chunk: no chunk is withheld longer than
the window, whoever asks.  The same downloader asking again (a download that restarted)
is not a repeat.

State is bounded: a refused downloader is not remembered, at most ``max_downloaders``
are per artifact, only artifacts the replica holds are ever counted (the server asks
after it found the artifact), and a chunk is remembered for ``repeat_window`` only (at
most the release's chunk count per artifact).

A chunk goes out zstd-compressed (``Content-Encoding: zstd``) to a node that asks for it
(``Accept-Encoding: zstd``) when it shrinks (the codec: ``p2pupdate.core.swarm.packing``).
``WireCache`` keeps the compressed frames of recent chunks (bounded in bytes) and
remembers which chunks do not shrink, so the origin compresses a chunk once, not once per
downloader.  ``served`` counts the bytes actually sent.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from p2pupdate.core import coordproto as proto

__all__ = [
    "DEFAULT_MAX_DOWNLOADERS",
    "DEFAULT_REPEAT_WINDOW",
    "NODE_HEADER",
    "OriginConfig",
    "OriginGate",
    "WireCache",
    "accepts",
    "downloader",
]

DEFAULT_MAX_DOWNLOADERS: Final = 8
#: A downloader counts this long after its last request (seconds).
DEFAULT_WINDOW: Final = 5.0
#: A chunk sent to one downloader is not sent to another for this long (seconds).
DEFAULT_REPEAT_WINDOW: Final = 2.0
#: What a downloader refused a chunk just sent to another is told to wait (seconds).
REPEAT_RETRY: Final = 1
#: Why the origin says "try-peers" (the ``why`` of its answer): over the downloader cap,
#: or the chunk was just sent to another downloader (the repeat window).
REFUSALS: Final = ("downloader-cap", "just-sent")
NODE_HEADER: Final = proto.ORIGIN_NODE_HEADER
_NODE = re.compile(r"^[0-9a-f]{16,64}$")


#: Bytes of compressed chunks ``WireCache`` keeps (each entry also costs a key).
DEFAULT_WIRE_CACHE_BYTES: Final = 32 * 1024 * 1024
#: Entries ``WireCache`` keeps at most (chunks known not to shrink cost no frame bytes).
WIRE_CACHE_ENTRIES: Final = 65_536
#: An Accept-Encoding header longer than this is not read (it is someone else's problem).
MAX_ACCEPT_ENCODING: Final = 256


def accepts(header: bytes | None, codec: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes ``codec`` (a ``q=0`` says no)."""
    if header is None or len(header) > MAX_ACCEPT_ENCODING:
        return False
    for item in header.decode("latin-1").split(","):
        name, _, params = item.partition(";")
        if name.strip().lower() != codec:
            continue
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


class WireCache:
    """Compressed chunks by (artifact, chunk): the frame, or None when the chunk does not
    shrink; least recently used out first, at most ``max_bytes`` of frames.  A chunk's
    bytes are fixed by its hash in the release record, so an entry never goes stale."""

    def __init__(self, max_bytes: int = DEFAULT_WIRE_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: OrderedDict[tuple[str, int], bytes | None] = OrderedDict()

    def get(self, artifact: str, chunk: int) -> tuple[bool, bytes | None]:
        """(known, frame): ``known`` False means not compressed yet."""
        key = (artifact, chunk)
        if key not in self._frames:
            return False, None
        self._frames.move_to_end(key)
        return True, self._frames[key]

    def put(self, artifact: str, chunk: int, frame: bytes | None) -> None:
        key = (artifact, chunk)
        old = self._frames.pop(key, None)
        self.bytes -= len(old or b"")
        size = len(frame or b"")
        if size > self.max_bytes:
            return
        self._frames[key] = frame
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._frames) > WIRE_CACHE_ENTRIES:
            _, dropped = self._frames.popitem(last=False)
            self.bytes -= len(dropped or b"")


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
    #: 0: the origin sends a chunk to whoever asks, however recently it sent it.
    repeat_window: float = DEFAULT_REPEAT_WINDOW

    def __post_init__(self) -> None:
        if not (math.isfinite(self.repeat_window) and 0 <= self.repeat_window <= 60):
            raise ValueError("the repeat window must be between 0 and 60 seconds")
        if self.max_downloaders < 1:
            raise ValueError("the origin admits at least one downloader per artifact")
        if not (math.isfinite(self.window) and self.window > 0):
            raise ValueError("the downloader window must be a positive number of seconds")


@dataclass(kw_only=True, slots=True)
class _Served:
    bytes: int = 0
    requests: int = 0
    refused: int = 0
    #: Of ``refused``: chunks just sent to another downloader ("repeats").
    repeats: int = 0
    #: downloader -> when (monotonic) it last asked.
    seen: dict[str, float] = field(default_factory=dict)
    #: chunk -> (when it was last admitted, to whom), for ``repeat_window``.
    sent: dict[int, tuple[float, str]] = field(default_factory=dict)


class OriginGate:
    """Per artifact: who downloads now (capped), bytes and requests served, refusals."""

    def __init__(self, config: OriginConfig, *, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        self._per: dict[str, _Served] = {}
        self.wire = WireCache()

    def admit(self, artifact: str, who: str, chunk: int | None = None) -> int | None:
        """None: serve ``who`` (``chunk``, or the whole artifact when None); else the
        seconds to tell it to wait ("try-peers")."""
        refusal = self.refusal(artifact, who, chunk)
        return None if refusal is None else refusal[0]

    def refusal(self, artifact: str, who: str, chunk: int | None = None) -> tuple[int, str] | None:
        """``admit`` with the reason: None, or (seconds to wait, ``REFUSALS`` entry)."""
        now = self.clock()
        s = self._per.setdefault(artifact, _Served())
        window = self.config.window
        for other, last in list(s.seen.items()):
            if now - last >= window:
                del s.seen[other]
        repeat = self.config.repeat_window
        if chunk is not None and repeat > 0:
            for i, (when, _) in list(s.sent.items()):  # oldest first: stop at the first fresh
                if now - when < repeat:
                    break
                del s.sent[i]
            last_sent = s.sent.get(chunk)
            if last_sent is not None and last_sent[1] != who:
                s.refused += 1
                s.repeats += 1
                return REPEAT_RETRY, "just-sent"
        if who in s.seen or len(s.seen) < self.config.max_downloaders:
            s.seen[who] = now
            if chunk is not None and repeat > 0:
                s.sent.pop(chunk, None)  # re-inserted last: the dict stays oldest first
                s.sent[chunk] = (now, who)
            return None
        s.refused += 1
        oldest = min(s.seen.values())
        return max(1, math.ceil(oldest + window - now)), "downloader-cap"

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
                "repeats_refused": s.repeats,
                "downloaders": sum(1 for t in s.seen.values() if now - t < self.config.window),
            }
            for a, s in sorted(self._per.items())
            if held(a)
        }
        return {
            "max_downloaders": self.config.max_downloaders,
            "window": self.config.window,
            "repeat_window": self.config.repeat_window,
            "bytes": sum(e["bytes"] for e in artifacts.values()),
            "refused": sum(e["refused"] for e in artifacts.values()),
            "artifacts": artifacts,
        }
