"""The architecture, checked from the source (README "Architecture").

Read from the AST of every module in ``p2pupdate/``, ``coordinator/`` and ``simulations/``;
an import inside a function or under ``if TYPE_CHECKING:`` counts like any other, because
it is a dependency all the same (a cycle hidden in a function is still a cycle):

(a) no import cycle between the project's modules (the failure prints the cycle's path);
(b) the coordinator never depends on the node: no module of ``coordinator/`` imports
    ``p2pupdate.daemon``, ``p2pupdate.launcher`` or ``p2pupdate.work``, directly or through
    another project module; and importing every coordinator module in a fresh interpreter
    loads none of them (a package ``__init__`` runs when its submodule is imported, which
    the import graph does not show);
(c) no module under ``p2pupdate/core/`` is over 900 lines;
(d) the shells read the clock only through :mod:`p2pupdate.clock`: no ``time.time()`` or
    ``time.monotonic()`` (nor their ``_ns`` forms, called or passed along) in
    ``p2pupdate/daemon``, ``p2pupdate/net`` or the coordinator client;
(e) ``coordinator/policy*`` imports no IO module, with the checker of
    ``tests/core/test_pure.py`` (which holds the core itself to the same rule).

Each checker is first run on a small, deliberately bad case, so a checker that sees
nothing cannot pass.

The import graph counts an edge ``a -> b`` when module ``a`` imports module ``b`` or a
name from it (``from b import x``; ``from pkg import mod`` is an edge to ``pkg.mod``),
resolved to the longest name that is a project module.  A package's ``__init__`` importing
its own submodules is not an edge: Python runs the package first in any case, and a
submodule importing its siblings through ``from . import x`` is the usual layout, not a
cycle.  Everything else, including a submodule importing its own package, is an edge.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from tests.core.test_pure import impurities

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("p2pupdate", "coordinator", "simulations")

#: What the coordinator may never load: the node's daemon, launcher and work.
NODE_ONLY = ("p2pupdate.daemon", "p2pupdate.launcher", "p2pupdate.work")
#: No module of the sans-IO core may be longer than this.
MAX_CORE_LINES = 900
#: Reading these is reading the clock; the shells take a ``Clock`` instead.
CLOCK_READS = frozenset({"time", "monotonic", "time_ns", "monotonic_ns"})
#: Where the clock is read only through the injected ``Clock``: the daemon (with the
#: coordinator client, ``daemon/replica.py``) and the links (with ``net/replica_link.py``).
CLOCK_INJECTED = ("p2pupdate/daemon", "p2pupdate/net")


# -- the import graph -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Module:
    """One ``.py`` file of the project, by its dotted name."""

    name: str
    path: Path
    is_package: bool


def discover(root: Path, packages: Iterable[str]) -> dict[str, Module]:
    """Every module under ``root/<package>/`` for each package, by dotted name."""
    found: dict[str, Module] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            found[name] = Module(name=name, path=path, is_package=is_package)
    return found


def _parse(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))


def _imported_names(module: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement may bring in (modules, or modules' names)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.name.split(".")
        if not module.is_package:
            parts.pop()
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([base] if base else [])])
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """``module -> {imported project module: line of the first such import}``."""
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, module in modules.items():
        for node in ast.walk(_parse(module)):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for target in _imported_names(module, node):
                while target and target not in modules:  # a name defined in a module
                    target = target.rpartition(".")[0]
                if not target or target == name:
                    continue
                if module.is_package and target.startswith(name + "."):
                    continue  # a package importing its own submodule
                graph[name].setdefault(target, node.lineno)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's components with more than one module (each one holds a cycle), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def shortest_path(
    graph: dict[str, dict[str, int]], start: str, goal: str, within: set[str] | None = None
) -> list[str] | None:
    """The fewest-edge path ``start -> ... -> goal`` (``start`` excluded from re-entry)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if within is not None and w not in within:
                continue
            if w == goal:
                path = [w, v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1]
            if w not in came_from and w != start:
                came_from[w] = v
                queue.append(w)
    return None


def describe_path(graph: dict[str, dict[str, int]], path: list[str]) -> str:
    """``a -(l.12)-> b -(l.3)-> c``: each hop with the line of ``import`` that makes it."""
    out = [path[0]]
    for a, b in pairwise(path):
        out.append(f" -(l.{graph[a][b]})-> {b}")
    return "".join(out)


