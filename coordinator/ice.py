"""The ICE servers a replica hands its nodes, and the TURN credentials it mints for them.

README "Gossip and links": the network's operator runs STUN and TURN (coturn with
``use-auth-secret``) and gives every replica the URLs and coturn's ``static-auth-secret``
(``serve --stun URL --turn URL --turn-secret-file F [--turn-ttl DUR]``).  A node asks its
replica (``ice``, after the session's handshake proved who it is) and gets the URLs with
a credential for its own node id, valid ``ttl`` seconds on the replica's clock: no static
TURN password lives on a node, and a leaked credential dies by itself.  The formula and
the URL rule are :mod:`p2pupdate.core.turn` (one home); this module holds the settings
and counts what it minted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from p2pupdate.core import coordproto as proto
from p2pupdate.core import turn

from .errors import ConfigError

__all__ = ["DEFAULT_TURN_TTL", "MAX_TURN_TTL", "MIN_TURN_TTL", "IceConfig", "IceServers"]

#: A credential's lifetime unless ``--turn-ttl`` says otherwise: a node asks again after
#: two thirds of it, so six hours means one ``ice`` request per node every four hours.
DEFAULT_TURN_TTL: Final = 6 * 3600
#: Shortest lifetime: a node must be able to set up a link (seconds) well inside it.
MIN_TURN_TTL: Final = 60
#: Longest: the protocol's bound (a day; a leaked credential must die soon).
MAX_TURN_TTL: Final = proto.MAX_ICE_TTL


@dataclass(frozen=True, kw_only=True)
class IceConfig:
    """STUN and TURN URLs (checked by ``turn.check_ice_url``), coturn's shared secret, and
    the credentials' lifetime.  ``ConfigError`` naming the flag for anything that does not
    fit; the secret never shows in a repr."""

    stun: tuple[str, ...] = ()
    turn: tuple[str, ...] = ()
    secret: bytes = field(default=b"", repr=False)
    ttl: int = DEFAULT_TURN_TTL

    def __post_init__(self) -> None:
        for flag, urls, schemes in (
            ("--stun", self.stun, ("stun:",)),
            ("--turn", self.turn, ("turn:", "turns:")),
        ):
            for url in urls:
                try:
                    turn.check_ice_url(url)
                except ValueError as exc:
                    raise ConfigError(f"{flag}: {exc}") from None
                if not url.startswith(schemes):
                    raise ConfigError(f"{flag} {url!r:.80}: expected a {' or '.join(schemes)} URL")
        if len(self.stun) + len(self.turn) > proto.MAX_ICE_SERVERS:
            raise ConfigError(f"--stun and --turn: at most {proto.MAX_ICE_SERVERS} URLs in all")
        if self.turn and not self.secret:
            raise ConfigError("--turn needs --turn-secret-file (coturn's static-auth-secret)")
        if self.secret and not self.turn:
            raise ConfigError("--turn-secret-file without --turn: no TURN server to use it for")
        if len(self.secret) > turn.MAX_SECRET_LEN:
            raise ConfigError(f"--turn-secret-file: at most {turn.MAX_SECRET_LEN} bytes")
        if not MIN_TURN_TTL <= self.ttl <= MAX_TURN_TTL:
            raise ConfigError(f"--turn-ttl must be {MIN_TURN_TTL} s .. {MAX_TURN_TTL // 3600} h")

    @property
    def configured(self) -> bool:
        return bool(self.stun or self.turn)


class IceServers:
    """Answers ``ice`` requests: the configured servers, a fresh credential per answer."""

    def __init__(self, config: IceConfig, *, wall: Callable[[], float]) -> None:
        self.config = config
        self.wall = wall
        #: Credentials minted since start (``/status``, ``/metrics``).
        self.minted = 0

    def answer(self, node: str) -> proto.IceAnswer:
        """The servers for ``node`` (the id the session authenticated: the only one a
        credential is ever minted for), TURN with a credential expiring ``ttl`` seconds
        from now on this replica's wall clock."""
        c = self.config
        servers = [proto.IceServer(urls=url) for url in c.stun]
        ttl = 0
        if c.turn:
            cred = turn.mint(secret=c.secret, node=node, expires=int(self.wall()) + c.ttl)
            self.minted += 1
            ttl = c.ttl
            servers += [
                proto.IceServer(urls=url, username=cred.username, credential=cred.password)
                for url in c.turn
            ]
        return proto.IceAnswer(servers=tuple(servers), ttl=ttl)

    def status(self) -> dict[str, Any]:
        c = self.config
        return {
            "configured": c.configured,
            "stun": list(c.stun),
            "turn": list(c.turn),
            "turn_ttl": c.ttl if c.turn else None,
            "credentials_minted": self.minted,
        }
