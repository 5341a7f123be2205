"""``p2pupdate-coordinator serve / publish / status / nudge`` as real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from coordinator.cli import SERVE_DEFAULTS, lease_ttl_warning
from p2pupdate.core.timing import UpdaterConfig

from .service_helpers import REPO, Network, ReplicaProcesses, artifact_of, http


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_publish_status_and_nudge_through_the_cli(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net")
    rp = replicas.start(net, 1)
    data = os.urandom(3000)
    sha = artifact_of(data)
    files = {
        "v2.tar.gz": data,
        "scope": net.scope(sha, serial=1),
        "allow": net.allowlist(1, [sha]),
        "release": net.release(data, "v2", 2),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    # given in the "wrong" order: documents go first, in trust order, then artifacts
    r = cli("publish", "--url", rp.url, *(str(tmp_path / n) for n in files))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("published") == 4

    forged = bytearray(files["allow"])
    forged[-5] ^= 1
    (tmp_path / "forged").write_bytes(bytes(forged))
    r = cli("publish", "--url", rp.url, str(tmp_path / "forged"))
    assert r.returncode == 1
    assert "REFUSED (400)" in r.stderr and "signature" in r.stderr

    r = cli("nudge", "--artifact", sha, "--dir", str(net.dir), "--url", rp.url)
    assert r.returncode == 0, r.stderr
    assert "nudge serial" in r.stdout

    r = cli("status", "--url", rp.url)
    assert r.returncode == 0, r.stderr
    assert "allowlist: v1 (1 artifacts)" in r.stdout
    assert "scope:     scope serial 1: everyone" in r.stdout
    assert "v2 #2" in r.stdout
    r = cli("status", "--url", rp.url, "--json")
    st = json.loads(r.stdout)
    assert st["documents"]["allowlist"]["artifacts"] == [sha]

    r = cli("status", "--url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "cannot reach" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_serve_refuses_a_key_that_is_not_a_replica(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    r = cli("serve", "--dir", str(net.dir), "--replica", "2", "--listen", "127.0.0.1:0")
    assert r.returncode == 2
    assert "coordinator-2.pem" in r.stderr and "Traceback" not in r.stderr


# -- serve refuses what it cannot run with: one line, exit 2, nothing written ------------


def assert_one_line_usage_error(r: subprocess.CompletedProcess[str]) -> None:
    shown = f"exit {r.returncode}\n--- stdout ---\n{r.stdout}--- stderr ---\n{r.stderr}"
    assert "Traceback" not in r.stderr, shown
    assert r.returncode == 2, shown
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, shown
    assert lines[0].startswith("p2pupdate-coordinator") and ": error: " in lines[0], shown


def serve_refused(*args: str) -> subprocess.CompletedProcess[str]:
    """``serve`` that must refuse at once (a short timeout: the old code served forever)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_serve_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve_refused("--dir", str(net.dir), "--listen", f"127.0.0.1:{port}")
    assert_one_line_usage_error(r)
    assert str(port) in r.stderr
    assert not (net.dir / "replica-1").exists(), "refused, yet it made the replica's state"


