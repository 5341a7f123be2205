"""LAN discovery by zeroconf (mDNS/DNS-SD): ``_p2pupdate._udp.local.``.  README "Gossip and links".

Each node registers one service instance whose TXT record carries its node id (``node``,
64 hex digits) and its link address (``link``, ``tcp:HOST:PORT``), and browses for the
others.  Found records become ``core.gossip.Contact``\\ s, handed to the gossip shell as
introductions: the core dials them like any other contact and the link's handshake proves
the node id, so a forged record can waste a dial but never impersonate a node.

python-zeroconf is asyncio.  As README "Gossip and links" says, it runs in **the one
asyncio thread** of the process (``asyncio_bridge.sidecar``, shared with rtc links;
``AsyncZeroconf`` on explicitly given interface addresses -- never "all
interfaces": a node must not announce itself on networks it was not told about).
Results cross into trio with ``TrioToken.run_sync_soon`` into a memory channel; stopping
crosses back with ``loop.call_soon_threadsafe`` (goodbye packets, then the coroutine
ends).  Only this module touches zeroconf.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from ..core.gossip import Contact
from .asyncio_bridge import sidecar

SERVICE_TYPE: Final = "_p2pupdate._udp.local."
#: How long resolving one found instance may take (milliseconds, zeroconf's unit).
RESOLVE_TIMEOUT_MS: Final = 3000
#: Found contacts waiting for the trio side; more are dropped (they will be seen again).
FOUND_QUEUE: Final = 256


def contact_from_txt(properties: dict[bytes, bytes | None]) -> Contact | None:
    """A TXT record -> a contact, or None when it is not one of ours (or malformed)."""
    node = properties.get(b"node")
    link = properties.get(b"link")
    if not isinstance(node, bytes) or not isinstance(link, bytes):
        return None
    try:
        text = link.decode("ascii")
        kind, _, rest = text.partition(":")
        host, _, port = rest.rpartition(":")
        if kind != "tcp" or not port.isdigit():
            return None
        host = host.removeprefix("[").removesuffix("]")
        ipaddress.ip_address(host)  # a literal address only: no names to resolve
        return Contact(node=node.decode("ascii"), host=host, port=int(port))
    except (UnicodeDecodeError, ValueError):
        return None


class ZeroconfDiscovery:
    """Announce this node and report the others' contacts (``on_found``, in trio)."""

    def __init__(
        self,
        *,
        node: str,
        host: str,
        port: int,
        interfaces: Sequence[str],
        on_found: Callable[[Contact], None],
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        if not interfaces:
            raise ValueError("zeroconf needs at least one explicit interface address")
        self.me = Contact(node=node, host=host, port=port)
        self.interfaces = list(interfaces)
        self.on_found = on_found
        self.log = log
        self.found: dict[str, Contact] = {}

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the sidecar thread until cancelled; ``started()`` once announced."""
        send, recv = trio.open_memory_channel[Contact | BaseException | None](FOUND_QUEUE)
        token = trio.lowlevel.current_trio_token()
        stop_box: list[asyncio.Event] = []

        def post(item: Contact | BaseException | None) -> None:
            """From the sidecar thread: a contact, its failure, or None for "announced"."""

            def put() -> None:
                with contextlib.suppress(
                    trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
                ):
                    send.send_nowait(item)

            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(put)

        def ended(fut: concurrent.futures.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                post(fut.exception())  # report it to trio, do not die silently

        car = sidecar()  # the process's one asyncio thread, shared with rtc links
        fut = car.submit(self._sidecar(post, stop_box))
        fut.add_done_callback(ended)
        try:
            async with recv:
                async for item in recv:
                    if item is None:
                        task_status.started()
                    elif isinstance(item, BaseException):
                        raise RuntimeError(f"zeroconf sidecar failed: {item!r}") from item
                    elif item.node != self.me.node and self.found.get(item.node) != item:
                        self.found[item.node] = item
                        self.on_found(item)
        finally:
            with trio.CancelScope(shield=True):

                def stop() -> None:  # on the loop: goodbye packets, then the coroutine ends
                    if stop_box:
                        stop_box[0].set()
                    else:
                        fut.cancel()

                car.call_soon(stop)
                await trio.to_thread.run_sync(concurrent.futures.wait, [fut], 5.0)

    async def _sidecar(
        self,
        post: Callable[[Contact | BaseException | None], None],
        stop_box: list[asyncio.Event],
    ) -> None:
        from zeroconf import ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        stop = asyncio.Event()
        stop_box.append(stop)
        zc = AsyncZeroconf(interfaces=self.interfaces)
        me = self.me
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{me.node[:32]}.{SERVICE_TYPE}",
            addresses=[ipaddress.ip_address(me.host).packed],
            port=me.port,
            properties={"node": me.node, "link": f"tcp:{me.host}:{me.port}"},
            server=f"p2pupdate-{me.node[:16]}.local.",
        )
        tasks: set[asyncio.Task[None]] = set()

        async def resolve(name: str) -> None:
            found = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await found.async_request(zc.zeroconf, RESOLVE_TIMEOUT_MS):
                return
            contact = contact_from_txt(dict(found.properties))
            if contact is not None:
                post(contact)

        def on_change(**kw: Any) -> None:
            if kw.get("state_change") in (ServiceStateChange.Added, ServiceStateChange.Updated):
                task = asyncio.ensure_future(resolve(str(kw.get("name"))))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        browser = None
        try:
            await (await zc.async_register_service(info))
            browser = AsyncServiceBrowser(zc.zeroconf, [SERVICE_TYPE], handlers=[on_change])
            post(None)
            await stop.wait()
        finally:
            if browser is not None:
                await browser.async_cancel()
            for task in tasks:
                task.cancel()
            await zc.async_close()
