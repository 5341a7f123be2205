"""TURN credentials a replica mints for a node it authenticated (README "Gossip and links").

coturn's time-limited credentials (``use-auth-secret`` with a ``static-auth-secret`` that
only the TURN server and the replicas know): the username is ``EXPIRES:NODE`` and the
password ``base64(HMAC-SHA1(secret, username))``.  coturn recomputes the password from the
username and refuses it after ``EXPIRES`` (unix seconds), so no static password ever lives
on a node, and a leaked credential dies by itself.  This is the one home of the formula (and of the
ICE URL rule, :func:`check_ice_url`): the replica's ``coordinator/ice.py``, netlab's tests and
the rtc bench (through the replica's code) all call :func:`mint`; the aiortc shape of a server
is ``coordproto.IceServer.as_aiortc``.

Pure: the time is an argument (``expires``), the secret is bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_ICE_URL_LEN",
    "MAX_NODE_LEN",
    "MAX_SECRET_LEN",
    "TurnCredential",
    "check_ice_url",
    "mint",
]

#: Longest node name in a username (a node id is 64 hex characters).
MAX_NODE_LEN: Final = 128
#: Longest shared secret accepted (coturn's own limit is far above any sane secret).
MAX_SECRET_LEN: Final = 1024
#: Latest expiry accepted: year ~36812, far past any real one; keeps the username short.
MAX_EXPIRES: Final = 2**40
_NODE: Final = re.compile(r"[0-9A-Za-z._-]+")
#: Longest STUN or TURN URL accepted (a host name is at most 253 characters).
MAX_ICE_URL_LEN: Final = 300
_LABEL = r"[0-9A-Za-z](?:[0-9A-Za-z-]{0,61}[0-9A-Za-z])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]{{2,45}}\])"
_ICE_URL: Final = re.compile(
    rf"(?P<scheme>stun|turns?):(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class TurnCredential:
    """A username and password coturn accepts until ``expires`` (unix seconds)."""

    username: str
    password: str
    expires: int


def mint(*, secret: bytes, node: str, expires: int) -> TurnCredential:
    """The credential for ``node`` that coturn accepts until ``expires``.

    ``ValueError`` (naming the argument) for an empty or oversize secret, a node name that is
    empty, too long or not ``[0-9A-Za-z._-]`` (a ``:`` would change what coturn reads as the
    expiry), or an expiry that is not a positive integer.
    """
    if not isinstance(secret, bytes) or not 0 < len(secret) <= MAX_SECRET_LEN:
        raise ValueError(f"turn: secret must be 1..{MAX_SECRET_LEN} bytes")
    if not isinstance(node, str) or len(node) > MAX_NODE_LEN or not _NODE.fullmatch(node):
        raise ValueError(
            f"turn: node must be 1..{MAX_NODE_LEN} of [0-9A-Za-z._-], got {node!r:.40}"
        )
    if isinstance(expires, bool) or not isinstance(expires, int) or not 0 < expires < MAX_EXPIRES:
        raise ValueError(f"turn: expires must be a positive unix time, got {expires!r:.40}")
    username = f"{expires}:{node}"
    mac = hmac.new(secret, username.encode("ascii"), hashlib.sha1).digest()
    return TurnCredential(
        username=username, password=base64.b64encode(mac).decode("ascii"), expires=expires
    )


def check_ice_url(url: str) -> str:
    """``url`` if it is a STUN or TURN URL an ICE agent takes (RFC 7064 / 7065), else
    ``ValueError`` saying what is wrong.

    ``stun:HOST[:PORT]``, ``turn:`` or ``turns:HOST[:PORT][?transport=udp|tcp]``; HOST a
    DNS name, an IPv4 address or a bracketed IPv6 one; PORT 1..65535; at most
    ``MAX_ICE_URL_LEN`` characters.  The replica checks its ``--stun`` / ``--turn`` flags
    with it and a node every URL a replica hands it: one rule, both ends.
    """
    if not isinstance(url, str) or not 0 < len(url) <= MAX_ICE_URL_LEN:
        raise ValueError(f"ice url: expected 1..{MAX_ICE_URL_LEN} characters, got {url!r:.60}")
    m = _ICE_URL.fullmatch(url)
    if m is None:
        raise ValueError(
            f"{url!r:.80} is not stun:HOST[:PORT] or turn[s]:HOST[:PORT][?transport=udp|tcp]"
        )
    if m["port"] is not None and not 0 < int(m["port"]) <= 65535:
        raise ValueError(f"{url!r:.80}: port must be 1..65535")
    if m["scheme"] == "stun" and m["transport"] is not None:
        raise ValueError(f"{url!r:.80}: a stun: URL takes no ?transport")
    return url
