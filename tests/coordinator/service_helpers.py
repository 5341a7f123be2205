"""Networks, replicas and light nodes for the coordinator service tests.

``Network`` is a real network directory made by ``p2pupdate-coordinator init`` (keys for
every role, a signed root) plus helpers that sign releases, allowlists, scopes and nudges
with those keys.  ``ReplicaProcesses`` runs ``p2pupdate-coordinator serve`` as child
processes (each in its own session, killed at teardown whatever the test did);
``in_process`` runs a replica inside the test's trio run.  ``LightNode`` speaks the real
node protocol (``p2pupdate.daemon.replica``) without a daemon: 50 of them fit in one test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator.cli import main as coordinator_main
from coordinator.policy import PolicyConfig
from coordinator.server import Server
from coordinator.service import Replica, ServiceConfig
from p2pupdate.core import admission, crypto, departure
from p2pupdate.core import coordproto as proto
from p2pupdate.core import documents as docs
from p2pupdate.core.trust import TrustStore
from p2pupdate.daemon.replica import AskOutcome, QuorumClient, ReplicaLink

REPO = Path(__file__).resolve().parents[2]
ZERO = "0" * 64


class Network:
    """A network directory (``init``) and its keys, for signing test documents."""

    def __init__(
        self,
        d: Path,
        *,
        replicas: int = 1,
        quorum: int = 1,
        admission: str = "open",
        pow_bits: int = 0,
        standing_s: int = 0,
        **caps: int,
    ) -> None:
        """``admission``, ``pow_bits``, ``standing_s`` and ``caps`` (``subnet_*``) go into
        the network document this writes over ``init``'s: by default, every id counts at
        once (no proof of work, no standing time) so tests start nodes in milliseconds."""
        self.dir = d
        with contextlib.redirect_stdout(io.StringIO()):
            code = coordinator_main(
                [
                    "init",
                    str(d),
                    "--replicas",
                    str(replicas),
                    "--quorum",
                    str(quorum),
                    "--network",
                    "test",
                ]
            )
        assert code == 0
        self.root_bytes = (d / "root.msgpack").read_bytes()
        self.root = docs.open_root(self.root_bytes).doc
        self.replicas = replicas
        self.quorum = quorum
        self._serial = 0
        self.config = self.write_config(
            admission=admission, pow_bits=pow_bits, standing_s=standing_s, **caps
        )

    def write_config(self, *, version: int = 1, **values: Any) -> docs.NetworkConfig:
        """Sign (root key) and write the network document; replicas read it at start.  It
        expires with the root, as ``init``'s does (tests that move a replica's wall clock
        ahead by days still start it)."""
        now = int(time.time())
        base = admission.default_config(self.root.network).to_obj()
        base.update(values, version=version, issued=now - 10, expires=self.root.expires)
        cfg: docs.NetworkConfig = docs.NetworkConfig.from_obj(base)
        (self.dir / admission.NETWORK_FILE).write_bytes(cfg.sign([self.key("root")]).to_wire())
        return cfg

    def member(self, node: str, *, pool: str = "default", expires: int = 86400) -> bytes:
        """A member document for ``node``, signed by the operator key."""
        now = int(time.time())
        doc = docs.Member(node=node, pool=pool, issued=now - 10, expires=now + expires)
        return doc.sign([self.key("operator")]).to_wire()

    def key(self, role: str, i: int = 1) -> crypto.SigningKey:
        return crypto.private_key_from_pem((self.dir / "keys" / f"{role}-{i}.pem").read_bytes())

    def coordinator_keys(self) -> list[crypto.SigningKey]:
        return [self.key("coordinator", i) for i in range(1, self.replicas + 1)]

    def trust(self) -> TrustStore:
        return TrustStore.from_root(self.root_bytes, int(time.time()))

    def release(self, data: bytes, name: str, counter: int) -> bytes:
        now = int(time.time())
        rel = docs.Release.for_bytes(
            data, name=name, counter=counter, chunk_size=1024, issued=now, expires=now + 86400
        )
        return rel.sign([self.key("release")]).to_wire()

    def allowlist(self, version: int, artifacts: list[str], *, expires: int = 86400) -> bytes:
        now = int(time.time())
        doc = docs.Allowlist(
            version=version, issued=now - 10, expires=now + expires, artifacts=tuple(artifacts)
        )
        return doc.sign(self.coordinator_keys()).to_wire()

    def scope(
        self,
        artifact: str,
        *,
        serial: int | None = None,
        kind: str = "everyone",
        nodes: tuple[str, ...] = (),
        force: bool = False,
        signer: crypto.SigningKey | None = None,
        expires: int = 86400,
    ) -> bytes:
        now = int(time.time())
        self._serial = serial if serial is not None else self._serial + 1
        doc = docs.Scope(
            serial=self._serial,
            issued=now - 10,
            expires=now + expires,
            artifact=artifact,
            kind=kind,
            nodes=nodes,
            force=force,
        )
        return doc.sign([signer or self.key("operator")]).to_wire()


def artifact_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- HTTP ---------------------------------------------------------------------------------------


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    *,
    token: str | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """One request to a replica: ``(status, JSON answer or raw bytes)``; an HTTP error is
    an answer too.  ``token``: the read token (``serve --read-token-file``) as a bearer."""
    req = urllib.request.Request(url, data=body, method=method)
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, code = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, code = exc.read(), exc.code
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, raw


async def ahttp(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    return await trio.to_thread.run_sync(http, method, url, body)


# -- replicas -----------------------------------------------------------------------------------


@dataclass
class ReplicaProcess:
    index: int
    proc: subprocess.Popen[str]
    url: str
    log: Path

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


class ReplicaProcesses:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[ReplicaProcess] = []

    def start(
        self,
        net: Network,
        index: int = 1,
        *args: str,
        port: int = 0,
        first: bool = True,
        host: str = "127.0.0.1",
    ) -> ReplicaProcess:
        log = self.tmp / f"replica-{index}-{len(self.started)}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coordinator.cli",
                "serve",
                "--dir",
                str(net.dir),
                "--replica",
                str(index),
                "--listen",
                f"{host}:{port}",
                *(["--first-start"] if first else []),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
            env=env,
            start_new_session=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        rp = ReplicaProcess(index=index, proc=proc, url=m.group(1) if m else "", log=log)
        self.started.append(rp)
        if not m:
            rp.kill()
            raise AssertionError(f"replica {index} did not start: {line!r}\n{log.read_text()}")
        return rp

    def kill_all(self) -> None:
        for rp in self.started:
            rp.kill()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[ReplicaProcesses]:
    rps = ReplicaProcesses(tmp_path)
    try:
        yield rps
    finally:
        rps.kill_all()


@contextlib.asynccontextmanager
async def in_process(
    net: Network, index: int = 1, **settings: Any
) -> AsyncIterator[tuple[Replica, str]]:
    """A replica served inside this trio run: ``(replica, url)``."""
    knobs = {f.name for f in dataclasses.fields(PolicyConfig) if f.init}
    policy = PolicyConfig(**{k: v for k, v in settings.items() if k in knobs})
    rest = {"first_start": True, **{k: v for k, v in settings.items() if k not in knobs}}
    config = ServiceConfig(network_dir=net.dir, replica=index, policy=policy, **rest)
    replica = Replica(config)
    server = Server(replica)
    try:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            yield replica, f"http://127.0.0.1:{port}"
            nursery.cancel_scope.cancel()
    finally:
        replica.store.close()


# -- light nodes --------------------------------------------------------------------------------


class LightNode:
    """A node of the real protocol, without a daemon: status, asks, reports."""

    def __init__(
        self,
        net: Network,
        urls: list[str],
        *,
        pool: str = "default",
        key: crypto.SigningKey | None = None,
        member: bytes | None = None,
        source: str | None = None,
    ) -> None:
        """``member``: the member document its hellos carry; ``source``: the address it
        connects from (``127.0.N.M`` puts it in another /24 on one machine's loopback)."""
        self.net = net
        self.key = key or crypto.SigningKey.from_seed(os.urandom(32))
        self.node = self.key.keyid
        self.pool = pool
        self.pushes: list[proto.Push] = []
        self.store = net.trust()

        async def on_push(_link: ReplicaLink, push: proto.Push) -> None:
            self.pushes.append(push)

        self.client = QuorumClient(
            urls,
            self.key,
            lambda: self.store,
            on_push=on_push,
            member=None if member is None else lambda: member,
            local_address=source,
        )

    async def start(self, nursery: trio.Nursery, connected: int | None = None) -> None:
        await nursery.start(self.client.run)
        await self.client.wait_connected(len(self.client.links) if connected is None else connected)

    async def status(
        self,
        *,
        artifact: str = ZERO,
        version: str = "v1",
        state: str = "serving",
        estimate: tuple[float, float, int] | None = (1000.0, 100.0, 50),
        held: tuple[str, str] | None = None,
        versions: dict[str, float] | None = None,
    ) -> int:
        report = proto.StatusReport(
            version=version,
            artifact=artifact,
            state=state,
            pool=self.pool,
            estimate=None
            if estimate is None
            else proto.Estimate(
                capacity=estimate[0], load=estimate[1], serving=estimate[2], age=0.0
            ),
            held=None if held is None else proto.Held(gate=held[0], reason=held[1]),
            addrs=("127.0.0.1:9",),
            versions=None if versions is None else proto.Versions(counts=versions, age=5.0),
        )
        return await self.client.send(report)

    async def ask(
        self,
        to: str,
        *,
        frm: str = ZERO,
        allowlist_version: int = 1,
        scope_serial: int = 1,
        capacity: float = 10.0,
        load: float = 5.0,
    ) -> AskOutcome:
        return await self.client.ask(
            pool=self.pool,
            from_artifact=frm,
            to_artifact=to,
            allowlist_version=allowlist_version,
            scope_serial=scope_serial,
            capacity=capacity,
            load=load,
        )

    async def rejoined(self, artifact: str, token: bytes | None) -> int:
        return await self.client.send(
            proto.RejoinedReport(artifact=artifact, nonce=departure.token_nonce(token))
        )

    async def returned(self, token: bytes | None, reason: str) -> int:
        """Hand a granted lease back unused (what a node does with one too short to use)."""
        return await self.client.send(
            proto.ReturnReport(nonce=departure.token_nonce(token), reason=reason)
        )

    async def failed(self, artifact: str, reason: str, token: bytes | None = None) -> int:
        return await self.client.send(
            proto.FailedReport(
                artifact=artifact, counter=2, reason=reason, nonce=departure.token_nonce(token)
            )
        )
