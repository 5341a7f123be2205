"""The replica server's abuse limits: one dataclass, its defaults, its ``serve`` flags.

Every byte and count limit of the network shell (``coordinator.server``) is named here
once (README "Abuse limits" is the table of them): what a stranger who can open sockets
to the replica may cost it.  A limit reached is a refusal or a closed connection, counted
in ``/status`` (``server``) and ``/metrics``, never an exception that reaches the process.

Why these defaults:

* ``max_connections`` 1000: under the usual soft limit of 1024 open files, so the cap is
  hit (and the connection refused with a 503 at once) before ``accept`` fails with EMFILE
  and every client waits.  A fleet larger than that needs ``ulimit -n`` raised and
  ``--max-connections`` with it (each node holds one WebSocket per replica).
* ``max_per_source`` 100: one address holds at most a tenth of them (a NAT in front of
  many nodes needs it raised; one client cannot starve the rest).
* ``head_timeout`` 10 s for a whole request head, ``body_timeout`` 30 s for a whole body
  (plus ``length / upload_min_rate`` for an artifact upload, 1 GiB at 256 KiB/s is ~68
  minutes): a deadline per request, not per read, so a client that trickles one byte
  a minute is cut like one that sends nothing.
* ``max_head`` 16 KiB, ``max_document_body`` 2 MiB (a signed document), the artifact
  itself at most its release record's length (checked before a byte of it is read).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, fields
from typing import Final

from p2pupdate.cli.common import duration, int_range

__all__ = ["ServerLimits", "add_flags", "from_args"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerLimits:
    """What one replica's server allows; ``serve --max-connections`` etc. (``add_flags``)."""

    #: Connections open at once (HTTP and WebSocket); beyond: a 503, closed at once.
    max_connections: int = 1000
    #: Connections open at once from one source address.
    max_per_source: int = 100
    #: Seconds for a whole request head to arrive (from the connection's first byte
    #: wait, or the end of the previous request on a kept-alive connection).
    head_timeout: float = 10.0
    #: Seconds for a whole request body (a document, an upload's fixed part).
    body_timeout: float = 30.0
    #: An artifact upload's deadline grows by its length at this rate (bytes/s).
    upload_min_rate: int = 256 * 1024
    #: Seconds a kept-alive HTTP connection may wait for its next request.
    idle_timeout: float = 60.0
    #: Seconds a node has after the upgrade to send a valid hello.
    hello_timeout: float = 10.0
    #: Bytes of a request head.
    max_head: int = 16 * 1024
    #: Bytes of any body but an artifact's (a signed document).
    max_document_body: int = 2 * 1024 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{f.name} must be a positive number, not {v!r}")
        if self.max_per_source > self.max_connections:
            raise ValueError("max_per_source cannot exceed max_connections")

    def body_deadline(self, length: int) -> float:
        """Seconds for a body of ``length`` bytes to arrive."""
        return self.body_timeout + length / self.upload_min_rate


DEFAULTS: Final = ServerLimits()


def seconds(text: str) -> float:
    """An argparse type: '0.5', '10', '90s', '2m' -> positive seconds."""
    try:
        v = float(text)
    except ValueError:
        return float(duration(text))
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return v


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The operator-facing limits as ``serve`` flags (defaults: ``ServerLimits``)."""
    d = DEFAULTS
    parser.add_argument(
        "--max-connections",
        type=int_range(1, 1_000_000),
        default=d.max_connections,
        metavar="N",
        help="connections open at once (HTTP and node WebSockets); beyond it a new one gets "
        "a 503 and is closed at once; keep it under `ulimit -n` "
        f"(default {d.max_connections})",
    )
    parser.add_argument(
        "--max-per-source",
        type=int_range(1, 1_000_000),
        default=d.max_per_source,
        metavar="N",
        help="connections open at once from one source address (raise it for many nodes "
        f"behind one NAT; default {d.max_per_source})",
    )
    parser.add_argument(
        "--head-timeout",
        type=seconds,
        default=d.head_timeout,
        metavar="S",
        help=f"seconds for a whole request head to arrive (default {d.head_timeout:g})",
    )
    parser.add_argument(
        "--body-timeout",
        type=seconds,
        default=d.body_timeout,
        metavar="S",
        help="seconds for a whole request body to arrive; an artifact upload gets its "
        f"length at {d.upload_min_rate // 1024} KiB/s on top (default {d.body_timeout:g})",
    )
    parser.add_argument(
        "--hello-timeout",
        type=seconds,
        default=d.hello_timeout,
        metavar="S",
        help="seconds a node has to authenticate after opening its WebSocket "
        f"(default {d.hello_timeout:g})",
    )


def from_args(args: argparse.Namespace) -> ServerLimits:
    try:
        return ServerLimits(
            max_connections=args.max_connections,
            max_per_source=min(args.max_per_source, args.max_connections),
            head_timeout=args.head_timeout,
            body_timeout=args.body_timeout,
            hello_timeout=args.hello_timeout,
        )
    except ValueError as exc:  # pragma: no cover - the flag types refuse first
        raise argparse.ArgumentTypeError(str(exc)) from None
