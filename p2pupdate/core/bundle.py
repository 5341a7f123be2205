"""The network bundle: the one file a vendor bakes into a box (P11).

A ``bundle`` document holds everything a node needs to join a network with no flags: the
root document, the root-signed network document (``documents.NetworkConfig``; empty for a
network made before admission existed), the replicas' URLs, the STUN/TURN URLs, the pool
the node serves in, and a few node defaults (gossip on, its port, zeroconf).  It is signed
by the **root role of the root it carries** (``p2pupdate-coordinator bundle``, with the
keys kept offline), so neither a replica nor an operator key can point a fleet at other
replicas.

``open_bundle`` is the only way to get one out of bytes, in this order:

1. the envelope (size-limited: ``BUNDLE_LIMITS``) must say ``bundle``;
2. its payload is parsed to learn the root it carries (the one other place, with
   ``documents.open_root``, where a payload is read before its signatures are checked;
   nothing from it is trusted until they are);
3. that root must verify by a threshold of its own root keys (``documents.open_root``);
4. the bundle must carry a threshold of signatures of that root's **root** role;
5. the network document, if any, must verify under that root (``documents.open_signed``);
6. the bundle, the root and the network document must name the same network.

**Then pinned.** The bundle's root is used only on a node's first start, to seed its
``trust.TrustStore`` (trust on first use; ``TrustStore.from_root`` checks the root is
fresh).  From then on the node trusts its stored root, which rotates the usual way
(``TrustStore.update_root``); a bundle read later must name the pinned root's network
and carry a root of its chain or a newer one (``pinned=``), and only its URLs and
defaults are used.  The bundle's own expiry counts at
first use only: a box that has run for years keeps its replica list when the file ages,
its trust is the pinned root, and everything the replicas send is verified under it.

Pure: the time is an argument.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from . import wire
from .admission import open_network
from .crypto import Envelope
from .documents import (
    Document,
    NetworkConfig,
    Root,
    Signed,
    check_fresh,
    open_root,
)
from .errors import SchemaError, WrongNetworkError, WrongTypeError
from .trust import TrustStore
from .turn import _HOST, check_ice_url

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_LIMITS",
    "MAX_REPLICAS",
    "Bundle",
    "OpenedBundle",
    "WrongNetworkError",
    "check_replica_url",
    "open_bundle",
]

#: Where a node looks for its bundle when no ``--bundle`` is given.
BUNDLE_FILE: Final = "/etc/p2pupdate/network.bundle"
#: A network has at most this many replicas (a quorum of more is not a thin coordinator).
MAX_REPLICAS: Final = 32
#: STUN plus TURN URLs in one bundle (the ``ice`` answer's own cap).
MAX_ICE_URLS: Final = 8
#: A root of 64 keys in four roles, with its signatures, is ~30 KiB.
MAX_ROOT_BYTES: Final = 64 * 1024
#: A network document is a few hundred bytes signed.
MAX_NETWORK_BYTES: Final = 16 * 1024
MAX_URL_LEN: Final = 300
#: The whole file: a root at its cap, a network document at its cap, 32 URLs and slack.
BUNDLE_LIMITS: Final = wire.Limits(
    max_bytes=128 * 1024,
    max_bin_len=112 * 1024,
    max_container_len=64,
    max_str_len=4096,
    max_items=1024,
)

# One host syntax for ICE and replica URLs: the one in ``turn`` (DNS name, IPv4, [IPv6]).
_REPLICA_URL: Final = re.compile(
    rf"(?P<scheme>https?)://(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?/?"
)


def check_replica_url(url: str) -> str:
    """``url`` if it names a replica: ``http(s)://HOST[:PORT][/]``, nothing on it (no
    user, path, query or fragment); else ``ValueError`` saying what is wrong.

    This is the document's rule.  Which of these a node of this version can dial (plain
    ``http`` only, TLS is not built in yet) is ``net.websocket.parse_url``'s, checked by
    the command that signs a bundle.
    """
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_LEN:
        raise ValueError(f"replica url: expected 1..{MAX_URL_LEN} characters, got {url!r:.60}")
    m = _REPLICA_URL.fullmatch(url)
    if m is None:
        raise ValueError(f"{url!r:.80} is not http(s)://HOST[:PORT]")
    if m["port"] is not None and not 0 < int(m["port"]) <= 65535:
        raise ValueError(f"{url!r:.80}: port must be 1..65535")
    return url


def _url_check(rule: Callable[[str], str], schemes: tuple[str, ...]) -> wire.Check:
    def check(name: str, v: Any) -> str:
        if not isinstance(v, str):
            raise SchemaError(f"field {name!r}: expected a URL string")
        try:
            rule(v)
        except ValueError as exc:
            raise SchemaError(f"field {name!r}: {exc}") from None
        if not v.startswith(schemes):
            raise SchemaError(f"field {name!r}: expected a {' or '.join(schemes)} URL")
        return v

    return check


@dataclass(frozen=True, kw_only=True)
class Bundle(Document):
    """One network, as a box needs it.  Signed by the root role of ``root``."""

    TYPE: ClassVar[str] = "bundle"
    ROLE: ClassVar[str] = "root"
    FIELDS: ClassVar[dict[str, wire.Check]] = {
        "issued": wire.uint(2**40),
        "expires": wire.uint(2**40),
        "network": wire.text(128, nonempty=True),
        "root": wire.blob(max_len=MAX_ROOT_BYTES),
        "network_config": wire.blob(max_len=MAX_NETWORK_BYTES),
        "replicas": wire.array(
            _url_check(check_replica_url, ("http://", "https://")), MAX_REPLICAS, unique=True
        ),
        "stun": wire.array(_url_check(check_ice_url, ("stun:",)), MAX_ICE_URLS, unique=True),
        "turn": wire.array(
            _url_check(check_ice_url, ("turn:", "turns:")), MAX_ICE_URLS, unique=True
        ),
        "pool": wire.text(64, nonempty=True),
        "gossip": wire.boolean(),
        "gossip_port": wire.uint(65535),
        "zeroconf": wire.boolean(),
    }
    LIMITS: ClassVar[wire.Limits] = BUNDLE_LIMITS

    network: str
    #: The root document's signed bytes (``root.msgpack``).
    root: bytes
    #: The network document's signed bytes (``network.msgpack``), or empty: a network made
    #: before admission existed (its replicas apply ``admission.default_config``).
    network_config: bytes
    replicas: tuple[str, ...]
    stun: tuple[str, ...] = ()
    #: TURN servers; a node still gets its credential from a replica (``ice``): no TURN
    #: password is ever in a bundle.
    turn: tuple[str, ...] = ()
    pool: str = "default"
    #: Node defaults (every node flag still overrides): gossip on, on ``gossip_port``
    #: (0: a random port) of every non-loopback interface, announced by zeroconf.
    gossip: bool = True
    gossip_port: int = 0
    zeroconf: bool = True

    def validate(self) -> None:
        super().validate()
        if not self.replicas:
            raise SchemaError("bundle: at least one replica URL")
        if len(self.stun) + len(self.turn) > MAX_ICE_URLS:
            raise SchemaError(f"bundle: at most {MAX_ICE_URLS} STUN and TURN URLs in all")
        if not self.pool.isprintable():
            raise SchemaError("bundle: a pool name is 1-64 printable characters")
        if not self.root:
            raise SchemaError("bundle: no root document")

    def describe(self) -> str:
        ice = f", {len(self.stun)} STUN, {len(self.turn)} TURN" if self.stun or self.turn else ""
        config = "" if self.network_config else ", no network document"
        return (
            f"bundle of network {self.network!r}: {len(self.replicas)} replicas{ice}, "
            f"pool {self.pool!r}, gossip {'on' if self.gossip else 'off'}{config}"
        )


@dataclass(frozen=True, kw_only=True)
class OpenedBundle:
    """A verified bundle with the root and network document it carries, verified too."""

    bundle: Bundle
    signers: frozenset[str]
    root: Signed[Root]
    network_config: Signed[NetworkConfig] | None


def open_bundle(data: bytes, *, now: int, pinned: TrustStore | None = None) -> OpenedBundle:
    """Verify a bundle (module docstring, steps 1-6) and return it with what it carries.

    ``pinned``: what the node already trusts, if it has started before.  Then the bundle
    must name its network, and carry a root of its chain (one it accepted) or a newer
    one (the box's software and bundle were updated past a rotation; the node reaches it
    by ``TrustStore.update_root``, and nothing the bundle's URLs lead to is trusted but
    under the pinned chain); its expiry is not judged (see "Then pinned").  Without it
    (first start) an expired bundle is refused.  Raises
    ``WireError`` (malformed, oversize, bad URL), ``WrongTypeError``, ``SignatureError``,
    ``InvalidRootError``, ``ExpiredError`` or ``WrongNetworkError``; never anything else.
    """
    env = Envelope.from_wire(data, BUNDLE_LIMITS)
    if env.type != Bundle.TYPE:
        raise WrongTypeError(f"document of type {env.type!r} used where 'bundle' is required")
    bundle: Bundle = Bundle.from_payload(env.payload)  # read to learn the root; trusted below
    root = open_root(bundle.root)
    role = root.doc.roles[Bundle.ROLE]
    signers = env.verify(
        expected_type=Bundle.TYPE,
        keys=root.doc.keys,
        allowed=role.keys,
        threshold=role.threshold,
        role="root (of the bundle's own root)",
    )
    if bundle.network != root.doc.network:
        raise WrongNetworkError(
            f"bundle names network {bundle.network!r}, its root {root.doc.network!r}"
        )
    config: Signed[NetworkConfig] | None = None
    if bundle.network_config:
        config = open_network(bundle.network_config, root.doc)
    if pinned is None:  # first start: what ``TrustStore.from_root`` will demand, said now
        check_fresh(bundle, now, what=f"bundle of network {bundle.network!r}")
        check_fresh(root.doc, now, what=f"the bundle's root v{root.doc.version}")
    elif pinned.root.network != bundle.network:
        raise WrongNetworkError(
            f"bundle of network {bundle.network!r}, but this node belongs to "
            f"{pinned.root.network!r} (its stored root)"
        )
    elif root.digest not in pinned.root_digests and root.doc.version <= pinned.root.version:
        raise WrongNetworkError(
            f"bundle carries a root v{root.doc.version} of {bundle.network!r} this node "
            f"never accepted (it trusts v{pinned.root.version}): not its network's bundle"
        )
    return OpenedBundle(bundle=bundle, signers=signers, root=root, network_config=config)
