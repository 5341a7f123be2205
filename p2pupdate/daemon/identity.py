"""The node's identity key: ``STATE_DIR/identity.pem``, and a second copy beside it.

The key names the node: named scopes list its key id, gossip links and coordinator
reports are signed with it (README "Trust model").  Losing it silently would make a node
somebody else, so it is kept twice, each written atomically (``fsutil.atomic_write``):

* ``identity.pem``       the key (PKCS#8 PEM, mode 0600);
* ``identity.pem.copy``  the same key, after a first line ``# node <key id>`` (so even a
  damaged copy usually still says whose it was).

Every start reads both.  A file that does not hold exactly the canonical bytes of the key
(truncated, garbled, garbage appended) is moved aside as ``NAME.bad-N`` and rewritten from
the other; a node from before the copy existed gets it written.  Only when neither holds a
key is a new one made -- and that is said loudly, once, with what it costs: named scopes no
longer name this node, and its old id (when a damaged file or the status still says it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..core import crypto
from ..core.errors import P2PUpdateError
from ..fsutil import atomic_write, quarantine, read_limited

__all__ = ["COPY", "IDENTITY", "load_identity"]

IDENTITY: Final = "identity.pem"
COPY: Final = "identity.pem.copy"
_NODE_LINE: Final = re.compile(rb"# node ([0-9a-f]{64})\n")


def _copy_bytes(key: crypto.SigningKey) -> bytes:
    return f"# node {key.keyid}\n".encode() + crypto.private_key_to_pem(key)


def _canonical(name: str, key: crypto.SigningKey) -> bytes:
    return _copy_bytes(key) if name == COPY else crypto.private_key_to_pem(key)


def _read(path: Path) -> tuple[crypto.SigningKey | None, bytes | None]:
    """(the key, if the file holds exactly its canonical bytes; the raw bytes, if any)."""
    try:
        data = read_limited(path, crypto.MAX_PEM_BYTES)
    except FileNotFoundError:
        return None, None
    except OSError:  # a directory, unreadable, too large: damaged
        return None, b""
    try:
        key = crypto.private_key_from_pem(data)
    except P2PUpdateError:
        return None, data
    return (key if data == _canonical(path.name, key) else None), data


def _old_id(damaged: list[bytes], state_dir: Path) -> str:
    """The id a lost key had, if a damaged file or the last status still says it."""
    for data in damaged:
        m = _NODE_LINE.search(data)
        if m:
            return m.group(1).decode()
    try:
        status = json.loads(read_limited(state_dir / "status", 256 * 1024))
        node = status["gossip"]["node"]
        if isinstance(node, str) and re.fullmatch(r"[0-9a-f]{64}", node):
            return node
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "unknown (no damaged file or status names it)"


def load_identity(state_dir: Path, log: Callable[[str], None] | None = None) -> crypto.SigningKey:
    """The node's key, repaired from its second copy if one of the two is damaged; a new
    key on a first start (quietly) or when both are lost (loudly)."""
    say = log if log is not None else (lambda _m: None)
    paths = {IDENTITY: state_dir / IDENTITY, COPY: state_dir / COPY}
    found = {name: _read(path) for name, path in paths.items()}
    keys = [k for k, _ in found.values() if k is not None]
    damaged = [data for k, data in found.values() if k is None and data is not None]
    if keys:
        key = keys[0]  # identity.pem first: if the two ever disagree, it is the one in use
    elif damaged:
        key = crypto.SigningKey.from_seed(os.urandom(32))
        old = _old_id(damaged, state_dir)
        say(
            f"IDENTITY LOST: {IDENTITY} and {COPY} are both unusable; made a new key, this "
            f"node is now {key.keyid}. Named scopes no longer name this node (its old id was "
            f"{old}): name the new id in them again"
        )
    else:
        key = crypto.SigningKey.from_seed(os.urandom(32))  # first start
    for name, path in paths.items():
        have, data = found[name]
        if have is not None and have.keyid == key.keyid:
            continue
        aside = None
        if data is not None or path.is_symlink():
            aside = quarantine(path)
        try:
            atomic_write(path, _canonical(name, key), mode=0o600)
        except OSError as exc:  # a full disk: the key is in memory, the other file holds it
            say(f"cannot write {name} ({exc.strerror or exc}); the node runs on its key")
            continue
        if aside is not None and keys:
            say(f"{name} damaged: moved to {aside.name}, rewritten from the other copy")
        elif data is None and keys:
            say(f"wrote {name}: the second copy of this node's key")
    return key