def import_cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    """One shortest cycle per strongly connected component, as a readable path."""
    cycles = []
    for component in strongly_connected(graph):
        first = component[0]
        path = shortest_path(graph, first, first, within=set(component))
        assert path is not None, component
        cycles.append(describe_path(graph, path))
    return sorted(cycles)


def forbidden_dependencies(
    graph: dict[str, dict[str, int]], sources: Iterable[str], forbidden: Iterable[str]
) -> list[str]:
    """For each source module that reaches a forbidden module (or one under it), the path."""
    banned = tuple(forbidden)

    def is_banned(name: str) -> bool:
        return any(name == b or name.startswith(b + ".") for b in banned)

    problems = []
    for source in sorted(sources):
        seen = {source}
        queue = deque([source])
        parent: dict[str, str] = {}
        while queue:
            v = queue.popleft()
            hit = next((w for w in sorted(graph[v]) if is_banned(w)), None)
            if hit is not None:
                path = [hit, v]
                while path[-1] != source:
                    path.append(parent[path[-1]])
                problems.append(describe_path(graph, path[::-1]))
                break
            for w in sorted(graph[v]):
                if w not in seen:
                    seen.add(w)
                    parent[w] = v
                    queue.append(w)
    return problems


@pytest.fixture(scope="module")
def project() -> tuple[dict[str, Module], dict[str, dict[str, int]]]:
    modules = discover(REPO, PACKAGES)
    return modules, import_graph(modules)


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


# -- (a) no import cycle ----------------------------------------------------------------------


def test_cycle_checker_finds_cycles_hidden_in_functions_and_type_checking(
    tmp_path: Path,
) -> None:
    """Control: cycles through a function-level import and a TYPE_CHECKING import."""
    _write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "from . import a, b  # a package importing its submodules\n",
            "pkg/a.py": "from . import b\n",
            "pkg/b.py": "def later():\n    from .a import thing\n",
            "pkg/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import D\n"
            ),
            "pkg/d.py": "import pkg.c\n",
            "pkg/e.py": "from . import a  # reaches the a <-> b cycle, is not in it\n",
            "pkg/sub/__init__.py": "from .leaf import x\n",
            "pkg/sub/leaf.py": "from .. import sub  # a submodule importing its package\n",
        },
    )
    modules = discover(tmp_path, ["pkg"])
    graph = import_graph(modules)
    assert graph["pkg"] == {}
    assert graph["pkg.b"] == {"pkg.a": 2}
    assert import_cycles(graph) == [
        "pkg.a -(l.1)-> pkg.b -(l.2)-> pkg.a",
        "pkg.c -(l.3)-> pkg.d -(l.1)-> pkg.c",
    ]


def test_cycle_checker_passes_an_acyclic_tree(tmp_path: Path) -> None:
    _write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import x\n",
            "pkg/a.py": "from .b import y\nfrom . import c\n",
            "pkg/b.py": "import json\nfrom pkg.c import z\n",
            "pkg/c.py": "import pkg  # its own package: an edge, and no cycle\n",
        },
    )
    graph = import_graph(discover(tmp_path, ["pkg"]))
    assert graph["pkg.a"] == {"pkg.b": 1, "pkg": 2, "pkg.c": 2}
    assert graph["pkg.c"] == {"pkg": 1}
    assert import_cycles(graph) == []


def test_no_import_cycle(project: tuple[dict[str, Module], dict[str, dict[str, int]]]) -> None:
    modules, graph = project
    assert {"p2pupdate.cli", "coordinator.cli", "simulations.cli"} <= set(modules)
    assert sum(len(targets) for targets in graph.values()) > 100, "the graph is too thin"
    assert import_cycles(graph) == []


# -- (b) the coordinator never depends on the node --------------------------------------------


def test_dependency_checker_follows_imports_through_other_modules(tmp_path: Path) -> None:
    _write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/direct.py": "def f():\n    from node.daemon import run\n",
            "svc/indirect.py": "from shared import helper\n",
            "svc/clean.py": "import shared.clean\n",
            "shared/__init__.py": "",
            "shared/helper.py": "import node.launcher.slots\n",
            "shared/clean.py": "import node.core\n",
            "node/__init__.py": "",
            "node/core.py": "",
            "node/daemon.py": "",
            "node/launcher/__init__.py": "",
            "node/launcher/slots.py": "",
        },
    )
    modules = discover(tmp_path, ["svc", "shared", "node"])
    graph = import_graph(modules)
    sources = [m for m in modules if m.startswith("svc")]
    assert forbidden_dependencies(graph, sources, ["node.daemon", "node.launcher"]) == [
        "svc.direct -(l.2)-> node.daemon",
        "svc.indirect -(l.1)-> shared.helper -(l.1)-> node.launcher.slots",
    ]


