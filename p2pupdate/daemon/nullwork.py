"""``--work none``: a node that serves nothing, with just enough state to see a handoff.

Its checkpoint counts the handoffs it went through (each restore adds one), so a test can
tell that the new version really restored what the old one checkpointed without depending
on the example service.
"""

from __future__ import annotations

import json

import trio

from ..work.base import Workload


class NullWorkload(Workload):
    name = "none"

    def __init__(self) -> None:
        self.handoffs = 0
        self._serving = False
        self._draining = False

    def capacity(self) -> float:
        return 0.0

    def load(self) -> float:
        return 0.0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._serving, self._draining = True, False
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._serving = False

    async def drain(self, deadline: float) -> None:
        self._draining = True

    def checkpoint(self) -> bytes:
        return json.dumps({"handoffs": self.handoffs}).encode()

    def restore(self, data: bytes) -> None:
        try:
            obj = json.loads(data)
            handoffs = obj["handoffs"]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not a checkpoint of the null workload: {exc}") from None
        if isinstance(handoffs, bool) or not isinstance(handoffs, int) or handoffs < 0:
            raise ValueError("not a checkpoint of the null workload: bad handoff count")
        self.handoffs = handoffs + 1

    def healthy(self) -> bool:
        return self._serving and not self._draining
