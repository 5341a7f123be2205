"""Who may read a replica's operator views: ``/status`` (and ``/status/node/<id>``),
``/metrics``, ``/ui``.

Node ids and the versions they run are sensitive: a stranger who can read them learns
which boxes run a vulnerable build.  So these views are open to loopback clients only,
unless the replica is given a bearer token (``serve --read-token-file F``); then every
client, loopback too, must send ``Authorization: Bearer <token>`` (compared in constant
time).  A refusal is an answer with a reason and a hint (``ReadRefused``), never an
exception.  The rollout page's own files (``/ui``: code and style, no data) follow
``ReadAccess.check_page``: loopback only without a token; with one, anyone may load them,
and the page asks for the token to read ``/status``.

What stays open to everyone, and why: ``/healthz`` (says "ok", nothing else); the node
channel (each node authenticates in its hello); ``POST /v1/publish`` (signed documents,
verified before use: a forged one is refused); ``GET /v1/documents`` (signed documents
for replicas catching up, public by design: nodes get them anyway) and the artifact
GETs/PUT (public bytes, checked against signed release records).

Why its own module and not a field of ``ServerLimits``: those are the abuse limits, each
a positive number in the README's table; this is a secret read from a file, with its own
rule (the peer's address, the header), tested on its own.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Final

from p2pupdate.cli.common import UsageError, read_input

__all__ = [
    "MAX_TOKEN_FILE",
    "ReadAccess",
    "ReadRefused",
    "add_flags",
    "from_args",
    "is_loopback",
    "is_page_path",
    "is_read_path",
    "read_token_file",
]

#: Bytes a token file may hold (a token is a line of printable ASCII: a header value).
MAX_TOKEN_FILE: Final = 4096
_TOKEN = re.compile(rb"^[\x21-\x7e]+$")
_HINT: Final = (
    "read it from the replica's own machine (loopback), or serve with "
    "`p2pupdate-coordinator serve --read-token-file F` and send "
    "`Authorization: Bearer <token>` (`p2pupdate-coordinator status --token-file F`)"
)


def is_read_path(path: str) -> bool:
    """The operator views this rule guards (the path, without its query)."""
    return path in ("/status", "/metrics", "/ui") or path.startswith(("/status/", "/ui/"))


def is_page_path(path: str) -> bool:
    """The rollout page's own files (``/ui``, ``/ui/*``): code and style, no data
    (``ReadAccess.check_page``)."""
    return path == "/ui" or path.startswith("/ui/")


def is_loopback(peer: str) -> bool:
    """Whether ``peer`` ("HOST:PORT" as the server saw it, an IPv6 host bracketed or
    not) is a loopback address: 127.0.0.0/8, ::1, or ::ffff:127.x.y.z.  Anything
    that does not parse (an empty peer: not a socket) is not."""
    host = peer.rsplit(":", 1)[0].strip("[]")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


@dataclass(frozen=True, kw_only=True, slots=True)
class ReadRefused:
    """A read the rule refused: the HTTP status, a JSON body, and its headers."""

    status: int
    error: str
    reason: str
    headers: tuple[tuple[str, str], ...] = ()

    def body(self) -> bytes:
        answer = {"ok": False, "error": self.error, "reason": self.reason, "hint": _HINT}
        return (json.dumps(answer, indent=1, sort_keys=True) + "\n").encode()


@dataclass(frozen=True, kw_only=True, slots=True)
class ReadAccess:
    """The rule for one replica: ``token`` None = loopback only."""

    token: bytes | None = field(default=None, repr=False)

    def check(self, peer: str, authorization: bytes | None) -> ReadRefused | None:
        """None when ``peer`` (with the request's ``Authorization`` header value) may read."""
        if self.token is None:
            if is_loopback(peer):
                return None
            return ReadRefused(
                status=403,
                error="loopback-only",
                reason="this replica serves its status and metrics to loopback clients "
                "only (it has no --read-token-file)",
            )
        challenge = (("www-authenticate", 'Bearer realm="p2pupdate"'),)
        given = _bearer(authorization)
        if given is None:
            return ReadRefused(
                status=401,
                error="read-token-required",
                reason="send Authorization: Bearer <token> (the replica's --read-token-file)",
                headers=challenge,
            )
        if not hmac.compare_digest(given, self.token):
            return ReadRefused(
                status=401,
                error="read-token-wrong",
                reason="the bearer token is not this replica's read token",
                headers=(("www-authenticate", 'Bearer realm="p2pupdate", error="invalid_token"'),),
            )
        return None

    def check_page(self, peer: str) -> ReadRefused | None:
        """The rule for the page's own files (``is_page_path``).  Without a token: loopback
        only, like the data.  With one: anyone, since a browser cannot send a header when
        it opens a URL; the files hold no node id or version, the page asks for the token
        and sends it on its fetches of ``/status``, which ``check`` still guards."""
        if self.token is not None:
            return None
        return self.check(peer, None)


def _bearer(value: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None."""
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None


def read_token_file(path: str, flag: str = "--read-token-file") -> bytes:
    """The token in ``path``: a regular file of one line of printable ASCII (surrounding
    whitespace dropped), at most ``MAX_TOKEN_FILE`` bytes.  Missing, unreadable, empty,
    oversize or more than one line: a usage mistake (exit 2), said with the flag."""
    try:
        data = read_input(path, MAX_TOKEN_FILE)
    except UsageError as exc:
        raise UsageError(f"{flag} {exc}") from None
    token = data.strip()
    if not token:
        raise UsageError(f"{flag} {path}: empty (put one line, the token, in it)")
    if not _TOKEN.match(token):
        raise UsageError(
            f"{flag} {path}: the token must be one line of printable ASCII without spaces"
        )
    return token


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``serve --read-token-file``."""
    parser.add_argument(
        "--read-token-file",
        metavar="FILE",
        help="a bearer token (one line; keep the file mode 0600): /status, /metrics and /ui "
        "then answer any client that sends `Authorization: Bearer <token>`, and no other; "
        "without it they answer loopback clients only (node ids and versions are sensitive)",
    )


def from_args(args: argparse.Namespace) -> ReadAccess:
    path = getattr(args, "read_token_file", None)
    return ReadAccess(token=read_token_file(path) if path else None)
