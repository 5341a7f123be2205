"""Build artifacts of ourselves, and unpack them without trusting them.

**Build** (``scripts/build-artifact``, and the launcher's first-start bootstrap): a tar
(gzipped, or plain: what content-defined chunks cut; a reader tells them by magic) of the
package source trees ``p2pupdate/`` and ``coordinator/`` with ``p2pupdate/_version.py``
rewritten to another version string.  The bytes depend only on the
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
from typing import IO, Any, Final, NamedTuple

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


def _code_files(
    root: Path, version: str | None, packages: tuple[str, ...]
) -> dict[str, tuple[bytes, int] | None]:
    """Our own source: ``{archive name: (bytes, mode)}``, None for a directory."""
    out: dict[str, tuple[bytes, int] | None] = {}
    for name, path in _entries(root, packages):
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode):
            out[name] = None
        elif stat.S_ISREG(st.st_mode):
            data = path.read_bytes()
            if name == VERSION_FILE and version is not None:
                data = version_file_text(version)
            out[name] = (data, 0o755 if st.st_mode & 0o111 else 0o644)
        else:
            raise BuildError(f"{path}: not a regular file or directory (links are not built)")
    return out


def build_tar(
    root: Path,
    version: str | None = None,
    *,
    packages: tuple[str, ...] = PACKAGES,
    deps: Deps | None = None,
) -> bytes:
    """The deterministic, *uncompressed* tar of a build (what content-defined chunks cut).

    Without ``deps``: ``root/p2pupdate`` (+ ``root/coordinator``).  With ``deps`` (a
    self-contained build, ``Deps.collect``): also every runtime dependency's files under
    ``deps/`` and the build manifest ``deps/SLOT.json``.  ``version`` replaces
    ``p2pupdate/_version.py``; None keeps the tree's own.
    """
    if version is not None:
        check_version(version)
    if not (root / "p2pupdate" / "__init__.py").is_file():
        raise BuildError(f"{root}: no p2pupdate/__init__.py here (use the repository root)")
    files = _code_files(root, version, packages)
    if deps is not None:
        files.update(deps.files)
        files[MANIFEST_FILE] = (deps.manifest(version or read_version(root / "p2pupdate")), 0o644)
        for name in list(files):  # every parent directory of a dependency file, once
            parts = name.split("/")
            for depth in range(1, len(parts)):
                files.setdefault("/".join(parts[:depth]), None)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            entry = files[name]
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                data, info.mode = entry
                info.type = tarfile.REGTYPE
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def build_artifact(
    root: Path,
    version: str | None = None,
    *,
    packages: tuple[str, ...] = PACKAGES,
    deps: Deps | None = None,
) -> bytes:
    """The deterministic ``.tar.gz`` of ``build_tar`` (gzip level 9 for our code alone, 6
    for a self-contained build, whose ~200 MB level 9 would take minutes for ~1% less)."""
    level = 9 if deps is None else 6
    return gzip.compress(
        build_tar(root, version, packages=packages, deps=deps), compresslevel=level, mtime=0
    )


# -- self-contained builds: the runtime dependencies, from the build environment ----------


#: Where a self-contained slot keeps its dependencies (the daemon's ``sys.path`` is the
#: slot and ``slot/deps``), and the build manifest in it.
DEPS_DIR: Final = "deps"
MANIFEST_FILE: Final = "deps/SLOT.json"
#: The top-level directories of a self-contained slot (``unpack_into(allowed_top=...)``).
SLOT_TOPS: Final = (*PACKAGES, DEPS_DIR)
#: Caps for a self-contained artifact, what a node stages (``StateDir``'s default): today's
#: build is 70 MB gzipped, 229 MB unpacked, 2571 entries, its largest file 25 MB (numpy's
#: OpenBLAS); the caps leave about 2x headroom and stay bounded (a whole artifact is held in
#: memory while it is checked and unpacked).  The artifact cap is the unpack cap
#: (``tar_cap``): a plain tar (what content-defined chunks cut) is as big as what it holds.
_SC_TOTAL: Final = 512 * 1024 * 1024
_SC_ENTRIES: Final = 20_000
SELF_CONTAINED_LIMITS: Final = UnpackLimits(
    max_artifact_bytes=_SC_TOTAL + (_SC_ENTRIES + 2) * 3 * 512,
    max_total_bytes=_SC_TOTAL,
    max_file_bytes=64 * 1024 * 1024,
    max_entries=_SC_ENTRIES,
)
#: Installer bookkeeping that differs between two installs of the same wheel (who installed
#: it, from where, the RECORD of paths and hashes): left out of the slot.
_VARYING_DIST_FILES: Final = frozenset({"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"})
_MANYLINUX: Final = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY_MANYLINUX: Final = {
    "manylinux1": (2, 5),
    "manylinux2010": (2, 12),
    "manylinux2014": (2, 17),
}


class DistInfo(NamedTuple):
    """One dependency as built into a slot."""

    name: str
    version: str
    #: The wheel tags its ``WHEEL`` file lists (``cp311-abi3-manylinux_2_28_x86_64``).
    tags: tuple[str, ...]


class Deps(NamedTuple):
    """The runtime dependencies of a self-contained build, read from installed dists."""

    dists: tuple[DistInfo, ...]
    #: ``{"deps/<path in site-packages>": (bytes, mode)}``.
    files: dict[str, tuple[bytes, int]]
    #: ``cp311`` -- the interpreter the slot is built for.
    python: str
    #: The one platform name a node compares with its own (see ``slot_platform``).
    platform: str

    @classmethod
    def collect(
        cls,
        requirements: list[str],
        *,
        search_path: list[str] | None = None,
    ) -> Deps:
        """Every distribution ``requirements`` need (their markers evaluated for this
        interpreter), found on ``search_path`` (default ``sys.path``; the first match of a
        name wins, so a directory put first overrides one dependency's version), with its
        files as installed there -- pinned to the installed versions, no network."""
        import sys

        try:
            from packaging.markers import default_environment
            from packaging.requirements import InvalidRequirement, Requirement
            from packaging.tags import interpreter_name, interpreter_version
            from packaging.utils import canonicalize_name
        except ImportError:  # pragma: no cover - every venv with pip's build deps has it
            raise BuildError("a self-contained build needs the 'packaging' module") from None
        from importlib import metadata

        path = list(sys.path if search_path is None else search_path)
        env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
        found: dict[str, metadata.Distribution] = {}
        extras_of: dict[str, set[str]] = {}
        pending = list(requirements)
        while pending:
            text = pending.pop()
            try:
                req = Requirement(text)
            except InvalidRequirement as exc:
                raise BuildError(f"requirement {text!r}: {exc}") from None
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue  # not for this interpreter or platform
            key = str(canonicalize_name(req.name))
            wanted = extras_of.setdefault(key, set())
            if key in found and req.extras <= wanted:
                continue
            wanted.update(req.extras)
            dist = found.get(key)
            if dist is None:
                dist = next(iter(metadata.distributions(name=req.name, path=path)), None)
            if dist is None:
                raise BuildError(f"dependency {req.name!r} is not installed on the build path")
            if not req.specifier.contains(dist.version, prereleases=True):
                raise BuildError(f"{req.name} {dist.version} is installed, {text!r} is required")
            found[key] = dist
            for sub in dist.requires or []:
                sreq = Requirement(sub)
                if sreq.marker is None or any(
                    sreq.marker.evaluate({**env, "extra": e}) for e in ("", *sorted(wanted))
                ):
                    sreq.marker = None
                    pending.append(str(sreq))
        files: dict[str, tuple[bytes, int]] = {}
        dists: list[DistInfo] = []
        for key in sorted(found):
            dist = found[key]
            dists.append(DistInfo(key, dist.version, _wheel_tags(dist)))
            for name, entry in _dist_files(dist).items():
                if files.setdefault(name, entry) != entry:
                    raise BuildError(f"{name}: two dependencies install different files here")
        python = interpreter_name() + interpreter_version()
        return cls(tuple(dists), files, python, slot_platform(python, [d.tags for d in dists]))

    def manifest(self, version: str | None) -> bytes:
        """``deps/SLOT.json``: canonical JSON (sorted keys, no spaces), so it is as
        reproducible as the rest of the build."""
        import json

        doc = {
            "format": 1,
            "version": version,
            "python": self.python,
            "platform": self.platform,
            "dists": [
                {"name": d.name, "version": d.version, "tags": list(d.tags)} for d in self.dists
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def slot_platform(python: str, dist_tags: list[tuple[str, ...]]) -> str:
    """The platform a slot needs, as one wheel-style tag: ``<python>-<platform>``.

    ``any`` when every dependency is pure Python; else the most demanding platform among the
    binary wheels: for manylinux wheels, the highest glibc that some dependency needs at
    least (a wheel tagged 2_27 *and* 2_28 needs only 2.27), e.g.
    ``cp311-manylinux_2_34_x86_64``; one binary wheel of another kind (musllinux, macOS,
    plain ``linux_x86_64``) makes it the sorted ``+``-joined set of those tags.
    """
    platforms: set[str] = set()
    glibc: tuple[int, int] = (0, 0)
    arches: set[str] = set()
    for tags in dist_tags:
        plats = {t.split("-")[-1] for t in tags}
        if not plats or plats == {"any"}:
            continue
        need: tuple[int, int] | None = None
        for plat in sorted(plats):
            for one in plat.split("."):
                m = _MANYLINUX.match(one)
                legacy = one.split("_", 1)
                if m:
                    v, arch = (int(m.group(1)), int(m.group(2))), m.group(3)
                elif legacy[0] in _LEGACY_MANYLINUX and len(legacy) == 2:
                    v, arch = _LEGACY_MANYLINUX[legacy[0]], legacy[1]
                else:
                    platforms.add(one)
                    continue
                arches.add(arch)
                need = v if need is None else min(need, v)
        if need is not None:
            glibc = max(glibc, need)
    if arches and not platforms and len(arches) == 1:
        return f"{python}-manylinux_{glibc[0]}_{glibc[1]}_{arches.pop()}"
    if not arches and not platforms:
        return f"{python}-any"
    every = platforms | {f"manylinux_{glibc[0]}_{glibc[1]}_{a}" for a in arches}
    return f"{python}-{'+'.join(sorted(every))}"


def node_platforms() -> frozenset[str]:
    """The platform tags this interpreter can run, as ``gates.platform_supported`` compares
    them with a release record's ``platform``: ``<python>-any``, and on glibc Linux
    ``<python>-manylinux_2_<y>_<arch>`` for every ``y`` up to this glibc (with the legacy
    manylinux1/2010/2014 aliases) and ``<python>-linux_<arch>``.

    Without ``packaging`` (a slot carries only runtime dependencies): the tags are made
    from ``sys.implementation``, ``platform.machine()`` and ``os.confstr``.
    """
    import platform
    import sys

    impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
    python = f"{impl}{sys.version_info.major}{sys.version_info.minor}"
    tags = {f"{python}-any"}
    arch = platform.machine().lower().replace("-", "_")
    if sys.platform.startswith("linux") and arch:
        tags.add(f"{python}-linux_{arch}")
        try:
            libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
        except (ValueError, OSError):
            libc = ""
        m = re.fullmatch(r"glibc (\d+)\.(\d+).*", libc)
        if m and int(m.group(1)) == 2:
            top = int(m.group(2))
            tags.update(f"{python}-manylinux_2_{y}_{arch}" for y in range(top + 1))
            tags.update(
                f"{python}-{alias}_{arch}"
                for alias, (_major, minor) in _LEGACY_MANYLINUX.items()
                if minor <= top
            )
    return frozenset(tags)


def _wheel_tags(dist: Any) -> tuple[str, ...]:
    text = dist.read_text("WHEEL") or ""
    return tuple(
        sorted(
            line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")
        )
    )


def _dist_files(dist: Any) -> dict[str, tuple[bytes, int]]:
    """The files a distribution installed into its site directory (RECORD's list), less
    bytecode and the installer's bookkeeping; ``deps/<path>`` -> ``(bytes, mode)``."""
    listed = dist.files
    if listed is None:
        raise BuildError(
            f"{dist.metadata['Name']}: installed without a RECORD (cannot list its files)"
        )
    out: dict[str, tuple[bytes, int]] = {}
    for rel in listed:
        parts = rel.parts
        if not parts or ".." in parts or parts[0] == "/":
            continue  # console scripts and data installed outside the site directory
        if "__pycache__" in parts or rel.name.endswith((".pyc", ".pyo")):
            continue
        if parts[0].endswith(".dist-info") and rel.name in _VARYING_DIST_FILES:
            continue
        path = Path(dist.locate_file(rel))
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise BuildError(
                f"{path}: listed in {dist.metadata['Name']}'s RECORD, unreadable: {exc}"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"{path}: not a regular file")
        out[f"{DEPS_DIR}/{rel.as_posix()}"] = (data, 0o755 if st.st_mode & 0o111 else 0o644)
    return out


def project_requirements(root: Path) -> list[str]:
    """``[project] dependencies`` of ``root/pyproject.toml``: what a slot must carry."""
    import tomllib

    try:
        doc = tomllib.loads((root / "pyproject.toml").read_text())
        deps = doc["project"]["dependencies"]
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise BuildError(f"{root / 'pyproject.toml'}: no [project] dependencies ({exc})") from None
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise BuildError(
            f"{root / 'pyproject.toml'}: [project] dependencies is not a list of strings"
        )
    return deps


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
    raw = tar_of(data, tar_cap(limits))
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


def tar_cap(limits: UnpackLimits) -> int:
    """The most bytes the tar of an artifact within ``limits`` can take: its files, plus a
    header and padding block or so per entry (a pax header of a long name included)."""
    return limits.max_total_bytes + (limits.max_entries + 2) * 3 * 512


def is_plain_tar(head: bytes) -> bool:
    """Whether ``head`` (an artifact's first 512 bytes or more) starts an uncompressed tar
    (the ``ustar`` magic of a POSIX header: what ``build_tar`` writes)."""
    return head[257:262] == b"ustar"


def tar_of(data: bytes, cap: int) -> bytes:
    """The tar an artifact holds: a gzip one (told by its magic, never by a file name)
    decompressed to at most ``cap`` bytes, a plain one as it is (at most ``cap`` bytes:
    what content-defined chunks cut, issue P12).  ``ArtifactError`` for anything else."""
    if data[:2] == _GZIP_MAGIC:
        return gunzip_limited(data, cap)
    if not is_plain_tar(data[:512]):
        raise ArtifactError("not a gzip file or a tar archive")
    if len(data) > cap:
        raise ArtifactError(f"a tar of {len(data)} bytes, over the cap of {cap}")
    return data


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


def _artifact_members(
    data: bytes, limits: UnpackLimits, allowed_top: tuple[str, ...]
) -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes]]]:
    """Each regular file of a verified artifact, ``(path, member, reader)``, under the same
    caps as ``unpack_into`` (the tar is parsed from memory, the gzip bounded first)."""
    raw = tar_of(data, tar_cap(limits))
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
                yield "/".join(parts), member, source
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArtifactError(f"corrupt archive: {exc}") from None


