"""Who may read ``/status``, ``/metrics`` (``coordinator.readaccess``), and the operator's
terminal on top of them: ``status --token-file``, ``status --watch``, ``why NODE_ID``.

In-process replicas on real sockets: a client on 127.0.0.1, and one on this machine's own
non-loopback address (a real connection the server sees from a non-loopback peer; skipped
where the machine has none), plus the rule itself with peer strings."""

from __future__ import annotations

import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator import cli as coordinator_cli
from coordinator.readaccess import ReadAccess, is_loopback, is_read_path
from coordinator.server import Server
from coordinator.service import Replica, ServiceConfig
from coordinator.status import node_status
from p2pupdate.cli.common import EXIT_OK, EXIT_REJECTED, EXIT_USAGE
from p2pupdate.core import crypto

from .service_helpers import LightNode, Network
from .test_service import A, setup

TOKEN = b"r3ad-T0ken_for-tests"


def get(url: str, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header("authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def aget(url: str, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(get, url, auth)


def own_address() -> str | None:
    """This machine's address toward the outside (no packet is sent), if not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if is_loopback(f"{addr}:0") or addr == "0.0.0.0" else addr


@contextlib.asynccontextmanager
async def serving(
    net: Network, host: str = "127.0.0.1", access: ReadAccess | None = None, **policy: Any
) -> AsyncIterator[tuple[Replica, str]]:
    from coordinator.policy import PolicyConfig

    replica = Replica(
        ServiceConfig(network_dir=net.dir, first_start=True, policy=PolicyConfig(**policy))
    )
    try:
        async with trio.open_nursery() as nursery:
            server = Server(replica, read_access=access)
            port = await nursery.start(server.serve, host, 0)
            yield replica, f"http://{host}:{port}"
            nursery.cancel_scope.cancel()
    finally:
        replica.store.close()


# -- the rule ---------------------------------------------------------------------------------


def test_loopback_is_127_8_and_1_whatever_the_spelling() -> None:
    for peer in ("127.0.0.1:5000", "127.0.0.9:1", "::1:80", "[::1]:80", "::ffff:127.0.0.1:80"):
        assert is_loopback(peer), peer
    for peer in ("192.0.2.7:4000", "10.0.0.1:80", "2001:db8::1:80", "::ffff:10.0.0.1:1", "", "x"):
        assert not is_loopback(peer), peer


def test_the_rule_without_a_token_refuses_a_non_loopback_peer_with_a_hint() -> None:
    rule = ReadAccess()
    assert rule.check("127.0.0.1:40000", None) is None
    refused = rule.check("192.0.2.7:40000", b"Bearer anything")
    assert refused is not None and refused.status == 403
    body = json.loads(refused.body())
    assert body["error"] == "loopback-only" and "serve --read-token-file" in body["hint"]
    assert rule.check("", None) is not None  # not a socket: not loopback


def test_the_rule_with_a_token_wants_it_from_everyone() -> None:
    rule = ReadAccess(token=TOKEN)
    for peer in ("127.0.0.1:1", "192.0.2.7:1"):
        for auth in (None, b"Basic " + TOKEN, b"Bearer", b"Bearer wrong", b"Bearer " + TOKEN[:-1]):
            refused = rule.check(peer, auth)
            assert refused is not None and refused.status == 401, (peer, auth)
            assert dict(refused.headers)["www-authenticate"].startswith("Bearer")
        assert rule.check(peer, b"Bearer " + TOKEN) is None
        assert rule.check(peer, b"bearer  " + TOKEN + b" ") is None
    assert "r3ad" not in repr(rule)


def test_the_guarded_paths() -> None:
    for path in ("/status", "/status/node/ab", "/metrics", "/ui", "/ui/app.js"):
        assert is_read_path(path)
    for path in ("/healthz", "/v1/node", "/v1/publish", "/v1/documents", "/v1/artifacts/0"):
        assert not is_read_path(path)


# -- the server -------------------------------------------------------------------------------


async def test_without_a_token_loopback_reads_and_another_address_is_refused(
    tmp_path: Path,
) -> None:
    net = Network(tmp_path / "net")
    async with serving(net) as (_replica, url):
        for path in ("/status", "/metrics", "/healthz"):
            code, _h, _b = await aget(f"{url}{path}")
            assert code == 200, path
    addr = own_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    async with serving(net, addr) as (_replica, url):
        for path in ("/status", "/metrics", "/status/node/ab"):
            code, _h, body = await aget(f"{url}{path}")
            assert code == 403, path
            answer = json.loads(body)
            assert answer["error"] == "loopback-only"
            assert "serve --read-token-file" in answer["hint"]
            assert b"default" not in body  # nothing of the status leaks
        # what stays open: health, documents (signed), the artifact GETs (public bytes)
        assert (await aget(f"{url}/healthz"))[0] == 200
        assert (await aget(f"{url}/v1/documents"))[0] == 200
        assert (await aget(f"{url}/v1/artifacts/{'0' * 64}"))[0] == 404


async def test_with_a_token_the_header_decides_from_any_address(tmp_path: Path) -> None:
    net = Network(tmp_path / "net")
    hosts = ["127.0.0.1"] + [a for a in [own_address()] if a is not None]
    for host in hosts:
        async with serving(net, host, ReadAccess(token=TOKEN)) as (_replica, url):
            for path in ("/status", "/metrics"):
                code, headers, body = await aget(f"{url}{path}")
                assert code == 401 and json.loads(body)["error"] == "read-token-required"
                assert headers["www-authenticate"].startswith("Bearer")
                code, _h, body = await aget(f"{url}{path}", "Bearer nope")
                assert code == 401 and json.loads(body)["error"] == "read-token-wrong"
                code, _h, body = await aget(f"{url}{path}", f"Bearer {TOKEN.decode()}")
                assert code == 200, (host, path, body[:200])
            assert (await aget(f"{url}/healthz"))[0] == 200


# -- the CLI ----------------------------------------------------------------------------------


async def run_cli(*argv: str) -> int:
    return await trio.to_thread.run_sync(coordinator_cli.main, list(argv))


def test_serve_refuses_an_empty_or_missing_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = Network(tmp_path / "net")
    empty = tmp_path / "empty"
    empty.write_text(" \n")
    two = tmp_path / "two"
    two.write_text("a b\n")
    for path in (empty, tmp_path / "missing", two, tmp_path):
        argv = ["serve", "--dir", str(net.dir), "--listen", "127.0.0.1:0"]
        code = coordinator_cli.main([*argv, "--read-token-file", str(path)])
        err = capsys.readouterr().err
        assert code == EXIT_USAGE and "--read-token-file" in err, (path, err)
    assert not (net.dir / "replica-1").exists()  # refused before any state is made


async def test_status_sends_the_token_file_and_without_it_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    net = Network(tmp_path / "net")
    token_file = tmp_path / "token"
    token_file.write_bytes(TOKEN + b"\n")
    async with serving(net, access=ReadAccess(token=TOKEN)) as (_replica, url):
        capsys.readouterr()
        assert await run_cli("status", "--url", url, "--token-file", str(token_file)) == EXIT_OK
        assert "allowlist: none published" in capsys.readouterr().out
        assert await run_cli("status", "--url", url) == EXIT_REJECTED
        err = capsys.readouterr().err
        assert "HTTP 401" in err and "read-token-required" in err and "--token-file" in err


async def test_status_watch_redraws_until_ctrl_c(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    net = Network(tmp_path / "net")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(coordinator_cli, "_watch_sleep", sleep)
    async with serving(net) as (_replica, url):
        capsys.readouterr()
        down = "http://127.0.0.1:9"
        assert await run_cli("status", "--watch", "0.5", "--url", url, "--url", down) == EXIT_OK
    out = capsys.readouterr().out
    assert waits == [0.5, 0.5, 0.5]
    assert out.count("\x1b[H\x1b[2J") == 3
    assert out.count(f"{url}: replica 1 of 1") == 3
    assert out.count(f"{down}: DOWN: cannot reach") == 3


async def test_why_names_the_gate_the_wait_and_the_queue_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One node holds the only slot; the other is refused by the lease budget: ``why``
    says so with its retry_after and queue position; a prefix of both is a usage
    mistake listing them; an unknown one is too."""
    net = Network(tmp_path / "net")
    keys = [crypto.SigningKey.from_seed(bytes([i]) * 32) for i in range(1, 40)]
    by_first: dict[str, list[crypto.SigningKey]] = {}
    for key in keys:
        by_first.setdefault(key.keyid[0], []).append(key)
    one, two = next(v for v in by_first.values() if len(v) >= 2)[:2]
    async with serving(net, max_concurrent=1, min_serving=0) as (replica, url):
        await setup(net, url)
        first, second = LightNode(net, [url], key=one), LightNode(net, [url], key=two)
        async with trio.open_nursery() as nursery:
            await first.start(nursery)
            await second.start(nursery)
            await first.status()
            await second.status(held=("scope", "not-yet"))
            assert (await first.ask(A)).token is not None
            assert (await second.ask(A)).token is None
            held_since = replica.asks.last_refusals[two.keyid].since
            assert (await second.ask(A)).token is None  # the same "no" again: same since
            assert replica.asks.last_refusals[two.keyid].since == held_since
            capsys.readouterr()

            assert await run_cli("why", two.keyid[:12], "--url", url, "--json") == EXIT_OK
            w = json.loads(capsys.readouterr().out)
            assert w["node"] == two.keyid and w["connected"] and w["lease"] is None
            assert w["refusal"]["gate"] == "capacity", w
            assert w["refusal"]["position"] == 1 and w["refusal"]["retry_after"] > 0
            assert w["queue"] == {"pool": "default", "position": 1, "of": 1}
            assert w["report"]["held"] == "scope/not-yet"
            assert w["refusal"]["since"] == held_since <= w["refusal"]["at"]

            assert await run_cli("why", two.keyid[:12], "--url", url) == EXIT_OK
            text = capsys.readouterr().out
            assert f"node {two.keyid} at replica 1" in text
            assert f"holds:    gate capacity: {w['refusal']['reason']}" in text
            assert "queue position 1 of 1 in pool default" in text

            assert await run_cli("why", one.keyid, "--url", url) == EXIT_OK
            assert "holds:    nothing: it holds a lease here" in capsys.readouterr().out

            assert await run_cli("why", one.keyid[0], "--url", url) == EXIT_USAGE
            err = capsys.readouterr().err
            assert one.keyid in err and two.keyid in err and "give more of the id" in err

            unknown = next(c for c in "0123456789abcdef" if c != one.keyid[0])
            assert await run_cli("why", unknown, "--url", url) == EXIT_USAGE
            assert "no-such-node" in capsys.readouterr().err
            assert await run_cli("why", "zz", "--url", url) == EXIT_USAGE
            assert "bad-node-id" in capsys.readouterr().err
            nursery.cancel_scope.cancel()
        # the route and the function answer the same (one home)
        code, direct = node_status(two.keyid, index=1, registry=replica.registry, asks=replica.asks)
        assert code == 200 and direct["refusal"]["gate"] == "capacity"
