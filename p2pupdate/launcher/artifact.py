"""Build artifacts of ourselves, and unpack them without trusting them.

**Build** (``scripts/build-artifact``, and the launcher's first-start bootstrap): a gzipped
tar of the package source trees ``p2pupdate/`` and ``coordinator/`` with
``p2pupdate/_version.py`` rewritten to another version string.  The bytes depend only on the
files' contents, names and executable bits: entries sorted, mtime 0, uid/gid 0, no user
names, fixed modes, gzip header without name or time.  So the same tree and version always
give the same sha256, on any machine -- which is what lets a release record name it.

**Unpack** (staging ``slots/<sha>/``): the artifact is read with a size cap, its sha256 is
checked *before* the archive is opened, and then every entry must pass before it is
written:

* a relative path of plain components (no ``/`` prefix, no ``..`` or ``.``, no empty part,
  no backslash or NUL), under one of the allowed top-level directories, not too long/deep;
* a regular file or a directory -- no symlinks, hard links, devices, FIFOs or sparse files,
  so nothing written can point outside the slot;
* within the per-file, total-size and entry-count caps (checked against the header *before*
  reading the data, and again while copying, so a gzip bomb stops at the cap);
* not a duplicate of an earlier entry.

Files are created with ``O_EXCL | O_NOFOLLOW`` inside a fresh temporary directory, fsynced,
and the directory tree is fsynced before it is renamed into place (``state.stage_slot``).
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

from ..errors import LocalStateFault, PeerFault
from ..fsutil import FileTooLargeError, fsync_dir, read_limited

#: The top-level directories an artifact may contain (the two packages of this project).
PACKAGES: Final = ("p2pupdate", "coordinator")
#: The file whose ``__version__`` the build rewrites.
VERSION_FILE: Final = "p2pupdate/_version.py"
_VERSION_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_VERSION_IN_FILE: Final = re.compile(r"""__version__\s*=\s*["']([^"'\n]{1,64})["']""")
_SKIP_DIRS: Final = frozenset({"__pycache__"})
_SKIP_SUFFIXES: Final = (".pyc", ".pyo", ".tmp", ".swp")


class ArtifactError(PeerFault):
    """An artifact that must not be installed: wrong hash, unsafe entry, over a cap.

    Whose fault: whoever produced or delivered the artifact (a peer, the origin, a file
    drop), never the local state -- hence ``PeerFault``.
    """

    rule = "bad-artifact"


class BuildError(LocalStateFault):
    """The source tree cannot be built into an artifact (a local mistake)."""

    rule = "build"


class UnpackLimits(NamedTuple):
    """Caps for one artifact; every one is checked before the bytes it bounds are read.

    A ``NamedTuple``, like the launcher's other records: ``dataclasses`` (with ``inspect``,
    ``ast``, ``dis``...) would cost the launcher process ~1.3 MB of its RSS (README "A small
    box"); give the fields by name.
    """

    max_artifact_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 128 * 1024 * 1024
    max_file_bytes: int = 32 * 1024 * 1024
    max_entries: int = 20_000
    max_path_bytes: int = 512
    max_depth: int = 32


DEFAULT_LIMITS: Final = UnpackLimits()


# -- build ----------------------------------------------------------------------------------


def check_version(version: str) -> str:
    """A version string we are willing to write into ``_version.py``."""
    if not _VERSION_RE.match(version):
        raise BuildError(
            f"version {version!r}: use 1-64 characters from A-Z a-z 0-9 . _ + - "
            "(starting with a letter or digit)"
        )
    return version


def version_file_text(version: str) -> bytes:
    return f'__version__ = "{check_version(version)}"\n'.encode()


def read_version(package_dir: Path) -> str | None:
    """The ``__version__`` of an unpacked tree, without importing it (None if unreadable)."""
    try:
        return version_in(read_limited(package_dir / "_version.py", 4096))
    except (OSError, FileTooLargeError):
        return None


def version_in(version_file: bytes) -> str | None:
    """The ``__version__`` a ``_version.py``'s bytes set (None if they set none)."""
    m = _VERSION_IN_FILE.search(version_file[:4096].decode("utf-8", "replace"))
    return m.group(1) if m else None


def _walk(root: Path, top: str) -> Iterator[tuple[str, Path]]:
    """``(archive name, path)`` of ``root/top`` and every directory and file under it."""
    for dirpath, dirnames, filenames in os.walk(root / top):
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                raise BuildError(f"{here / d}: a symlink (links are not built)")
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        rel = here.relative_to(root).as_posix()
        yield rel, here
        for f in sorted(filenames):
            if not f.startswith(".") and not f.endswith(_SKIP_SUFFIXES):
                yield f"{rel}/{f}", here / f


def _entries(root: Path, packages: tuple[str, ...]) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for top in packages:
        if (root / top).is_dir():
            found.extend(_walk(root, top))
    found.sort(key=lambda e: e[0])
    return found


def build_artifact(
    root: Path, version: str | None = None, *, packages: tuple[str, ...] = PACKAGES
) -> bytes:
    """The deterministic ``.tar.gz`` of ``root/p2pupdate`` (+ ``root/coordinator``).

    ``version`` replaces ``p2pupdate/_version.py``; None keeps the tree's own.
    """
    if version is not None:
        check_version(version)
    if not (root / "p2pupdate" / "__init__.py").is_file():
        raise BuildError(f"{root}: no p2pupdate/__init__.py here (use the repository root)")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in _entries(root, packages):
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
                if name == VERSION_FILE and version is not None:
                    data = version_file_text(version)
                info.type = tarfile.REGTYPE
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                raise BuildError(f"{path}: not a regular file or directory (links are not built)")
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


# -- verify and unpack --------------------------------------------------------------------


def _builtin_sha256() -> Callable[[bytes], Any]:
    """The interpreter's own sha256 (``_sha2`` from Python 3.12, ``_sha256`` before), not
    OpenSSL's through ``hashlib``: loading libcrypto costs the launcher ~4 MB of its RSS
    (README "A small box") for a speed that artifacts of a few MB do not need.  A build
    without it (built-in hashes disabled) falls back to ``hashlib``."""
    for name in ("_sha2", "_sha256"):
        try:
            return importlib.import_module(name).sha256  # type: ignore[no-any-return]
        except (ImportError, AttributeError):
            continue
    import hashlib  # pragma: no cover - CPython ships one of the above

    return hashlib.sha256  # pragma: no cover


_sha256: Final = _builtin_sha256()


def sha256_hex(data: bytes) -> str:
    digest: str = _sha256(data).hexdigest()
    return digest


def read_artifact(path: Path, expected_sha256: str, limits: UnpackLimits = DEFAULT_LIMITS) -> bytes:
    """The artifact's bytes, only if their sha256 is ``expected_sha256``."""
    try:
        data = read_limited(path, limits.max_artifact_bytes)
    except FileTooLargeError as exc:
        raise ArtifactError(f"artifact too large: {exc}") from None
    return check_artifact(data, expected_sha256)


def check_artifact(data: bytes, expected_sha256: str) -> bytes:
    actual = sha256_hex(data)
    if actual != expected_sha256:
        raise ArtifactError(f"artifact sha256 is {actual}, expected {expected_sha256}")
    return data


def _safe_parts(name: str, limits: UnpackLimits, allowed_top: tuple[str, ...]) -> tuple[str, ...]:
    if not name or len(name.encode("utf-8", "surrogateescape")) > limits.max_path_bytes:
        raise ArtifactError(f"entry {name[:80]!r}: empty or longer than {limits.max_path_bytes} B")
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise ArtifactError(f"entry {name[:80]!r}: absolute path, backslash or NUL")
    parts = tuple(name.rstrip("/").split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(f"entry {name[:80]!r}: empty, '.' or '..' path component")
    if len(parts) > limits.max_depth:
        raise ArtifactError(f"entry {name[:80]!r}: deeper than {limits.max_depth}")
    if parts[0] not in allowed_top:
        raise ArtifactError(f"entry {name[:80]!r}: outside {', '.join(allowed_top)}")
    return parts


def unpack_into(
    data: bytes,
    dest: Path,
    *,
    limits: UnpackLimits = DEFAULT_LIMITS,
    allowed_top: tuple[str, ...] = PACKAGES,
    on_entry: Callable[[int], None] | None = None,
) -> int:
    """Unpack a verified artifact into the empty directory ``dest``; return the entry count.

    Raises ``ArtifactError`` at the first unsafe entry (``dest`` is then partly written: the
    caller unpacks into a temporary directory and deletes it on failure).  ``on_entry`` is
    called with the running count after each entry (fault injection, progress).
    """
    if any(dest.iterdir()):
        raise ArtifactError(f"{dest}: unpack target is not empty")
    seen: set[tuple[str, ...]] = set()
    total = 0
    count = 0
    dirs: list[Path] = [dest]
    raw = gunzip_limited(data, limits.max_total_bytes + (limits.max_entries + 2) * 3 * 512)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"not a tar archive: {exc}") from None
    try:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise ArtifactError(f"corrupt archive after {count} entries: {exc}") from None
            if member is None:
                break
            count += 1
            if count > limits.max_entries:
                raise ArtifactError(f"more than {limits.max_entries} entries")
            parts = _safe_parts(member.name, limits, allowed_top)
            if parts in seen:
                raise ArtifactError(f"entry {member.name!r} appears twice")
            seen.add(parts)
            target = dest.joinpath(*parts)
            try:
                total = _extract(tar, member, target, dirs, total, limits)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise ArtifactError(
                    f"entry {member.name!r} conflicts with an earlier entry"
                ) from None
            if on_entry is not None:
                on_entry(count)
    finally:
        tar.close()
    if not (dest / "p2pupdate" / "__init__.py").is_file():
        raise ArtifactError("artifact has no p2pupdate/__init__.py")
    for d in sorted({*dirs, *(p for p in dest.rglob("*") if p.is_dir())}, reverse=True):
        fsync_dir(d)
    return count


def _extract(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    target: Path,
    dirs: list[Path],
    total: int,
    limits: UnpackLimits,
) -> int:
    """Write one checked entry; return the new running total of file bytes."""
    if member.isdir():
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        dirs.append(target)
        return total
    if not member.isreg() or member.issparse():
        raise ArtifactError(
            f"entry {member.name!r}: only regular files and directories are allowed "
            f"(type {member.type!r})"
        )
    if member.size > limits.max_file_bytes:
        raise ArtifactError(
            f"entry {member.name!r}: {member.size} B over the per-file cap {limits.max_file_bytes}"
        )
    if total + member.size > limits.max_total_bytes:
        raise ArtifactError(f"unpacked size over the cap {limits.max_total_bytes}")
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    _write_member(tar, member, target)
    return total + member.size


def gunzip_limited(data: bytes, cap: int) -> bytes:
    """Decompress one gzip member, refusing more than ``cap`` bytes (a gzip bomb stops here).

    The tar is parsed from the result, so nothing in it (a huge pax header, say) can make
    the parser read more than ``cap`` bytes.
    """
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    out = bytearray()
    pos = 0
    try:
        while not d.eof:
            if d.unconsumed_tail:
                chunk = d.unconsumed_tail
            elif pos < len(data):
                chunk, pos = data[pos : pos + (1 << 16)], pos + (1 << 16)
            else:
                raise ArtifactError("truncated gzip stream")
            # max_length >= 1 always (0 would mean "unlimited"); input beyond it waits in
            # unconsumed_tail, so at most cap + 1 bytes are ever produced.
            out += d.decompress(chunk, cap + 1 - len(out))
            if len(out) > cap:
                raise ArtifactError(f"decompresses to more than {cap} bytes")
    except zlib.error as exc:
        raise ArtifactError(f"not a gzip file: {exc}") from None
    if d.unused_data or pos < len(data):
        raise ArtifactError("bytes after the gzip stream")
    return bytes(out)


def artifact_files(
    data: bytes, *, limits: UnpackLimits = DEFAULT_LIMITS, allowed_top: tuple[str, ...] = PACKAGES
) -> dict[str, tuple[bytes, int]]:
    """Every regular file of a verified artifact: ``{path: (bytes, mode)}``, read in memory
    under the same caps as ``unpack_into`` (what a slot's files must be, and where a
    damaged one is restored from)."""
    raw = gunzip_limited(data, limits.max_total_bytes + (limits.max_entries + 2) * 3 * 512)
    out: dict[str, tuple[bytes, int]] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for count, member in enumerate(tar, 1):
                if count > limits.max_entries:
                    raise ArtifactError(f"more than {limits.max_entries} entries")
                parts = _safe_parts(member.name, limits, allowed_top)
                if member.isdir():
                    continue
                if not member.isreg() or member.size > limits.max_file_bytes:
                    raise ArtifactError(f"entry {member.name!r}: not a file within the caps")
                total += member.size
                if total > limits.max_total_bytes:
                    raise ArtifactError(f"unpacked size over the cap {limits.max_total_bytes}")
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members have a file object
                    raise ArtifactError(f"entry {member.name!r}: no data")
                out["/".join(parts)] = (source.read(), 0o755 if member.mode & 0o111 else 0o644)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"corrupt archive: {exc}") from None
    return out


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    if source is None:  # pragma: no cover - isreg() members always have a file object
        raise ArtifactError(f"entry {member.name!r}: no data")
    mode = 0o755 if member.mode & 0o111 else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, mode)
    try:
        remaining = member.size
        while remaining > 0:
            block = source.read(min(remaining, 1 << 20))
            if not block:
                raise ArtifactError(f"entry {member.name!r}: truncated")
            remaining -= len(block)
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view) :]
        if source.read(1):  # pragma: no cover - tarfile bounds the member's reader
            raise ArtifactError(f"entry {member.name!r}: longer than its header says")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(target, mode)  # the umask filtered O_CREAT's mode
