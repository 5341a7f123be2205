"""Host names and local addresses: what a node may be told to listen on, dial or announce.

The node's command line checks every address it is given before anything starts
(``p2pupdate node``, P7): a listen address must be one this machine has (binding it is
the proof, and the socket is closed at once), a peer or a replica must at least be a
well-formed host.  Only syntax and this machine's interfaces are looked at: a peer's or a
replica's name is never resolved here (a node that boots while DNS is down must still
start); a name to *listen* on goes through the system resolver, as it will when the
daemon binds it.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from typing import Final

__all__ = ["MAX_HOST_LEN", "bind_problem", "is_host", "is_ip", "split_hostport"]

#: RFC 1035: a name is at most 253 characters (and each label at most 63).
MAX_HOST_LEN: Final = 253
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def is_ip(text: str) -> bool:
    """An IPv4 or IPv6 literal (no brackets, no zone)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_host(text: str) -> bool:
    """An IP literal, or a host name of RFC 1123 labels (``a b``, ``x/y``, ``""`` are not)."""
    if is_ip(text):
        return True
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > MAX_HOST_LEN:
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def split_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); raises ``ValueError``."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    value = int(port)
    if not 0 <= value <= 65535:
        raise ValueError(f"{text!r}: port out of range")
    return host, value


def bind_problem(host: str, port: int = 0, *, udp: bool = False) -> str | None:
    """Why a socket cannot listen on ``host:port`` on this machine, or None if it can.

    Binds and closes at once (``SO_REUSEADDR``, as trio's listeners set it, so a port in
    ``TIME_WAIT`` is not taken for one in use).  A port another process holds is *not* a
    problem here: that is a passing condition (an old instance still stopping, a client's
    ephemeral port), and refusing to start with exit 2 would need a person; the daemon's
    listener retries it with the launcher's backoff.  An address this machine does not
    have, or a name that does not resolve, is a mistake in the flags.  A literal is not looked up at all
    (``AI_NUMERICHOST``); a name like ``localhost`` goes through the system resolver.
    """
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    flags = socket.AI_PASSIVE | (socket.AI_NUMERICHOST if is_ip(host) else 0)
    try:
        infos = socket.getaddrinfo(host or None, port, type=kind, flags=flags)
    except (socket.gaierror, UnicodeError) as exc:
        return f"cannot resolve {host!r}: {getattr(exc, 'strerror', None) or exc}"
    bound = 0
    for family, type_, proto, _name, addr in infos:
        try:
            sock = socket.socket(family, type_, proto)
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                continue  # no IPv6 here: trio's listeners skip it too
            return exc.strerror or str(exc)
        with sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
            except OSError as exc:  # every address the name has must bind, as in trio
                if exc.errno == errno.EADDRINUSE:
                    bound += 1
                    continue
                return exc.strerror or str(exc)
        bound += 1
    return None if bound else "no address to bind"
