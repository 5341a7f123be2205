"""``scripts/build-artifact`` run by a python without the project's dependencies (P7).

It was ``ModuleNotFoundError: No module named 'nacl'`` (a traceback).  Now it runs itself
again under the repository's ``.venv`` when there is one, and otherwise prints one line
saying what to run, exit 2.  ``python3 -I -S`` is a python that lacks them: no site
directories, so neither the system's packages nor the ``.venv``'s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build-artifact"
BARE = shutil.which("python3") or "/usr/bin/python3"


def _bare_lacks_nacl() -> bool:
    probe = subprocess.run([BARE, "-I", "-S", "-c", "import nacl"], capture_output=True)
    return probe.returncode != 0


pytestmark = pytest.mark.skipif(
    not _bare_lacks_nacl(), reason="this machine's bare python3 -I -S has PyNaCl"
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.pop("P2PUPDATE_BUILD_ARTIFACT_REEXEC", None)
    return env


def test_a_python_without_the_dependencies_runs_it_under_the_venv(tmp_path: Path) -> None:
    assert (REPO / ".venv" / "bin" / "python").is_file()  # the test suite runs from it
    bare = tmp_path / "bare.tar.gz"
    proc = subprocess.run(
        [BARE, "-I", "-S", str(SCRIPT), "--version", "v9", "-o", str(bare)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    venv = tmp_path / "venv.tar.gz"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--version", "v9", "-o", str(venv)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert bare.read_bytes() == venv.read_bytes()  # the same build, byte for byte


def test_without_a_venv_it_says_what_to_run_in_one_line(tmp_path: Path) -> None:
    """A checkout with no .venv yet: the script and the package, nothing set up."""
    tree = tmp_path / "checkout"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, tree / "scripts" / "build-artifact")
    for package in ("p2pupdate", "coordinator"):
        (tree / package).symlink_to(REPO / package)
    out = tmp_path / "out.tar.gz"
    script = tree / "scripts" / "build-artifact"
    proc = subprocess.run(
        [BARE, "-I", "-S", str(script), "--version", "v9", "-o", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "no module 'nacl'" in lines[0] and "scripts/_setup.sh" in lines[0], lines[0]
    assert not out.exists()
