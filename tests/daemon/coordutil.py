"""A ``CoordinatorLink`` as the in-process node tests make it (one place for its defaults)."""

from __future__ import annotations

from p2pupdate.clock import SYSTEM
from p2pupdate.core import crypto
from p2pupdate.daemon.coordinator import CoordinatorLink
from p2pupdate.daemon.truststate import TrustFile


def coord_link(
    url: str, key: crypto.SigningKey, trust: TrustFile, lines: list[str]
) -> CoordinatorLink:
    """A link to the replica at ``url`` (pool ``default``, no estimate, reports every 30 s,
    the system clock) that logs into ``lines``."""
    return CoordinatorLink(
        [url],
        key,
        trust,
        pool="default",
        estimate=None,
        report_interval=30.0,
        log=lines.append,
        clock=SYSTEM,
    )