def test_coordinator_imports_nothing_of_the_node(
    project: tuple[dict[str, Module], dict[str, dict[str, int]]],
) -> None:
    modules, graph = project
    coordinator = [m for m in modules if m == "coordinator" or m.startswith("coordinator.")]
    assert len(coordinator) >= 5
    assert forbidden_dependencies(graph, coordinator, NODE_ONLY) == []


_LOADED_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    package, banned = sys.argv[1], json.loads(sys.argv[2])
    top = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(top.__path__, package + ".")]
    for name in names:
        if not name.endswith(".__main__"):
            importlib.import_module(name)
    loaded = sorted(
        m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned)
    )
    print(json.dumps({"modules": names, "loaded": loaded}))
    """
)


def modules_loaded_by(package: str, banned: Iterable[str], *, cwd: Path) -> dict[str, list[str]]:
    """Import every module of ``package`` in a fresh interpreter; which banned ones loaded."""
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED_PROBE, package, json.dumps(list(banned))],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, list[str]] = json.loads(proc.stdout)
    return result


def test_load_probe_sees_a_package_init_that_pulls_in_the_node(tmp_path: Path) -> None:
    """Control: ``svc`` names only ``shared.common``, whose package ``__init__`` loads the node."""
    _write_tree(
        tmp_path,
        {
            "svc/__init__.py": "",
            "svc/cli.py": "from shared.common import helper\n",
            "shared/__init__.py": "from node import daemon  # the mistake\n",
            "shared/common.py": "helper = 1\n",
            "node/__init__.py": "",
            "node/daemon.py": "",
        },
    )
    graph = import_graph(discover(tmp_path, ["svc", "shared", "node"]))
    assert forbidden_dependencies(graph, ["svc.cli"], ["node.daemon"]) == []  # invisible here
    result = modules_loaded_by("svc", ["node.daemon"], cwd=tmp_path)
    assert result["modules"] == ["svc", "svc.cli"]
    assert result["loaded"] == ["node.daemon"]


def test_importing_the_coordinator_loads_nothing_of_the_node() -> None:
    result = modules_loaded_by("coordinator", NODE_ONLY, cwd=REPO)
    assert {"coordinator.cli", "coordinator.service", "coordinator.bench"} <= set(result["modules"])
    assert result["loaded"] == []


# -- (c) no core module over 900 lines --------------------------------------------------------


def long_modules(root: Path, limit: int) -> list[str]:
    """``path: N lines`` for every ``.py`` under ``root`` longer than ``limit`` lines."""
    out = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            out.append(f"{path.relative_to(root).as_posix()}: {lines} lines")
    return out


def test_length_checker_counts_lines(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "ok.py").write_text("x = 1\n" * 900)
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * 901)
    assert long_modules(tmp_path, 900) == ["sub/long.py: 901 lines"]


def test_no_core_module_over_900_lines() -> None:
    core = REPO / "p2pupdate" / "core"
    assert len(list(core.rglob("*.py"))) >= 8
    assert long_modules(core, MAX_CORE_LINES) == []


# -- (d) the shells read the clock through the injected Clock ---------------------------------


def clock_reads(source: str, filename: str) -> list[str]:
    """``file:line what`` for each read of ``time.time``/``monotonic`` (and ``_ns``) in source.

    Follows ``import time as t`` and ``from time import time as now``; a reference without a
    call (``wall=time.time``) is a read handed to someone else, so it counts too.
    """
    tree = ast.parse(source, filename=filename)
    module_aliases: set[str] = set()
    function_aliases: dict[str, str] = {}
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "time":
                    module_aliases.add(alias.asname or "time")
        elif isinstance(node, ast.ImportFrom) and node.module == "time" and node.level == 0:
            for alias in node.names:
                if alias.name in CLOCK_READS:
                    function_aliases[alias.asname or alias.name] = alias.name
                    found.add((node.lineno, f"from time import {alias.name}"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in CLOCK_READS
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
        ):
            found.add((node.lineno, f"time.{node.attr}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in function_aliases
        ):
            found.add((node.lineno, f"{function_aliases[node.func.id]}()"))
    return [f"{filename}:{line} {what}" for line, what in sorted(found)]


def test_clock_checker_sees_every_way_of_reading_the_clock() -> None:
    bad = {
        "import time\nx = time.time()\n": ["f.py:2 time.time"],
        "import time\nx = int(time.monotonic())\n": ["f.py:2 time.monotonic"],
        "import time as clock\nclock.time_ns()\n": ["f.py:2 time.time_ns"],
        "import time\ndef f(now=lambda: time.time()):\n    pass\n": ["f.py:2 time.time"],
        "import time\nC = dict(wall=time.time)\n": ["f.py:2 time.time"],
        "from time import monotonic as now\nnow()\n": [
            "f.py:1 from time import monotonic",
            "f.py:2 monotonic()",
        ],
        "def f():\n    import time\n    return time.monotonic_ns()\n": ["f.py:3 time.monotonic_ns"],
    }
    for source, expected in bad.items():
        assert clock_reads(source, "f.py") == expected, source
    fine = [
        "import time\nstamp = time.strftime('%H:%M:%S')\n",
        "x = clock.wall()\ny = clock.monotonic()\n",
        "import trio\nnow = trio.current_time()\n",
        "record(time=self.clock.wall())\n",
        "from time import strftime\nstrftime('%H')\n",
        "import datetime\nx = datetime.time()\n",
    ]
    for source in fine:
        assert clock_reads(source, "f.py") == [], source


def _clock_injected_sources() -> list[Path]:
    paths: set[Path] = set()
    for rel in CLOCK_INJECTED:
        target = REPO / rel
        if target.is_dir():
            paths.update(target.rglob("*.py"))
        elif target.exists():
            paths.add(target)
    return sorted(paths)


def test_daemon_and_links_read_the_clock_only_through_clock() -> None:
    sources = _clock_injected_sources()
    assert any(p.parent.name == "daemon" for p in sources)
    assert any(p.parent.name == "net" for p in sources)
    found = []
    for path in sources:
        rel = path.relative_to(REPO).as_posix()
        found += clock_reads(path.read_text(encoding="utf-8"), rel)
    assert found == []


# -- (e) coordinator/policy* is pure ----------------------------------------------------------

#: ``impurities`` is written for the core (anything of the coordinator is "outside");
#: the policy modules may import each other.
_POLICY_SIBLING = re.compile(r" imports the coordinator: coordinator\.policy\w*(\.\w+)*$")


def policy_impurities(source: str, module: str, *, is_package: bool) -> list[str]:
    """``tests/core/test_pure.impurities`` as the core sees it, but the policy's own modules."""
    found = impurities(source, module, is_package=is_package, package="p2pupdate.core")
    return [p for p in found if not _POLICY_SIBLING.search(p)]


