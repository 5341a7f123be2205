"""TCP links: u32-length-prefixed msgpack frames after a node-key handshake.

``connect_tcp`` dials and proves both keys (and that the node reached is the one dialed);
``serve_tcp`` accepts, runs the handshake under ``LinkConfig.handshake_timeout`` for each
connection in its own task, and hands each authenticated ``Link`` to a handler.  A
connection that fails its handshake never reaches the handler; ``on_reject`` (if given)
hears why, with the remote host, so the shell can log or count it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable

import trio

from ..core.crypto import SigningKey
from .base import Link, LinkConfig, StreamLink, _normalise, establish
from .errors import LinkError, LinkTimeoutError
from .handshake import NonceCache

Handler = Callable[[Link], Awaitable[None]]
OnReject = Callable[[LinkError, str], None]


def _remote_host(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "unknown"
    return str(addr[0]) if isinstance(addr, tuple) else str(addr)


#: Unsent bytes the kernel keeps per connection (``TCP_NOTSENT_LOWAT``): a writer waits
#: beyond it, so what queues behind a slow uplink queues in the node (where a swarm
#: request or cancel goes ahead of the blocks), not in a socket buffer of megabytes.
NOTSENT_LOWAT = 128 * 1024


def _tune(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    notsent = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if notsent is not None:
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.IPPROTO_TCP, notsent, NOTSENT_LOWAT)


async def connect_tcp(
    host: str,
    port: int,
    *,
    key: SigningKey,
    expected_peer: str | None,
    config: LinkConfig | None = None,
    nonces: NonceCache | None = None,
    local_address: str | None = None,
) -> StreamLink:
    """Dial ``host:port`` (from ``local_address`` when given) and authenticate.  Raises
    ``LinkError`` (``PeerMismatchError`` when a valid node answers that is not
    ``expected_peer``)."""
    cfg = config if config is not None else LinkConfig()
    try:
        with trio.fail_after(cfg.handshake_timeout):
            stream = await trio.open_tcp_stream(host, port, local_address=local_address)
    except trio.TooSlowError as exc:
        raise LinkTimeoutError(f"connecting to {host}:{port} timed out") from exc
    except Exception as exc:
        raise _normalise(exc, f"connect {host}:{port}") from exc
    _tune(stream)
    return await establish(
        stream,
        key=key,
        dialer=True,
        host=host,
        config=cfg,
        expected_peer=expected_peer,
        nonces=nonces,
    )


async def serve_tcp(
    handler: Handler,
    *,
    key: SigningKey,
    host: str,
    port: int = 0,
    config: LinkConfig | None = None,
    nonces: NonceCache | None = None,
    on_reject: OnReject | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` (0: any free port) forever; ``task_status.started(port)``.

    Each accepted connection is authenticated in its own task; the handler owns the
    link it gets (and should close it).  Replayed handshakes are caught by ``nonces``
    (a fresh cache is used when none is given).
    """
    cfg = config if config is not None else LinkConfig()
    cache = nonces if nonces is not None else NonceCache()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def accept(stream: trio.SocketStream) -> None:
        remote = _remote_host(stream)
        try:
            _tune(stream)
            link = await establish(
                stream, key=key, dialer=False, host=remote, config=cfg, nonces=cache
            )
        except LinkError as exc:
            if on_reject is not None:
                on_reject(exc, remote)
            return
        except OSError as exc:
            await stream.aclose()
            if on_reject is not None:
                on_reject(_normalise(exc, "accept"), remote)
            return
        await handler(link)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, accept, listeners)
        task_status.started(bound)
