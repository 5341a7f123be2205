"""Shared helpers for the KV workload tests: nodes in a cancel scope, raw frame I/O."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import trio

from p2pupdate.core import wire
from p2pupdate.work.kv import KVConfig, KVWorkload
from p2pupdate.work.protocol import FRAME_LIMITS, MAX_FRAME_BYTES

#: Generous: the suite must not flake on a loaded 2-core machine.
STEP_TIMEOUT = 20.0


class Node:
    """One KVWorkload serving in its own cancel scope, restartable on the same state dir."""

    def __init__(self, nursery: trio.Nursery, state_dir: Path, config: KVConfig | None = None):
        self.nursery = nursery
        self.state_dir = state_dir
        self.config = config
        self.workload: KVWorkload | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped: trio.Event | None = None

    @property
    def w(self) -> KVWorkload:
        assert self.workload is not None
        return self.workload

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.w.host, self.w.port)

    async def start(self, checkpoint: bytes | None = None) -> KVWorkload:
        self.workload = KVWorkload(self.state_dir, config=self.config)
        if checkpoint is not None:
            self.workload.restore(checkpoint)
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        await self.nursery.start(self._run, self.workload, self._scope, self._stopped)
        return self.workload

    @staticmethod
    async def _run(
        workload: KVWorkload,
        scope: trio.CancelScope,
        stopped: trio.Event,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with scope:
                await workload.serve(task_status=task_status)
        finally:
            stopped.set()

    async def stop(self) -> None:
        """Stop abruptly (no drain): like a crash, as far as the process is concerned."""
        assert self._scope is not None and self._stopped is not None
        self._scope.cancel()
        with trio.fail_after(STEP_TIMEOUT):
            await self._stopped.wait()

    async def rolling_restart(self, drain_seconds: float = 5.0) -> bytes:
        """Drain, checkpoint, stop, start a new workload that restores the checkpoint."""
        await self.w.drain(trio.current_time() + drain_seconds)
        checkpoint = self.w.checkpoint()
        await self.stop()
        await self.start(checkpoint)
        return checkpoint


class RawConnection:
    """Frames by hand, to send what a well-behaved client never would."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = wire.FrameDecoder(MAX_FRAME_BYTES)
        self.ready: list[bytes] = []

    #: Every connection opened and not yet closed (the ``close_raw_connections`` fixture
    #: closes what a test left open).
    opened: ClassVar[set[RawConnection]] = set()

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        conn = cls(await trio.open_tcp_stream("127.0.0.1", port))
        cls.opened.add(conn)
        return conn

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, obj: Any) -> None:
        await self.send_raw(wire.frame(wire.encode(obj), MAX_FRAME_BYTES))

    async def receive(self) -> dict[str, Any] | None:
        """The next answer as a dict, or None at end of stream."""
        with trio.fail_after(STEP_TIMEOUT):
            while not self.ready:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.ready.extend(self.decoder.feed(data))
        answer = wire.decode(self.ready.pop(0), FRAME_LIMITS)
        assert isinstance(answer, dict)
        return answer

    async def ask(self, obj: Any) -> dict[str, Any] | None:
        await self.send(obj)
        return await self.receive()

    async def aclose(self) -> None:
        RawConnection.opened.discard(self)
        await self.stream.aclose()


def free_port() -> int:
    """A port nothing listens on (bound and released; good enough on loopback)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
