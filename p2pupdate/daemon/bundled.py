"""What a node takes from its network bundle (P11): ``p2pupdate node --bundle FILE``.

The bundle (``core.bundle``: root-signed, verified against the root it carries) gives a
node everything it needs to join with no other flag.  This module is the node's side:

* **where** it is when no ``--bundle`` is given (:func:`default_bundle_path`):
  ``/etc/p2pupdate/network.bundle`` as root, else
  ``$XDG_CONFIG_HOME/p2pupdate/network.bundle`` (``~/.config/...``), read when it exists
  and ``--trust-root`` is not given (a node given its trust root by hand is configured by
  hand, as before P11); a missing file changes nothing;
* **whether** it is used (:func:`open_node_bundle`): on a node's first start the bundle
  must open on its own (``open_bundle``: signatures, size, expiry); once the node holds a
  trust store, the bundle is judged against it (``pinned``): a bundle of another network,
  or carrying a root this node never accepted and not newer, is *ignored* with a log line
  (the node keeps running on what it holds, from the copy of the last bundle it accepted,
  ``STATE_DIR/network.bundle``, when there is one) -- never an exit;
* **the machine's LAN addresses** (:func:`lan_addresses`): where the bundle's zeroconf
  default announces the node.

What the bundle's values become in the node's options is ``options.apply_bundle``'s (one
table with the flags).  A bad bundle the launcher is told to use (a flag, or the default
file that is there) is one line and exit 2 before anything is written; the daemon, which
starts long after, falls back to the kept copy instead (the launcher checked the file;
it changed since).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..cli.common import UsageError, read_input
from ..core import bundle as bd
from ..core.documents import Root
from ..core.errors import ExpiredError, P2PUpdateError
from ..core.trust import STATE_LIMITS, TrustStore
from ..fsutil import atomic_write, read_limited
from .truststate import STORE_NAME

__all__ = [
    "KEPT_BUNDLE",
    "Bundled",
    "adopt_root",
    "default_bundle_path",
    "held_store",
    "keep_bundle",
    "lan_addresses",
    "open_node_bundle",
    "private_lan",
]

#: The copy of the last bundle the node accepted, in its state directory.
KEPT_BUNDLE: Final = "network.bundle"
#: RFC 1918: the ranges a home or office LAN uses.  (``ipaddress.is_private`` also counts
#: documentation and benchmark ranges, which no LAN announces on.)
PRIVATE_LANS: Final = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_SIOCGIFFLAGS: Final = 0x8913
_SIOCGIFADDR: Final = 0x8915
_IFF_UP: Final = 0x1
_IFF_LOOPBACK: Final = 0x8


def default_bundle_path(*, euid: int, env: Mapping[str, str], home: Path) -> Path:
    """Where ``p2pupdate node`` looks for a bundle when none is named (README "Running a
    node"): the system's for root, the user's configuration directory otherwise."""
    if euid == 0:
        return Path(bd.BUNDLE_FILE)
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "p2pupdate" / Path(bd.BUNDLE_FILE).name


def private_lan(address: str) -> bool:
    """An IPv4 address in an RFC 1918 range."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and any(ip in net for net in PRIVATE_LANS)


def lan_addresses() -> list[str]:
    """This machine's private-range IPv4 addresses, one per interface that is up (not
    loopback), in interface order.  Standard library only (``SIOCGIFADDR``: an
    interface's primary address); ``[]`` where the system cannot say."""
    out: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return out
    with sock:
        for name in names:
            request = struct.pack("256s", name.encode()[:15])
            try:
                flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, request), 16)[0]
                if not flags & _IFF_UP or flags & _IFF_LOOPBACK:
                    continue
                address = socket.inet_ntoa(fcntl.ioctl(sock, _SIOCGIFADDR, request)[20:24])
            except OSError:  # no IPv4 address on it
                continue
            if private_lan(address) and address not in out:
                out.append(address)
    return out


def held_store(state_dir: Path | None) -> TrustStore | None:
    """The trust store the node holds, read only; None when there is none or it cannot be
    read (the daemon rebuilds it: then the node is on its first start again)."""
    if state_dir is None:
        return None
    try:
        data = read_limited(state_dir / "trust" / STORE_NAME, STATE_LIMITS.max_bytes)
        return TrustStore.from_bytes(data)
    except (OSError, P2PUpdateError):
        return None


@dataclass(frozen=True, kw_only=True)
class Bundled:
    """The bundle a node runs on: ``opened`` (None: ignored, see ``notes``), its bytes and
    where they came from, and the trust store it was judged against (None: first start)."""

    opened: bd.OpenedBundle | None
    data: bytes | None
    source: Path | None
    pinned: TrustStore | None
    notes: tuple[str, ...] = ()

    @property
    def initial_root(self) -> bytes:
        """The root to start trusting from (trust on first use); once pinned, the store's
        own root is kept (``TrustFile.open`` uses this only to rebuild a broken store)."""
        if self.opened is not None:
            return self.opened.bundle.root
        assert self.pinned is not None  # an ignored bundle is ignored for a pinned store
        return self.pinned.root_bytes

    @property
    def pinned_root(self) -> Root:
        """The root the node trusts now: the bundle's on a first start, else the held one."""
        if self.pinned is not None:
            return self.pinned.root
        assert self.opened is not None
        return self.opened.root.doc

    @property
    def network_bytes(self) -> bytes | None:
        """The network document it carries (``--network-config`` when that is not given)."""
        if self.opened is None or not self.opened.bundle.network_config:
            return None
        return self.opened.bundle.network_config


