"""``p2pupdate node --rtc {auto,on,off}`` (contract C3): checked before anything starts.

``--rtc on`` with a loopback-only gossip address (ICE never offers a loopback candidate)
or without gossip at all is one line on stderr and exit 2, from the real command; the
launcher forwards the flag to the daemon it starts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from p2pupdate.daemon.options import DaemonOptions, add_daemon_arguments, forward_args

from ..coordinator.service_helpers import Network


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(Network(tmp_path_factory.mktemp("rtcflag") / "net").dir / "root.msgpack")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--gossip-listen", "127.0.0.1:0"], "beyond this machine"),
        (["--peer", "127.0.0.1:7946"], "beyond this machine"),  # gossip on 127.0.0.1:0
        (["--gossip-listen", "127.0.0.1:0", "--gossip-advertise", "localhost"], "beyond"),
        ([], "needs gossip"),
    ],
)
def test_rtc_on_without_a_reachable_gossip_address_is_one_line_and_exit_2(
    tmp_path: Path, root: str, args: list[str], says: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    argv = ["--state-dir", str(state), "--work", "none", "--trust-root", root, "--rtc", "on"]
    proc = subprocess.run(
        [sys.executable, "-m", "p2pupdate", "node", *argv, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "--rtc on" in lines[0] and says in lines[0], proc.stderr
    assert list(state.iterdir()) == []


def test_rtc_is_a_daemon_option_the_launcher_forwards() -> None:
    p = argparse.ArgumentParser()
    add_daemon_arguments(p, for_launcher=True)
    assert forward_args(p.parse_args(["--rtc", "off"])) == ["--rtc", "off"]
    assert forward_args(p.parse_args([])) == []  # not given: the daemon's own default
    d = argparse.ArgumentParser()
    add_daemon_arguments(d, for_launcher=False)
    assert DaemonOptions.from_namespace(d.parse_args([])).rtc == "auto"
    with pytest.raises(SystemExit):
        d.parse_args(["--rtc", "sometimes"])
