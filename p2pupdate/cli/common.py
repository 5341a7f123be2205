"""What the command-line tools share: exit codes, one-line errors, argument parsing.

``p2pupdate`` (:mod:`p2pupdate.cli.commands`), ``p2pupdate-coordinator``
(:mod:`coordinator.cli`) and the daemon's own parser (:mod:`p2pupdate.daemon.main`) import
these from here, and only from here: this module imports nothing but the core, the file
helpers and the error hierarchy, so the coordinator can use it without loading the node.

Exit codes (every command): 0 ok, 1 rejected / verification failed, 2 usage or input
mistake.  A user mistake is never a traceback: it is one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, NoReturn

from ..core import crypto, wire
from ..core import documents as docs
from ..core.errors import KeyFileError, OversizeError, P2PUpdateError
from ..errors import UsageFault
from ..fsutil import FileTooLargeError, atomic_write, read_open_limited, temp_path

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2


class UsageError(UsageFault):
    """A mistake in what the user asked for (bad path, bad value): exit 2."""

    rule = "usage"


class Rejected(UsageFault):
    """What the user asked for was refused: exit 1.

    A document that does not verify, a replica that says no.  Nothing on this machine is
    broken and the command did what it was told; the person at the keyboard has to act on
    the refusal, so it is a :class:`~p2pupdate.errors.UsageFault`.
    """

    rule = "rejected"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run(prog: str, build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    parser = build()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = handler(args)
        return code
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Rejected as exc:
        print(f"{prog}: rejected: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except P2PUpdateError as exc:
        print(f"{prog}: rejected: {exc.rule}: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


# -- values -----------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d{1,12})([smhdw]?)$")
#: Longest lifetime any document may be given: 100 years.
MAX_DURATION = 100 * 365 * 86400
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> int:
    """'90', '90s', '15m', '12h', '7d', '2w' -> seconds."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 12h, 7d")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than 100 years")
    return seconds


_SIZE = re.compile(r"^(\d+)\s*(|b|k|kb|kib|m|mb|mib)$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
}


def size(text: str) -> int:
    """'262144', '256KiB', '1MiB' -> bytes (binary units)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 262144, 256KiB, 1MiB")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def pool_name(text: str) -> str:
    """A pool name (``node --pool``, ``member --pool``, ``bundle --pool``): 1-64 printable
    characters, as the status report's and the member document's schemas allow."""
    if not 1 <= len(text) <= 64 or not text.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r}: a pool name is 1-64 printable characters")
    return text


def int_range(low: int, high: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an int in ``[low, high]`` (no upper bound when ``high`` is None)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if v < low or (high is not None and v > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bounds}")
        return v

    return parse


positive_int = int_range(1)


def sha256_hex(text: str) -> str:
    t = text.strip().lower()
    if len(t) != 64 or any(c not in "0123456789abcdef" for c in t):
        raise argparse.ArgumentTypeError(f"{text!r} is not a sha256 (64 hex characters)")
    return t


#: ``--now``: unix seconds, in the range every document's times are (``documents.MAX_TIME``).
now_arg = int_range(0, docs.MAX_TIME, "unix seconds")


def wall_clock() -> int:
    return int(time.time())


# -- files ------------------------------------------------------------------------------

MAX_INPUT_DOC = 1024 * 1024 + 4096

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def regular_input(path: str | Path) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (or a link to one).

    Anything else is a usage mistake, refused before a byte is read: a directory, and a
    FIFO or a device, which could block or never end (``release /dev/zero``).  The file
    is opened without blocking (a FIFO with no writer opens at once) and judged by what
    was opened, so a rename between a check and the open cannot slip a device in.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{path}: is a directory")
        if not stat.S_ISREG(mode):
            raise UsageError(f"{path}: {_kind(mode)}, not a regular file; refusing to read it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | Path, limit: int = MAX_INPUT_DOC) -> bytes:
    """The bytes of the regular file ``path``; larger than ``limit`` is a usage mistake."""
    with regular_input(path) as f:
        try:
            return read_open_limited(f, path, limit)
        except FileTooLargeError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc}") from None


def read_document(path: str | Path) -> bytes:
    """The bytes of a signed document, for the core to judge.

    A file larger than any document may be (``wire.DOCUMENT_LIMITS``) is the document's
    fault, not the user's: it raises the core's :class:`~p2pupdate.core.errors.OversizeError`
    (``verify`` shows it as a rejected document) without being read.
    """
    limit = wire.DOCUMENT_LIMITS.max_bytes
    with regular_input(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise OversizeError(f"{size} bytes exceeds the limit of {limit}")
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew while we looked
        raise OversizeError(f"more than {limit} bytes")
    return data


def load_signing_key(path: str | Path) -> crypto.SigningKey:
    data = read_input(path, crypto.MAX_PEM_BYTES)
    try:
        return crypto.private_key_from_pem(data)
    except KeyFileError as exc:
        raise UsageError(f"{path}: {exc}") from None


def safe_output(path: str | Path, *, exclusive: bool = False) -> Path:
    """``path`` checked as a place to write a new file (before anything is made or signed).

    Its directory must exist.  Whatever is there must be a regular file (or a link to
    one): writing replaces the path by a new regular file, which must never happen to a
    FIFO, a socket or a device (as root, ``-o /dev/null`` would replace ``/dev/null``).
    With ``exclusive``, nothing may be there at all (keys are never overwritten).  A name
    too long for the file system, counting the temporary name the write goes through, is
    refused here rather than half-way through writing several files.
    """
    p = Path(path)
    parent = p.parent
    try:
        if not parent.is_dir():
            what = "not a directory" if parent.exists() else "directory does not exist"
            raise UsageError(f"{parent}: {what}")
        st = os.stat(p)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UsageError(f"cannot write {p}: {exc.strerror or exc}") from None
    else:
        if exclusive:
            raise UsageError(f"{p} already exists; refusing to overwrite it")
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"cannot write {p}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(
                f"{p}: {_kind(st.st_mode)}, not a regular file; refusing to replace it"
            )
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    staged = len(os.fsencode(temp_path(p).name))
    if staged > name_max:
        longest = name_max - (staged - len(os.fsencode(p.name)))
        raise UsageError(f"cannot write {p}: file name too long (at most {longest} bytes here)")
    return p


def write_output(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    p = safe_output(path)
    try:
        atomic_write(p, data, mode=mode)
    except OSError as exc:
        raise UsageError(f"cannot write {p}: {exc.strerror or exc}") from None
