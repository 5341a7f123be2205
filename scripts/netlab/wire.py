"""A delay line: a userspace wire between two interfaces that holds each frame for a while.

This machine's kernel has no ``netem`` qdisc (tbf and htb only), so a fixed delay cannot be
a tc rule.  The wire sits in its own namespace between a home router's WAN veth and the
inet bridge, reads every frame from one side with an ``AF_PACKET`` socket and writes it to
the other after the configured delay for that direction (uplink: near -> far).  Frames keep
their order (one FIFO per direction).  ``PACKET_VNET_HDR`` passes offload metadata through
unchanged, so checksum-offloaded and GSO frames need no work here.

Usage (netlab starts it): ``python -m scripts.netlab.wire NEAR FAR UP_MS DOWN_MS``; it
prints ``ready`` once both sockets are bound and runs until killed.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
MAX_FRAME = 65536 + 64


def _open(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: this socket only
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def main(argv: list[str]) -> int:
    near_name, far_name, up_ms, down_ms = argv
    near, far = _open(near_name), _open(far_name)
    # (socket to read, socket to write, delay in seconds, queue of (due, frame))
    ways = [
        (near, far, int(up_ms) / 1000, collections.deque[tuple[float, bytes]]()),
        (far, near, int(down_ms) / 1000, collections.deque[tuple[float, bytes]]()),
    ]
    sel = selectors.DefaultSelector()
    for way in ways:
        sel.register(way[0], selectors.EVENT_READ, way)
    print("ready", flush=True)
    while True:
        heads = [q[0][0] for _, _, _, q in ways if q]
        timeout = max(0.0, min(heads) - time.monotonic()) if heads else None
        for key, _ in sel.select(timeout):
            src, _dst, delay, queue = key.data
            now = time.monotonic()
            for _ in range(256):
                try:
                    frame = src.recv(MAX_FRAME)
                except BlockingIOError:
                    break
                queue.append((now + delay, frame))
        now = time.monotonic()
        for _src, dst, _delay, queue in ways:
            while queue and queue[0][0] <= now:
                _, frame = queue.popleft()
                # A full queue or a link going down drops the frame, as a wire would.
                with contextlib.suppress(OSError):
                    dst.send(frame)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
