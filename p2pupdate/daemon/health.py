"""The daemon's own health check, run on probation next to ``Workload.healthy()``.

A new build is confirmed only if it is really *itself* and complete: it runs from the slot
the launcher started (not from the installed package or a stale path), reports the version
its slot was built with, every module of the node imports (a module that is imported only
later -- at the next swap, say -- must not be found broken then), and it can write its
state directory.  Each failure is one line an operator can act on; the rollback reason
carries them.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from typing import Final

import p2pupdate

#: Packages whose every module must import for a build to be healthy.
PACKAGES: Final = ("p2pupdate.core", "p2pupdate.launcher", "p2pupdate.daemon", "p2pupdate.work")


def module_names() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        mod = importlib.import_module(package)
        names.append(package)
        names.extend(f"{package}.{m.name}" for m in pkgutil.iter_modules(mod.__path__))
    return sorted(set(names))


def self_test(*, slot_dir: Path, slot_version: str, state_dir: Path) -> list[str]:
    """Problems found (empty: healthy)."""
    problems: list[str] = []
    package_dir = Path(p2pupdate.__file__).resolve().parent
    if package_dir.parent != slot_dir.resolve():
        problems.append(f"running {package_dir}, not the slot {slot_dir}")
    if p2pupdate.__version__ != slot_version:
        problems.append(f"version {p2pupdate.__version__!r}, the slot says {slot_version!r}")
    try:
        names = module_names()
    except Exception as exc:  # a broken package __init__ is exactly what this looks for
        problems.append(f"listing modules: {type(exc).__name__}: {exc}")
        names = []
    for name in names:
        if name == "p2pupdate.daemon.__main__":
            continue  # running it would start a second daemon
        try:
            importlib.import_module(name)
        except Exception as exc:
            problems.append(f"import {name}: {type(exc).__name__}: {exc}")
    if not os.access(state_dir, os.W_OK):
        problems.append(f"state directory {state_dir} is not writable")
    return problems
