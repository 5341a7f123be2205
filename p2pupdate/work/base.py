"""The ``Workload`` interface: what the daemon needs from the service a node runs.

The daemon never looks inside the work.  It needs to know how much the node can carry
(``capacity``) and carries now (``load``) for the capacity gate; to run it (``serve``); to
stop it gracefully before a swap (``drain``); to carry its state across the process
boundary (``checkpoint`` / ``restore``); and to know the new version actually works
before confirming it (``healthy``).  README "The work a node serves".

A drain is: stop accepting new work, answer "going away" to new requests (so clients
move to another node at once instead of timing out), finish what is in flight within the
deadline, and make the state durable.  From the outside a rolling update must show zero
failed requests.
"""

from __future__ import annotations

import abc

import trio


class Workload(abc.ABC):
    """One service run by the daemon, in the daemon's trio nursery."""

    #: Short name for logs and status ("kv" for the example service).
    name: str = "work"

    @abc.abstractmethod
    def capacity(self) -> float:
        """Work units per second this node can carry when serving (>= 0)."""

    @abc.abstractmethod
    def load(self) -> float:
        """Work units per second it carries now (a recent moving average, >= 0)."""

    @abc.abstractmethod
    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled.  Call ``task_status.started()`` once accepting requests.

        A workload serves once: after ``drain`` (or cancellation) the daemon builds a fresh
        instance on the same state to serve again (e.g. when a swap is abandoned)."""

    @abc.abstractmethod
    async def drain(self, deadline: float) -> None:
        """Stop taking new work, finish in-flight work by ``deadline`` (``trio.current_time()``
        clock), and make all acknowledged state durable.  Returns when drained; work still
        running at the deadline is abandoned (its clients retry elsewhere)."""

    @abc.abstractmethod
    def checkpoint(self) -> bytes:
        """All state the next version needs, as bytes (called after ``drain``)."""

    @abc.abstractmethod
    def restore(self, data: bytes) -> None:
        """Load a checkpoint written by ``checkpoint`` (of this or the previous version).

        Raises ``ValueError`` for a checkpoint it cannot read: the new version is then
        unhealthy and the launcher rolls back."""

    @abc.abstractmethod
    def healthy(self) -> bool:
        """True when serving correctly; probation confirms only after this holds."""
