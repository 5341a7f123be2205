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

Proof of work (P10, ``core.admission``): in an ``open`` network whose document asks for
``pow_bits``, a new key is made with ``admission.make_pow_key`` (about 2^bits tries; the
log says the cost before and after).  An existing key is never replaced because it falls
short -- that would silently make the node somebody else: ``weak_identity`` says what the
replicas will do with it and how to fix it, and only ``upgrade=True``
(``p2pupdate node --upgrade-identity``) replaces a key that falls short, keeping the old
one as ``identity.pem.old-N``.  A key that meets the difficulty is kept even then, so the
flag may stay on in a service unit.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from ..core import admission, crypto
from ..core.errors import P2PUpdateError
from ..fsutil import atomic_write, quarantine, read_limited

__all__ = ["COPY", "IDENTITY", "UPGRADE_FLAG", "load_identity", "peek_node_id", "weak_identity"]

IDENTITY: Final = "identity.pem"
COPY: Final = "identity.pem.copy"
_NODE_LINE: Final = re.compile(rb"# node ([0-9a-f]{64})\n")
#: The flag that replaces a key short of the network's proof of work (and nothing else).
UPGRADE_FLAG: Final = "--upgrade-identity"
#: Keys timed before the cost of a proof of work is estimated (their tries count).
_CALIBRATION_TRIES: Final = 256


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


def peek_node_id(state_dir: Path) -> str | None:
    """The id of the key in ``state_dir`` (either copy), read only: nothing is repaired or
    written (``p2pupdate node`` checks its options before anything starts).  None: none."""
    for name in (IDENTITY, COPY):
        key, _data = _read(state_dir / name)
        if key is not None:
            return key.keyid
    return None


def weak_identity(node: str, pow_bits: int) -> str | None:
    """Why this node's id will be refused by an ``open`` network's replicas asking for
    ``pow_bits`` of proof of work, and how to fix it; None when it meets the difficulty."""
    if admission.pow_ok(node, pow_bits):
        return None
    return (
        f"this node's key ({node[:16]}...) has {admission.leading_zero_bits(node)} leading "
        f"zero bits; the network asks for {pow_bits}: replicas will refuse its hello "
        f"(admission/proof-of-work). To make a key that meets it, start the node once with "
        f"{UPGRADE_FLAG} (the old key is kept as {IDENTITY}.old-N; named scopes must then "
        "name the new id)"
    )


def _pow_key(
    bits: int, say: Callable[[str], None], timer: Callable[[], float]
) -> crypto.SigningKey:
    """A new key with ``bits`` of proof of work (``make_pow_key``), its cost logged."""

    def seeds() -> bytes:
        return os.urandom(32)

    if bits <= 0:
        return crypto.SigningKey.from_seed(seeds())
    start = timer()
    try:  # the first tries time this machine; they count like any other
        key, tries = admission.make_pow_key(bits, seeds, max_tries=_CALIBRATION_TRIES)
    except ValueError:
        key, tries = None, _CALIBRATION_TRIES
    rate = tries / max(timer() - start, 1e-6)
    say(
        f"making a node key with {bits} bits of proof of work: ~2^{bits} tries, about "
        f"{2**bits / rate:.1f} s at {rate:.0f} tries/s"
    )
    if key is None:
        key, more = admission.make_pow_key(bits, seeds)
        tries += more
    say(
        f"made node key {key.keyid[:16]}... with {admission.leading_zero_bits(key.keyid)} "
        f"bits of proof of work: {tries} tries in {timer() - start:.1f} s"
    )
    return key


def _old_name(state_dir: Path) -> Path:
    """``identity.pem.old-N`` with ``N`` one more than the highest there."""
    pattern = re.compile(re.escape(IDENTITY) + r"\.old-([0-9]{1,9})$")
    taken = [0]
    for sibling in state_dir.iterdir():
        m = pattern.match(sibling.name)
        if m:
            taken.append(int(m.group(1)))
    return state_dir / f"{IDENTITY}.old-{max(taken) + 1}"


def load_identity(
    state_dir: Path,
    log: Callable[[str], None] | None = None,
    *,
    pow_bits: int = 0,
    upgrade: bool = False,
    timer: Callable[[], float] = time.perf_counter,
) -> crypto.SigningKey:
    """The node's key, repaired from its second copy if one of the two is damaged; a new
    key on a first start (quietly, but for the cost of ``pow_bits`` of proof of work) or
    when both are lost (loudly).  ``upgrade``: a key short of ``pow_bits`` is replaced
    (the old one kept as ``identity.pem.old-N``); without it, it is kept (module
    docstring).  ``timer`` only measures the proof of work for the log."""
    say = log if log is not None else (lambda _m: None)
    paths = {IDENTITY: state_dir / IDENTITY, COPY: state_dir / COPY}
    found = {name: _read(path) for name, path in paths.items()}
    keys = [k for k, _ in found.values() if k is not None]
    damaged = [data for k, data in found.values() if k is None and data is not None]
    replaced: crypto.SigningKey | None = None
    if keys and upgrade and not admission.pow_ok(keys[0].keyid, pow_bits):
        replaced = keys[0]
        key = _pow_key(pow_bits, say, timer)
        aside = _old_name(state_dir)
        atomic_write(aside, crypto.private_key_to_pem(replaced), mode=0o600)  # before the rest
        say(
            f"{UPGRADE_FLAG}: replaced node key {replaced.keyid} ({aside.name} keeps it) by "
            f"{key.keyid}: named scopes must name the new id"
        )
        keys = []  # both files are rewritten below
    elif keys:
        key = keys[0]  # identity.pem first: if the two ever disagree, it is the one in use
    elif damaged:
        key = _pow_key(pow_bits, say, timer)
        old_id = _old_id(damaged, state_dir)
        say(
            f"IDENTITY LOST: {IDENTITY} and {COPY} are both unusable; made a new key, this "
            f"node is now {key.keyid}. Named scopes no longer name this node (its old id was "
            f"{old_id}): name the new id in them again"
        )
    else:
        key = _pow_key(pow_bits, say, timer)  # first start
    for name, path in paths.items():
        have, data = found[name]
        if have is not None and have.keyid == key.keyid:
            continue
        aside_bad = None
        kept_old = replaced is not None and have is not None and have.keyid == replaced.keyid
        if (data is not None or path.is_symlink()) and not kept_old:
            aside_bad = quarantine(path)  # the replaced key is in identity.pem.old-N already
        try:
            atomic_write(path, _canonical(name, key), mode=0o600)
        except OSError as exc:  # a full disk: the key is in memory, the other file holds it
            if replaced is not None and name == IDENTITY:  # nothing changed on disk yet
                say(f"cannot write {name} ({exc.strerror or exc}): keeping the old key")
                return replaced
            say(f"cannot write {name} ({exc.strerror or exc}); the node runs on its key")
            continue
        if aside_bad is not None and keys:
            say(f"{name} damaged: moved to {aside_bad.name}, rewritten from the other copy")
        elif data is None and keys:
            say(f"wrote {name}: the second copy of this node's key")
    return key
