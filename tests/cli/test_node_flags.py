"""``p2pupdate node`` checks every flag before anything starts (P7, "The command line").

Each bad flag runs the real command as a child process and must end it with exit 2 and
one line on stderr naming the flag: no traceback, no launcher, no daemon (nothing left in
the child's session), and nothing written in the state directory.  Before, a garbage
``--trust-root``, ``--coordinator ftp://x``, a ``--zeroconf`` address this machine does not
have, ``--host 'a b'`` or ``--max-attempts 1000000000`` started the launcher, whose daemon
then failed at every start.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..coordinator.service_helpers import Network

#: An address no machine has (TEST-NET-1, RFC 5737).
ABSENT = "192.0.2.77"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("flags")
    net = Network(d / "net")
    (d / "garbage.bin").write_bytes(b"\x93garbage, not a root" * 10)
    (d / "a-dir").mkdir()
    (d / "a-file").write_text("not a directory\n")
    return {
        "root": str(net.dir / "root.msgpack"),
        "garbage": str(d / "garbage.bin"),
        "dir": str(d / "a-dir"),
        "file": str(d / "a-file"),
        "missing": str(d / "missing"),
    }


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port something on this machine listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


#: (test id, the flag the message must name, the arguments; {name} from ``files``).
CASES: list[tuple[str, str, list[str]]] = [
    ("trust-root-garbage", "--trust-root", ["--trust-root", "{garbage}"]),
    ("trust-root-dir", "--trust-root", ["--trust-root", "{dir}"]),
    ("trust-root-missing", "--trust-root", ["--trust-root", "{missing}"]),
    ("coordinator-ftp", "--coordinator", ["--trust-root", "{root}", "--coordinator", "ftp://x"]),
    ("coordinator-garbage", "--coordinator", ["--trust-root", "{root}", "--coordinator", "@@"]),
    ("coordinator-bare-word", "--coordinator", ["--trust-root", "{root}", "--coordinator", "x"]),
    (
        "coordinator-path",
        "--coordinator",
        ["--trust-root", "{root}", "--coordinator", "http://h/p"],
    ),
    (
        "coordinator-port-0",
        "--coordinator",
        ["--trust-root", "{root}", "--coordinator", "http://h:0"],
    ),
    ("coordinator-no-root", "--coordinator", ["--coordinator", "http://127.0.0.1:8470"]),
    (
        "zeroconf-not-here",
        "--zeroconf",
        ["--trust-root", "{root}", "--gossip-listen", "127.0.0.1:0", "--zeroconf", ABSENT],
    ),
    ("zeroconf-a-name", "--zeroconf", ["--trust-root", "{root}", "--zeroconf", "eth0"]),
    (
        "zeroconf-nothing-to-announce",
        "--zeroconf",
        ["--trust-root", "{root}", "--zeroconf", "127.0.0.1"],
    ),
    ("host-with-a-space", "--host", ["--host", "a b"]),
    ("host-not-here", "--host", ["--host", ABSENT]),
    ("port-too-big", "--port", ["--port", "70000"]),
    ("max-attempts-huge", "--max-attempts", ["--max-attempts", "1000000000"]),
    ("max-attempts-zero", "--max-attempts", ["--max-attempts", "0"]),
    ("peer-no-root", "--peer", ["--peer", "127.0.0.1:7946"]),
    ("peer-port-0", "--peer", ["--trust-root", "{root}", "--peer", "127.0.0.1:0"]),
    ("peer-bad-host", "--peer", ["--trust-root", "{root}", "--peer", "a b:7946"]),
    (
        "gossip-listen-not-here",
        "--gossip-listen",
        ["--trust-root", "{root}", "--gossip-listen", f"{ABSENT}:0"],
    ),
    ("gossip-listen-no-root", "--gossip-listen", ["--gossip-listen", "127.0.0.1:0"]),
    ("gossip-advertise-bad", "--gossip-advertise", ["--gossip-advertise", "a/b"]),
    ("gossip-round-an-hour", "--gossip-round", ["--gossip-round", "1h"]),
    ("capacity-nan", "--capacity", ["--capacity", "nan"]),
    ("capacity-huge", "--capacity", ["--capacity", "1e300"]),
    ("aggregate-stub-inf", "--aggregate-stub", ["--aggregate-stub", "inf:1:1"]),
    ("pool-empty", "--pool", ["--pool", ""]),
    ("work-unknown", "--work", ["--work", "bogus"]),
    ("check-interval-zero", "--check-interval", ["--check-interval", "0"]),
    ("probation-tiny", "--probation", ["--probation", "0.0000001"]),
    ("health-never-fits", "--health-checks", ["--probation", "10s", "--health-checks", "100"]),
    ("offer-dir-a-file", "--offer-dir", ["--offer-dir", "{file}"]),
    ("offer-dir-missing", "--offer-dir", ["--offer-dir", "{missing}"]),
    ("initial-artifact-dir", "--initial-artifact", ["--initial-artifact", "{dir}"]),
    ("initial-artifact-missing", "--initial-artifact", ["--initial-artifact", "{missing}"]),
    ("initial-artifact-garbage", "--initial-artifact", ["--initial-artifact", "{garbage}"]),
    ("state-dir-a-file", "--state-dir", ["--state-dir", "{file}"]),
]


def _session_members(sid: int) -> list[int]:
    """Processes still in the child's session (a launcher or daemon it left behind)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:  # field 6 of stat: the session id
            out.append(int(entry))
    return out