def artifact_files(
    data: bytes, *, limits: UnpackLimits = DEFAULT_LIMITS, allowed_top: tuple[str, ...] = PACKAGES
) -> dict[str, tuple[bytes, int]]:
    """Every regular file of a verified artifact: ``{path: (bytes, mode)}``, read in memory
    under the same caps as ``unpack_into`` (what a slot's files must be, and where a
    damaged one is restored from)."""
    return {
        name: (source.read(), 0o755 if member.mode & 0o111 else 0o644)
        for name, member, source in _artifact_members(data, limits, allowed_top)
    }


def artifact_hashes(
    data: bytes, *, limits: UnpackLimits = DEFAULT_LIMITS, allowed_top: tuple[str, ...] = PACKAGES
) -> dict[str, str]:
    """``{path: sha256 hex}`` of every regular file of a verified artifact: what
    ``artifact_files`` would give, hashed one file at a time (a self-contained slot's 229 MB
    are not held twice)."""
    out: dict[str, str] = {}
    for name, _member, source in _artifact_members(data, limits, allowed_top):
        h = _sha256(b"")
        while block := source.read(1 << 20):
            h.update(block)
        out[name] = h.hexdigest()
    return out


#: ``deps/SLOT.json`` is a few KB (27 dependencies: 4 KB); more is not a manifest.
MAX_MANIFEST_BYTES: Final = 1024 * 1024
_GZIP_MAGIC: Final = b"\x1f\x8b"


