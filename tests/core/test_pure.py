"""The core does no IO (README "Architecture"): proved twice.

1. **Statically** (authoritative for our own code): every ``.py`` under ``p2pupdate/core``
   is parsed with ``ast``; no ``import``/``from ... import`` (absolute, dotted or relative)
   may name an IO, clock, randomness or concurrency module, reach outside the core into
   the shells, or call ``open``/``print``/``__import__`` and friends.
2. **At run time**, in a fresh interpreter: every core module is imported with
   ``builtins.__import__`` wrapped, which records each import statement executed *by a
   core module* (even of a module already loaded, such as ``os``).  Third-party libraries
   may import ``os`` internally (``cryptography`` does), but nothing may pull in ``trio``,
   ``asyncio`` or ``socket`` at all.

Both checkers are tested on a deliberately impure package first, so a checker that sees
nothing cannot pass.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import p2pupdate.core

CORE_DIR = Path(p2pupdate.core.__file__).parent
CORE_PACKAGE = "p2pupdate.core"
REPO = CORE_DIR.parent.parent

#: Modules the core must never import (README "Architecture", plus the rest of the IO family).
FORBIDDEN = frozenset(
    {
        "trio",
        "asyncio",
        "socket",
        "os",
        "time",
        "random",
        "threading",
        "subprocess",
        "selectors",
        "select",
        "ssl",
        "multiprocessing",
        "concurrent",
        "secrets",
        "uuid",
        "signal",
        "shutil",
        "tempfile",
        "pathlib",
        "urllib",
        "http",
        "importlib",
        "aiortc",
        "zeroconf",
        "sniffio",
    }
)
#: Builtins that do IO or import by name.
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "breakpoint", "__import__", "exec", "eval"})
#: Must not be imported transitively by importing the core, whoever imports them.
NEVER_LOADED = ("trio", "asyncio", "socket")


# -- static -----------------------------------------------------------------------------------


def _module_name(path: Path, root: Path, package: str) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def impurities(source: str, module: str, *, is_package: bool, package: str) -> list[str]:
    """Every import or call in ``source`` that breaks the no-IO rule, as messages."""
    problems: list[str] = []
    here = module if is_package else module.rpartition(".")[0]

    def check_target(target: str, lineno: int) -> None:
        top = target.split(".")[0]
        if top in FORBIDDEN:
            problems.append(f"{module}:{lineno} imports {target}")
        elif top == package.split(".")[0] and not (
            target == package or target.startswith(package + ".")
        ):
            problems.append(f"{module}:{lineno} reaches outside the core: {target}")
        elif top == "coordinator":
            problems.append(f"{module}:{lineno} imports the coordinator: {target}")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_target(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                parts = here.split(".")
                if node.level - 1 >= len(parts):
                    problems.append(f"{module}:{node.lineno} relative import above the top")
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                if node.module:
                    base = f"{base}.{node.module}"
            check_target(base, node.lineno)
            for alias in node.names:  # ``from p2pupdate import daemon`` names a module too
                if base == package.split(".")[0] or base in FORBIDDEN:
                    check_target(f"{base}.{alias.name}", node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
                problems.append(f"{module}:{node.lineno} calls {func.id}()")
            if isinstance(func, ast.Attribute) and func.attr == "import_module":
                problems.append(f"{module}:{node.lineno} imports by name")
    return problems


def package_impurities(root: Path, package: str) -> list[str]:
    problems: list[str] = []
    files = sorted(root.rglob("*.py"))
    assert files, f"no python files under {root}"
    for path in files:
        problems += impurities(
            path.read_text(encoding="utf-8"),
            _module_name(path, root, package),
            is_package=path.name == "__init__.py",
            package=package,
        )
    return problems


def test_static_checker_sees_every_form_of_import() -> None:
    """Control: each line below must be caught on its own."""
    bad_lines = [
        "import os",
        "import os.path",
        "import time as clock",
        "import hashlib, random",
        "from socket import socket",
        "from trio import open_nursery",
        "from asyncio.events import get_event_loop",
        "from concurrent.futures import ThreadPoolExecutor",
        "from .. import daemon",
        "from ..daemon import node",
        "from ..net.tcp import dial",
        "import p2pupdate.daemon",
        "from p2pupdate import daemon",
        "from coordinator import policy",
        "from ... import something",
        "__import__('socket')",
        "importlib.import_module('socket')",
        "open('/etc/passwd')",
        "print('hi')",
    ]
    for line in bad_lines:
        found = impurities(line, "p2pupdate.core.wire", is_package=False, package=CORE_PACKAGE)
        assert found, f"not caught: {line}"
    fine = [
        "import hashlib",
        "import msgpack",
        "from . import wire",
        "from .errors import WireError",
        "from .sub.thing import x",
        "from p2pupdate.core import wire",
        "from collections.abc import Mapping",
        "from typing import Final",
    ]
    for line in fine:
        found = impurities(line, "p2pupdate.core.wire", is_package=False, package=CORE_PACKAGE)
        assert found == [], f"false alarm: {line}: {found}"
    # Relative imports resolve from a package's __init__ correctly.
    assert impurities("from . import x", CORE_PACKAGE, is_package=True, package=CORE_PACKAGE) == []
    assert impurities("from .. import x", CORE_PACKAGE, is_package=True, package=CORE_PACKAGE)


def test_core_imports_no_io_module() -> None:
    assert package_impurities(CORE_DIR, CORE_PACKAGE) == []


#: Core modules both checkers must see (a checker that misses one proves nothing about it).
EXPECTED_MODULES = (
    "errors",
    "wire",
    "crypto",
    "documents",
    "trust",
    "gates",
    "timing",
    "updater",
    "updater_events",
)


def test_core_has_the_expected_modules() -> None:
    names = {p.stem for p in CORE_DIR.glob("*.py")}
    assert set(EXPECTED_MODULES) <= names


# -- run time ---------------------------------------------------------------------------------

_PROBE = textwrap.dedent(
    """
    import builtins, importlib, json, pkgutil, sys

    package, forbidden, never = sys.argv[1], set(json.loads(sys.argv[2])), json.loads(sys.argv[3])
    loaded_before = sorted(m for m in never if m in sys.modules)
    seen = []
    real_import = builtins.__import__

    def spy(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__", "?")
        if level:
            pkg = (globals or {}).get("__package__") or ""
            base = pkg.rsplit(".", level - 1)[0] if level > 1 else pkg
            target = f"{base}.{name}" if name else base
        else:
            target = name
        seen.append([importer, target, list(fromlist or ())])
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = spy
    try:
        top = importlib.import_module(package)
        names = [package] + [
            m.name for m in pkgutil.walk_packages(top.__path__, package + ".")
        ]
        for name in names:
            importlib.import_module(name)
    finally:
        builtins.__import__ = real_import

    def ours(importer):
        return importer == package or importer.startswith(package + ".")

    direct = sorted(
        {
            f"{importer} -> {target}"
            for importer, target, fromlist in seen
            if ours(importer) and target.split(".")[0] in forbidden
        }
    )
    print(json.dumps({
        "modules": names,
        "direct": direct,
        "loaded_before": loaded_before,
        "loaded_after": sorted(m for m in never if m in sys.modules),
        "core_imports": sorted({t for i, t, _ in seen if ours(i)}),
    }))
    """
)


def run_probe(package: str, *, cwd: Path) -> dict[str, list[str]]:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            package,
            json.dumps(sorted(FORBIDDEN)),
            json.dumps(NEVER_LOADED),
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, list[str]] = json.loads(proc.stdout)
    return result


def test_runtime_probe_catches_an_impure_package(tmp_path: Path) -> None:
    """Control: a package that imports os (already loaded), time and socket is caught."""
    pkg = tmp_path / "impurecore"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "clean.py").write_text("import hashlib\nfrom . import dirty\n")
    (pkg / "dirty.py").write_text("import os\nfrom time import monotonic\nimport socket\n")
    result = run_probe("impurecore", cwd=tmp_path)
    assert set(result["direct"]) == {
        "impurecore.dirty -> os",
        "impurecore.dirty -> time",
        "impurecore.dirty -> socket",
    }
    assert result["loaded_after"] == ["socket"]


@pytest.fixture(scope="module")
def core_probe() -> dict[str, list[str]]:
    return run_probe(CORE_PACKAGE, cwd=REPO)


def test_runtime_core_modules_import_no_io_module(core_probe: dict[str, list[str]]) -> None:
    expected = {f"{CORE_PACKAGE}.{m}" for m in EXPECTED_MODULES}
    assert expected <= set(core_probe["modules"])
    assert core_probe["core_imports"], "the probe saw no imports at all"
    assert core_probe["direct"] == []


def test_runtime_core_never_loads_trio_asyncio_or_socket(core_probe: dict[str, list[str]]) -> None:
    assert core_probe["loaded_before"] == []
    assert core_probe["loaded_after"] == []
