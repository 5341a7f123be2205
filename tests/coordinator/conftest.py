"""Fixtures of the coordinator service tests: replica processes, and the launcher tests'
real nodes and builds (for the end-to-end test)."""

from __future__ import annotations

from tests.launcher.conftest import builds
from tests.launcher.harness import nodes

from .service_helpers import replicas

__all__ = ["builds", "nodes", "replicas"]
