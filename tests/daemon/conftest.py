"""The daemon tests use the launcher tests' fixtures: real nodes, builds of this tree."""

from __future__ import annotations

from tests.launcher.conftest import builds
from tests.launcher.harness import nodes

__all__ = ["builds", "nodes"]
