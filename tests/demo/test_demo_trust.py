"""``scripts/demo`` part 3, the trust workflow, alone (``DEMO_PARTS=trust``): it signs, verifies
and attacks real documents with the CLI and must exit 0 (every refusal happened).  Parts 1
and 2 have their own tests (test_demo.py, test_demo_homes.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(work: Path, parts: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEMO_PARTS": parts}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "demo"), str(work)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_the_trust_walk_through_runs_to_the_end(tmp_path: Path) -> None:
    done = run(tmp_path / "demo", "trust")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Part 3: the trust workflow" in out
    assert "refused (exit 1), as it must be" in out
    assert not (tmp_path / "demo" / "fleet").exists()  # part 1 did not run


def test_an_unknown_part_is_a_usage_error(tmp_path: Path) -> None:
    done = run(tmp_path / "demo", "fleet bogus")
    assert done.returncode == 2 and "unknown part 'bogus'" in done.stderr
    assert not (tmp_path / "demo" / "fleet").exists()