class _Foreign(Exception):
    """A bundle fine on its own that is not for the network this node already trusts."""


def _judge(data: bytes, now: int, pinned: TrustStore | None) -> bd.OpenedBundle:
    try:
        return bd.open_bundle(data, now=now, pinned=pinned)
    except bd.WrongNetworkError as exc:
        if pinned is None:
            raise
        with contextlib.suppress(ExpiredError):  # a pinned node does not judge its age
            bd.open_bundle(data, now=now)  # disagrees with itself: raises, it is bad
        raise _Foreign(str(exc)) from None


def open_node_bundle(path: Path, *, state_dir: Path | None, now: int, strict: bool) -> Bundled:
    """The bundle at ``path`` as this node may use it (module docstring).

    ``strict`` (the launcher, before anything starts): a file that is not a good bundle
    -- unreadable, oversize, garbage, forged, expired on a first start -- raises
    ``UsageError`` (one line naming ``--bundle``).  Not strict (the daemon): such a file
    is a log line and the kept copy is used; without one, ``UsageError`` too.  A good
    bundle of another network than the one this node trusts is ignored either way."""
    pinned = held_store(state_dir)
    label = f"--bundle {path}"
    try:
        data = read_input(path, bd.BUNDLE_LIMITS.max_bytes)
        return Bundled(opened=_judge(data, now, pinned), data=data, source=path, pinned=pinned)
    except _Foreign as exc:
        problem = f"not this node's network ({exc})"
    except UsageError as exc:  # cannot be read, or too large
        if strict:
            raise UsageError(f"--bundle {exc}") from None
        problem = str(exc)
    except P2PUpdateError as exc:
        line = f"{label}: not a good network bundle ({exc.rule}: {exc})"
        if strict:
            raise UsageError(line) from None
        problem = f"not a good network bundle ({exc.rule}: {exc})"
    kept = state_dir / KEPT_BUNDLE if state_dir is not None else None
    if kept is not None and kept.is_file() and kept.absolute() != path.absolute():
        try:
            data = read_input(kept, bd.BUNDLE_LIMITS.max_bytes)
            return Bundled(
                opened=_judge(data, now, pinned),
                data=data,
                source=kept,
                pinned=pinned,
                notes=(f"{label}: {problem}; using the copy kept in {kept}",),
            )
        except (UsageError, P2PUpdateError, _Foreign):
            pass
    if pinned is None:  # nothing to fall back to and nothing held: the daemon cannot start
        raise UsageError(f"{label}: {problem}")
    return Bundled(
        opened=None,
        data=None,
        source=None,
        pinned=pinned,
        notes=(
            f"WARNING: {label}: {problem}; ignored: this node runs on the root it holds "
            f"(v{pinned.root.version} of {pinned.root.network!r}) with no replicas",
        ),
    )


def adopt_root(
    trust: Callable[[bytes, int], object],
    held: TrustStore,
    found: Bundled,
    *,
    now: int,
    log: Callable[[str], None],
) -> None:
    """A bundle carrying a newer root than the one held: walked to through the usual
    rotation (``trust``: ``TrustFile.update_root``: signed by the held root's keys and its
    own, one version up).  An older one, or one that does not rotate, is a log line; the
    held root stays (what the bundle's replicas send is verified under it)."""
    opened = found.opened
    if opened is None:
        return
    new, old = opened.root.doc, held.root
    if opened.root.digest in held.root_digests:
        if new.version < old.version:
            log(f"bundle: carries root v{new.version}; this node holds v{old.version}: kept")
        return
    try:
        trust(opened.bundle.root, now)
    except P2PUpdateError as exc:
        log(f"bundle: its root v{new.version} not taken ({exc.rule}: {exc}); "
            f"keeping v{old.version}")  # fmt: skip
        return
    log(f"trust: root v{new.version} from the bundle accepted (was v{old.version})")


def keep_bundle(state_dir: Path, found: Bundled, log: Callable[[str], None]) -> None:
    """The bundle in use, kept as ``STATE_DIR/network.bundle`` (atomically): what the node
    falls back to when a later file is bad or of another network."""
    if found.opened is None or found.data is None or found.source is None:
        return
    path = state_dir / KEPT_BUNDLE
    if found.source.absolute() == path.absolute():
        return
    try:
        if not path.is_file() or path.read_bytes() != found.data:
            atomic_write(path, found.data, mode=0o644)
    except OSError as exc:
        log(f"cannot keep the bundle in {state_dir} ({exc.strerror or exc})")