def test_policy_checker_is_the_core_checker() -> None:
    bad_lines = [
        "import time",
        "import random",
        "from trio import sleep",
        "from p2pupdate.daemon import node",
        "from p2pupdate import coordclient",
        "from coordinator import service",
        "from .service import Replica",
        "open('state.db')",
    ]
    for line in bad_lines:
        assert policy_impurities(line, "coordinator.policy_batch", is_package=False), line
    fine = [
        "import math",
        "import numpy as np",
        "from p2pupdate.core.gates import GateResult",
        "from .policy import decide",
        "from coordinator.policy import PolicyConfig",
        "from . import batch",
    ]
    for line in fine[:-1]:
        assert policy_impurities(line, "coordinator.policy_batch", is_package=False) == [], line
    assert policy_impurities(fine[-1], "coordinator.policy", is_package=True) == []


def _policy_modules() -> list[Module]:
    modules = discover(REPO, ["coordinator"])
    return [m for n, m in modules.items() if re.fullmatch(r"coordinator\.policy\w*(\.\w+)*", n)]


def test_coordinator_policy_imports_no_io_module() -> None:
    policy = _policy_modules()
    assert "coordinator.policy" in {m.name for m in policy}
    problems = []
    for m in policy:
        problems += policy_impurities(
            m.path.read_text(encoding="utf-8"), m.name, is_package=m.is_package
        )
    assert problems == []