class _BoundedGunzip:
    """A file object over the gunzipped bytes of ``source`` that refuses to produce more
    than ``cap`` bytes (what ``tarfile``'s stream mode reads, a block at a time)."""

    def __init__(self, source: IO[bytes], cap: int) -> None:
        self._source = source
        self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._buf = b""
        self._out = 0
        self._cap = cap

    def read(self, n: int = -1) -> bytes:
        want = n if n is not None and n >= 0 else 1 << 20
        try:
            while len(self._buf) < want and not self._d.eof:
                chunk = self._d.unconsumed_tail or self._source.read(1 << 16)
                if not chunk:
                    raise ArtifactError("truncated gzip stream")
                piece = self._d.decompress(chunk, want - len(self._buf))
                self._out += len(piece)
                if self._out > self._cap:
                    raise ArtifactError(f"decompresses to more than {self._cap} bytes")
                self._buf += piece
        except zlib.error as exc:
            raise ArtifactError(f"not a gzip file: {exc}") from None
        data, self._buf = self._buf[:want], self._buf[want:]
        return data


def read_build_manifest(
    source: IO[bytes], limits: UnpackLimits = SELF_CONTAINED_LIMITS
) -> dict[str, Any] | None:
    """The ``deps/SLOT.json`` of the artifact open as ``source`` (a regular file, read from
    its start; the caller refuses a FIFO or a device before), read by streaming the tar up
    to it; None when the file is neither gzip nor a plain tar (told by magic), not a tar, or a tar with an entry outside ``SLOT_TOPS``
    (not a build: any file may be released), or holds no such entry (a build of our code
    alone).  ``ArtifactError`` for a damaged or unsafe artifact, a manifest over
    ``MAX_MANIFEST_BYTES`` or one that is not a JSON object of format 1 with a string
    ``platform``; ``OSError`` when the file cannot be read.

    The same caps as unpacking: file size, decompressed bytes, entries, path shape."""
    import json

    size = os.fstat(source.fileno()).st_size
    head = source.read(512)
    source.seek(0)
    cap = tar_cap(limits)
    stream: Any
    if head[:2] == _GZIP_MAGIC:
        stream = _BoundedGunzip(source, cap)
    elif is_plain_tar(head):
        stream = source  # a plain tar: the file's size bounds what is read
    else:
        return None
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                count += 1
                if count > limits.max_entries:
                    raise ArtifactError(f"more than {limits.max_entries} entries")
                if member.name.lstrip("./").partition("/")[0] not in SLOT_TOPS:
                    return None  # a tarball, but not a build: no platform to name
                if count == 1 and size > limits.max_artifact_bytes:
                    cap_b = limits.max_artifact_bytes
                    raise ArtifactError(f"{size} B over the artifact cap {cap_b}")
                _safe_parts(member.name, limits, SLOT_TOPS)
                if member.name != MANIFEST_FILE:
                    continue
                if not member.isreg() or member.size > MAX_MANIFEST_BYTES:
                    raise ArtifactError(
                        f"{MANIFEST_FILE}: not a file of at most {MAX_MANIFEST_BYTES} B"
                    )
                reader = tar.extractfile(member)
                raw = reader.read() if reader is not None else b""
                break
            else:
                return None
    except (tarfile.TarError, EOFError, ArtifactError) as exc:
        if count == 0:  # not even one tar entry: a gzip file, but no build
            return None
        if isinstance(exc, ArtifactError):
            raise
        raise ArtifactError(f"corrupt archive after {count} entries: {exc}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{MANIFEST_FILE}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != 1:
        raise ArtifactError(f"{MANIFEST_FILE}: not a format 1 manifest")
    if not isinstance(doc.get("platform"), str) or not doc["platform"]:
        raise ArtifactError(f"{MANIFEST_FILE}: no platform")
    return doc


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
