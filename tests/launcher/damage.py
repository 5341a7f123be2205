"""The kinds of damage the corrupt-state tests do to a state file, in place (as a disk or a
person would: not atomically)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Final

#: truncated to 0, truncated to half, replaced by random bytes, garbage appended.
KINDS: Final = ("empty", "half", "random", "appended")


def damage(path: Path, kind: str, rng: random.Random) -> None:
    """Damage ``path`` (a file, a missing file, or a symlink: replaced by a regular file)."""
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    if path.is_symlink():
        data = os.readlink(path).encode()
        path.unlink()
    if kind == "empty":
        new = b""
    elif kind == "half":
        new = data[: len(data) // 2]
    elif kind == "random":
        new = rng.randbytes(max(64, len(data)))
    elif kind == "appended":
        new = data + b"\x93garbage" + rng.randbytes(40)
    else:  # pragma: no cover
        raise ValueError(kind)
    if new == data:  # e.g. half of an empty file: still make it wrong
        new = data + b"\x00\x01"
    path.write_bytes(new)