def test_serve_on_an_address_that_is_not_one_is_one_line(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    r = serve_refused("--dir", str(net.dir), "--listen", "256.1.1.1:80")
    assert_one_line_usage_error(r)
    assert "256.1.1.1" in r.stderr
    assert not (net.dir / "replica-1").exists()


def test_serve_with_a_file_as_dir_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a network\n")
    r = serve_refused("--dir", str(afile), "--listen", "127.0.0.1:0")
    assert_one_line_usage_error(r)
    assert afile.read_text() == "not a network\n"


def test_serve_with_a_missing_dir_writes_nothing(tmp_path: Path) -> None:
    r = serve_refused("--dir", str(tmp_path / "nope"), "--listen", "127.0.0.1:0")
    assert_one_line_usage_error(r)
    assert not (tmp_path / "nope").exists()


def test_serve_with_a_file_as_state_dir_is_one_line(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    afile = tmp_path / "afile"
    afile.write_text("not a state dir\n")
    r = serve_refused("--dir", str(net.dir), "--state-dir", str(afile), "--listen", "127.0.0.1:0")
    assert_one_line_usage_error(r)
    assert afile.read_text() == "not a state dir\n"


def test_serve_refuses_an_absurd_max_concurrent(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    r = serve_refused(
        "--dir", str(net.dir), "--listen", "127.0.0.1:0", "--max-concurrent", "999999999999"
    )
    assert_one_line_usage_error(r)
    assert "--max-concurrent" in r.stderr
    assert not (net.dir / "replica-1").exists()


def test_one_process_per_replica_state_dir(tmp_path: Path, replicas: ReplicaProcesses) -> None:
    """A second ``serve`` of replica 1 on its state dir exits at once, and says why."""
    net = Network(tmp_path / "net")
    first = replicas.start(net, 1)
    state_dir = net.dir / "replica-1"
    for extra in ([], ["--state-dir", str(state_dir)]):
        r = cli("serve", "--dir", str(net.dir), "--listen", "127.0.0.1:0", "--first-start", *extra)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert f"replica 1's state dir {state_dir} is in use by another process" in lines[0]
        assert f"(pid {first.proc.pid})" in lines[0]
        assert r.stdout == ""
    # the first one was not disturbed
    code, st = http("GET", f"{first.url}/status")
    assert code == 200 and st["replica"]["index"] == 1
    # the kernel drops the lock with its holder, however it died: the lock file stays behind
    # and does not keep the replica from starting again
    first.kill()
    assert (state_dir / "lock").exists()
    again = replicas.start(net, 1)
    code, _ = http("GET", f"{again.url}/status")
    assert code == 200


def test_serve_state_dir_that_is_a_file(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = cli(
        "serve", "--dir", str(net.dir), "--state-dir", str(not_a_dir), "--listen", "127.0.0.1:0"
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert str(not_a_dir) in r.stderr


def test_serve_warns_of_a_lease_ttl_inside_the_nodes_swap_margin(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """``--lease-ttl 60s`` against the nodes' default ``--swap-margin 60s``: every grant would
    come back ``lease-too-short``.  ``serve`` says so in one line at start, and still runs."""
    margin = UpdaterConfig().swap_margin
    net = Network(tmp_path / "net")
    short = replicas.start(net, 1, "--lease-ttl", f"{margin:g}s")
    warnings = [line for line in short.log.read_text().splitlines() if "warning:" in line]
    assert len(warnings) == 1, short.log.read_text()
    assert f"--lease-ttl {margin:g}s" in warnings[0]
    assert f"--swap-margin {margin:g}s" in warnings[0]
    assert "lease-too-short" in warnings[0] and f"above {margin:g}s" in warnings[0]
    code, st = http("GET", f"{short.url}/status")
    assert code == 200 and st["replica"]["token_ttl"] == margin
    short.kill()
    # one second more leaves the nodes something to drain in: no warning
    net2 = Network(tmp_path / "net2")
    fine = replicas.start(net2, 1, "--lease-ttl", f"{margin + 1:g}s")
    assert "warning:" not in fine.log.read_text()
    assert lease_ttl_warning(SERVE_DEFAULTS.token_ttl) is None
    assert lease_ttl_warning(1) is not None


# -- status and publish when a replica is down, or the URL is not a replica -----------------


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _NotAReplica:
    """A plain web server on loopback that answers every request with ``code`` and ``body``."""

    def __init__(self, code: int, body: bytes) -> None:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                self.send_response(outer.code)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.code, self.body = code, body
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_status_with_one_replica_down_shows_the_live_ones(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net", replicas=3, quorum=2)
    live = [replicas.start(net, 1), replicas.start(net, 3)]
    down = f"http://127.0.0.1:{_free_port()}"
    urls = ["--url", live[0].url, "--url", down, "--url", live[1].url]
    r = cli("status", *urls)
    assert "Traceback" not in r.stderr
    assert r.returncode == 1, r.stderr  # partial: one replica did not answer
    assert f"{live[0].url}: replica 1 of 3" in r.stdout
    assert f"{live[1].url}: replica 3 of 3" in r.stdout
    assert f"{down}: DOWN: cannot reach the coordinator" in r.stdout
    assert "1 of 3 replicas did not answer" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("status", "--json", *urls)
    assert r.returncode == 1, r.stderr
    st = json.loads(r.stdout)
    assert st[live[0].url]["replica"]["index"] == 1
    assert st[live[1].url]["replica"]["index"] == 3
    assert "cannot reach the coordinator" in st[down]["error"]


def test_publish_with_one_replica_down_uses_the_others_and_names_the_one(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    net = Network(tmp_path / "net", replicas=2, quorum=1)
    live = replicas.start(net, 1)
    down = f"http://127.0.0.1:{_free_port()}"
    doc = tmp_path / "allow"
    doc.write_bytes(net.allowlist(1, [artifact_of(b"x" * 100)]))
    r = cli("publish", "--url", down, "--url", live.url, str(doc))
    assert "Traceback" not in r.stderr
    assert r.returncode == 1, r.stderr
    assert f"{live.url}: {doc}: published" in r.stdout
    missed = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(missed) == 1, r.stderr
    assert missed[0].startswith(f"{down}: {doc}: NOT PUBLISHED: cannot reach the coordinator")
    code, st = http("GET", f"{live.url}/status")
    assert code == 200 and st["documents"]["allowlist"]["version"] == 1


def test_publish_and_status_against_a_server_that_is_not_a_replica(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    doc = tmp_path / "allow"
    doc.write_bytes(net.allowlist(1, [artifact_of(b"x" * 100)]))
    for code, body in ((404, b"<html>\n<h1>Not Found</h1>\n</html>\n"), (200, b"hello\nworld\n")):
        web = _NotAReplica(code, body)
        try:
            r = cli("publish", "--url", web.url, str(doc))
            assert "Traceback" not in r.stderr
            assert r.returncode == 1, (code, r.stdout, r.stderr)
            assert "published" not in r.stdout, r.stdout  # a 200 from a stranger is no publish
            lines = [line for line in r.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, r.stderr
            assert "not a coordinator replica" in lines[0], lines[0]
            r = cli("status", "--url", web.url)
            assert "Traceback" not in r.stderr
            assert r.returncode == 1, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert "not a coordinator replica" in r.stderr
        finally:
            web.close()


async def test_serve_report_budget_sets_the_heartbeat_its_fleet_is_asked_for(
    tmp_path: Path, replicas: ReplicaProcesses
) -> None:
    """``serve --report-budget 1``: 32 registered nodes are asked for a heartbeat every
    32 s (nodes / budget, over the 30 s floor); the default budget would say 30 s."""
    import trio

    from p2pupdate.core import coordproto as proto

    from .service_helpers import LightNode

    net = Network(tmp_path / "net")
    rp = replicas.start(net, 1, "--report-budget", "1")
    nodes = [LightNode(net, [rp.url]) for _ in range(32)]
    async with trio.open_nursery() as nursery:
        for n in nodes:
            await n.start(nursery)
            await n.status()
        report = proto.StatusReport(
            version="v1", artifact="0" * 64, state="serving", pool="default",
            estimate=None, held=None, addrs=(),
        )  # fmt: skip
        (ack,) = await nodes[0].client.acknowledged(report)
        nursery.cancel_scope.cancel()
    assert isinstance(ack, proto.StatusAck) and ack.next_report_s == 32.0, ack
    bad = cli("serve", "--dir", str(net.dir), "--report-budget", "0")
    assert bad.returncode == 2 and "--report-budget" in bad.stderr, bad.stderr
