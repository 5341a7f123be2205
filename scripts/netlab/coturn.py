"""coturn in the lab: start ``turnserver`` on an inet host with time-limited credentials.

``use-auth-secret`` means there is no user database: a client's username is
``expiry:node-id`` and its password ``base64(HMAC-SHA1(secret, username))``, which whoever
holds the secret (a coordinator replica) mints.  The server listens and relays on the inet
host's address only, has no CLI, and its config, log, pid file and database are in a temp
directory removed on stop (the secret is in that 0600 config file, not on the command line).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.netlab.lab import Lab, NetlabError
from scripts.netlab.stun import StunError, binding

TURN_PORT = 3478


def have_turnserver() -> bool:
    """Whether coturn's ``turnserver`` is installed (tests that need it skip otherwise)."""
    return shutil.which("turnserver") is not None


@dataclass(frozen=True, kw_only=True)
class Turn:
    """A running coturn: where it listens and the shared secret its credentials use."""

    host: str
    addr: str
    port: int
    realm: str
    secret: str
    log: Path

    @property
    def server(self) -> tuple[str, int]:
        return (self.addr, self.port)

    def urls(self) -> tuple[str, str]:
        """The STUN and TURN URLs an ICE agent is given."""
        return (f"stun:{self.addr}:{self.port}", f"turn:{self.addr}:{self.port}?transport=udp")


@contextlib.contextmanager
def turn_server(
    lab: Lab,
    host: str,
    *,
    secret: str,
    realm: str = "netlab",
    port: int = TURN_PORT,
    extra: Sequence[str] = (),
) -> Iterator[Turn]:
    """Run coturn on inet host ``host`` until the block ends; wait until it answers STUN.

    ``extra`` lines go into the config as they are (e.g. ``verbose`` to see sessions).
    """
    if not have_turnserver():
        raise NetlabError("turnserver (coturn) is not installed")
    addr = lab.inet_addr(host)
    tmp = Path(tempfile.mkdtemp(prefix="netlab-turn-"))
    conf = tmp / "turnserver.conf"
    conf.touch(mode=0o600)
    conf.write_text(
        "\n".join(
            [
                f"listening-ip={addr}",
                f"relay-ip={addr}",
                f"listening-port={port}",
                "min-port=49152",
                "max-port=49999",
                "use-auth-secret",
                f"static-auth-secret={secret}",
                f"realm={realm}",
                "no-cli",
                "no-tls",
                "no-dtls",
                f"pidfile={tmp / 'turnserver.pid'}",
                f"userdb={tmp / 'turndb'}",
                f"log-file={tmp / 'turn.log'}",
                "simple-log",
                *extra,
                "",
            ]
        )
    )
    proc = lab.popen(
        host,
        ["turnserver", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        turn = Turn(host=host, addr=addr, port=port, realm=realm, secret=secret, log=tmp)
        _wait_ready(lab, turn, proc)
        yield turn
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(lab: Lab, turn: Turn, proc: subprocess.Popen[bytes]) -> None:
    """Poll with STUN Binding from the server's own host until it answers (at most 10 s)."""
    deadline = time.monotonic() + 10
    sock = lab.socket(turn.host)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise NetlabError(f"turnserver exited {proc.returncode} (log in {turn.log})")
            with contextlib.suppress(StunError, OSError):
                binding(sock, turn.server, timeout=0.2)
                return
    finally:
        sock.close()
    raise NetlabError("turnserver did not answer STUN within 10 s")
