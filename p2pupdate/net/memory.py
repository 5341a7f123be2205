"""In-memory links for tests: the real handshake and framing over trio memory streams.

``memory_link_pair`` gives two ``StreamLink``s joined back to back, each having proven its
node key to the other exactly as over TCP.  Only the transport differs, so a shell test
(on trio's fake clock and memory streams) exercises the same code paths as a
real network, minus sockets.  (The gossip *simulation* runs in synchronous rounds and
needs no trio at all: it moves the bytes of ``Send`` effects itself.)
"""

from __future__ import annotations

import trio
import trio.testing

from ..core.crypto import SigningKey
from .base import LinkConfig, StreamLink, establish
from .handshake import NonceCache


async def memory_link_pair(
    dialer: SigningKey,
    acceptor: SigningKey,
    *,
    config: LinkConfig | None = None,
    dialer_host: str = "memory-dialer",
    acceptor_host: str = "memory-acceptor",
    nonces: NonceCache | None = None,
) -> tuple[StreamLink, StreamLink]:
    """``(dialer's link to acceptor, acceptor's link to dialer)``, handshake done.

    Raises the handshake's ``LinkError`` if it fails (it does not, for honest keys).
    """
    cfg = config if config is not None else LinkConfig()
    a_stream, b_stream = trio.testing.memory_stream_pair()
    links: dict[str, StreamLink] = {}

    async def side(name: str, stream: trio.abc.Stream, key: SigningKey, is_dialer: bool) -> None:
        links[name] = await establish(
            stream,
            key=key,
            dialer=is_dialer,
            host=acceptor_host if is_dialer else dialer_host,
            config=cfg,
            expected_peer=acceptor.keyid if is_dialer else None,
            nonces=None if is_dialer else nonces,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(side, "dialer", a_stream, dialer, True)
        nursery.start_soon(side, "acceptor", b_stream, acceptor, False)
    return links["dialer"], links["acceptor"]