@pytest.mark.parametrize(("flag", "args"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_flag_is_one_line_and_exit_2_with_nothing_started(
    tmp_path: Path, files: dict[str, str], busy_port: int, flag: str, args: list[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    values = {**files, "busy": str(busy_port)}
    argv = [a.format(**values) for a in args]
    if "--state-dir" not in argv:
        argv = ["--state-dir", str(state), *argv]
    before = Path(files["file"]).read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pupdate", "node", "--work", "none", *argv]
        if "--work" not in argv and flag not in ("--host", "--port")
        else [sys.executable, "-m", "p2pupdate", "node", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # it started something: stop it, and fail below
            os.killpg(proc.pid, 9)
            proc.wait()
    left = _session_members(proc.pid)
    for pid in left:
        os.kill(pid, 9)
    text = err.decode(errors="replace")
    assert proc.returncode == 2, text
    assert out == b""
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert flag in lines[0], text
    assert "Traceback" not in text
    assert not left, f"left running: {left}"
    assert list(state.iterdir()) == [], "something was written in the state dir"
    assert Path(files["file"]).read_bytes() == before


def test_the_good_flags_still_start_the_node(tmp_path: Path, files: dict[str, str]) -> None:
    """Control: the same command with good flags passes every check and starts (it is
    stopped once the launcher says it bootstrapped)."""
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "p2pupdate",
            "node",
            "--state-dir",
            str(state),
            "--work",
            "none",
            "--trust-root",
            files["root"],
            "--gossip-listen",
            "127.0.0.1:0",
            "--max-attempts",
            "10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        assert "bootstrapped slot" in first, first
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def test_a_port_in_use_is_not_a_flag_mistake(busy_port: int) -> None:
    """A port another process holds passes the flag check: it is a passing condition
    (an old instance still stopping), and exit 2 would need a person; the daemon's
    listener retries it.  An address this machine lacks is refused."""
    from p2pupdate.net.addresses import bind_problem

    assert bind_problem("127.0.0.1", busy_port) is None
    assert bind_problem(ABSENT, 0) is not None


@pytest.mark.parametrize(
    ("flag", "args"),
    [
        ("--coordinator", ["--coordinator", "ws://127.0.0.1:9/"]),
        ("--peer", ["--peer", "127.0.0.1:7946"]),
    ],
)
def test_the_daemon_on_its_own_says_the_same_as_the_node_command(
    tmp_path: Path, flag: str, args: list[str]
) -> None:
    """The daemon can be started without the launcher: it refuses the same options with the
    same line (one rule, ``options.trust_root_missing``), before it reads or writes state."""
    from argparse import Namespace

    from p2pupdate.daemon.options import trust_root_missing

    state = tmp_path / "state"
    state.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2pupdate.daemon",
            "--state-dir",
            str(state),
            "--slot",
            "0" * 64,
            *args,
        ],
        capture_output=True,
        timeout=30,
        cwd=tmp_path,
    )
    text = proc.stderr.decode(errors="replace")
    assert proc.returncode == 2, text
    assert "Traceback" not in text
    expected = trust_root_missing(
        Namespace(
            trust_root=None,
            coordinator=args[1:] if flag == "--coordinator" else [],
            gossip_listen=None,
            peer=args[1:] if flag == "--peer" else [],
            zeroconf=(),
        )
    )
    assert expected and expected in text and flag in text
    assert list(state.iterdir()) == []
