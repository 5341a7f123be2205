"""Fixtures of the release CLI tests: a release key and a small self-contained build's deps."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pupdate.core.crypto import private_key_to_pem
from p2pupdate.launcher.artifact import Deps
from tests.core.harness import key_for

#: Two small dependencies: a self-contained build of them takes well under a second.
SMALL = ["h11>=0.14", "msgpack"]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "release.pem"
    path.write_bytes(private_key_to_pem(key_for("release")))
    return path


@pytest.fixture(scope="module")
def small_deps() -> Deps:
    return Deps.collect(SMALL)
