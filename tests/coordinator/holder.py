"""A node that asks for a departure, prints its token's expiry and holds it until killed.

Run as ``python -m tests.coordinator.holder URL ROOT TO_ARTIFACT``; the lease test
SIGKILLs it while it holds the lease (a node that dies mid-update).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import trio

from p2pupdate.core import coordproto as proto
from p2pupdate.core import crypto
from p2pupdate.core.trust import TrustStore
from p2pupdate.daemon.replica import QuorumClient


async def main(url: str, root: str, to: str) -> None:
    store = TrustStore.from_root(Path(root).read_bytes(), int(time.time()))
    key = crypto.SigningKey.from_seed(os.urandom(32))
    client = QuorumClient([url], key, lambda: store)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        await client.wait_connected()
        estimate = proto.Estimate(capacity=1000.0, load=10.0, serving=50, age=0.0)
        report = proto.StatusReport(
            version="v1",
            artifact="0" * 64,
            state="serving",
            pool="default",
            estimate=estimate,
            held=None,
            addrs=(),
        )
        await client.send(report)
        outcome = await client.ask(
            pool="default",
            from_artifact="0" * 64,
            to_artifact=to,
            allowlist_version=1,
            scope_serial=1,
            capacity=10.0,
            load=1.0,
        )
        print(
            f"{key.keyid} {'GRANTED' if outcome.token else 'REFUSED ' + outcome.reason}", flush=True
        )
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
