"""Fixtures of the launcher tests (shared with tests/daemon)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import REPO, Build, make_build, nodes, patched_tree

__all__ = ["builds", "nodes"]


class Builds:
    """Builds of this working tree, made once per session (about 0.1 s each)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, Build] = {}

    def get(self, version: str, counter: int) -> Build:
        key = f"{version}/{counter}"
        if key not in self._cache:
            d = self.directory / key.replace("/", "-")
            d.mkdir()
            self._cache[key] = make_build(d, version, counter)
        return self._cache[key]

    def broken(self, kind: str, version: str, counter: int) -> Build:
        """``import``: the daemon dies at import; ``health``: it starts, fails its self-test."""
        key = f"broken-{kind}-{version}/{counter}"
        if key not in self._cache:
            d = self.directory / key.replace("/", "-")
            d.mkdir()
            if kind == "import":
                edits = {
                    "p2pupdate/daemon/__main__.py": lambda t: (
                        'raise RuntimeError("broken build: dies at import")\n' + t
                    )
                }
            elif kind == "health":
                edits = {
                    "p2pupdate/daemon/health.py": lambda t: t.replace(
                        "problems: list[str] = []",
                        'problems: list[str] = ["injected: this build is broken"]',
                    )
                }
            else:  # pragma: no cover
                raise ValueError(kind)
            source = patched_tree(d, edits)
            self._cache[key] = make_build(d, version, counter, source=source)
        return self._cache[key]


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    assert (REPO / "p2pupdate" / "__init__.py").is_file()
    return Builds(tmp_path_factory.mktemp("builds"))
