"""Talking to the example KV service of a node under test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from p2pupdate.work.client import ClientConfig, KVClient, KVClientError


@dataclass
class Writes:
    """What a writer saw: every acknowledged write, and the calls that failed."""

    acked: dict[str, bytes] = field(default_factory=dict)
    failed: int = 0
    client_failed: int = 0


async def write_until(
    endpoint: tuple[str, int],
    done: Callable[[], bool],
    *,
    prefix: str,
    fast_fail: bool = False,
    minimum: int = 0,
) -> Writes:
    """Put keys one after another until ``done()`` (and at least ``minimum`` were acked)."""
    config = (
        ClientConfig(attempt_timeout=1.0, request_timeout=2.0, connect_timeout=0.5)
        if fast_fail
        else ClientConfig()
    )
    out = Writes()
    async with KVClient([endpoint], config=config) as kv:
        i = 0
        while len(out.acked) < minimum or not done():
            key = f"{prefix}-{i:05d}"
            value = f"{prefix} value {i}".encode()
            i += 1
            try:
                await kv.put(key, value)
            except KVClientError:
                out.failed += 1
                continue
            out.acked[key] = value
            await trio.sleep(0.005)
        out.client_failed = kv.stats.failed
    return out


async def read_all(endpoint: tuple[str, int], keys: list[str]) -> dict[str, bytes | None]:
    async with KVClient([endpoint]) as kv:
        return {k: await kv.get(k) for k in keys}


def lost(endpoint: tuple[str, int], acked: dict[str, bytes]) -> list[str]:
    """Acknowledged writes the node no longer has (or has with another value)."""
    found = trio.run(read_all, endpoint, sorted(acked))
    return [k for k, v in acked.items() if found[k] != v]
