"""The launcher is a small process (issue 14, "A small box": <= 15 MB RSS).

``p2pupdate node`` checks its options with the command line and the daemon's checks, then
execs ``launcher.main``'s command: a process that imports the standard library, the
launcher's own modules and the few it stands on -- never the core's crypto, PyNaCl,
msgpack, trio or the CLI (each import is RSS a Python process keeps).  The figures
themselves are ``scripts/bench/gossip_idle.py``'s ``launcher_rss_mb``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from p2pupdate.launcher import stage0
from p2pupdate.launcher.main import ENTRY_MODULE, launcher_command, stage0_command
from p2pupdate.launcher.supervisor import LauncherConfig

from .conftest import Builds

#: What the launcher may import besides the standard library: itself and what it stands on.
ALLOWED = {
    "__main__",
    "p2pupdate",
    "p2pupdate._version",
    "p2pupdate.errors",
    "p2pupdate.fsutil",
    "p2pupdate.core",
    "p2pupdate.core.errors",
    "p2pupdate.core.timing",
    "p2pupdate.launcher",
}
#: Standard modules it must not load: OpenSSL (libcrypto is ~4 MB of RSS), dataclasses (with
#: inspect, ast, dis: ~1.3 MB; the launcher's records are NamedTuples), the CLI's parser.
FORBIDDEN_STDLIB = {
    *("_hashlib", "hashlib", "hmac", "secrets", "_ssl", "ssl"),
    *("dataclasses", "inspect", "ast"),
    *("argparse", "asyncio"),
}

#: The launcher's main() up to its loop, plus one decide(): a first start (bootstrap: read,
#: hash, unpack and verify a slot), the command of its daemon; then the modules it loaded.
PROBE = """
import sys
from p2pupdate.launcher import stage0
from p2pupdate.launcher.main import config_from_argv
from p2pupdate.launcher.supervisor import Launcher
launcher = Launcher(config_from_argv(sys.argv[1:]), log=lambda message: None)
launcher.child_command(launcher.decide())
print("\\n".join(sorted(sys.modules)))
"""


def _outside(modules: set[str]) -> list[str]:
    return sorted(
        m
        for m in modules
        if m not in ALLOWED
        and not m.startswith("p2pupdate.launcher.")
        and (m.split(".")[0] not in sys.stdlib_module_names or m in FORBIDDEN_STDLIB)
    )


def test_the_launcher_process_loads_only_the_stdlib_and_itself(
    tmp_path: Path, builds: Builds
) -> None:
    config = LauncherConfig(
        state_dir=tmp_path / "state",
        initial_artifact=builds.get("v1", 1).path,
        daemon_args=("--work", "none"),
    )
    argv, env = launcher_command(config)
    m = argv.index("-m")
    assert argv[m + 1] == ENTRY_MODULE
    probe = [*argv[:m], "-c", PROBE, *argv[m + 2 :]]
    out = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60, check=True)
    modules = set(out.stdout.split())
    assert "p2pupdate.launcher.supervisor" in modules  # the probe ran the launcher
    assert "site" not in modules  # -S: no .pth file of any installed package runs
    assert _outside(modules) == []
    assert (config.state_dir / "current").is_symlink()  # and it bootstrapped


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_p2pupdate_node_becomes_the_small_launcher_process(tmp_path: Path, builds: Builds) -> None:
    """The real command: once its checks pass, the same pid runs stage-0 (``stage0_command``)
    and stage-0 runs ``launcher.main``'s command; neither maps any of the libraries the
    checks loaded (the ~45 MB launcher before)."""
    state = tmp_path / "state"
    v1 = builds.get("v1", 1)
    node = ("node", "--state-dir", str(state), "--work", "none", "--initial-artifact", str(v1.path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pupdate", *node],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().decode()]
        while "came up" not in lines[-1]:  # the installed launcher bootstrapped v1 and
            lines.append(proc.stdout.readline().decode())  # handed over to v1's launcher
        assert any("bootstrapped slot" in line for line in lines), lines
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        (launcher,) = _children(proc.pid)
        child = Path(f"/proc/{launcher}/cmdline").read_bytes().split(b"\0")[:-1]
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        maps += Path(f"/proc/{launcher}/maps").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    config = LauncherConfig(state_dir=state.absolute(), initial_artifact=v1.path.absolute())
    argv = [a.decode() for a in cmdline]
    expected = stage0_command(config)
    assert argv[: argv.index("--")] == expected[: expected.index("--")], argv
    argv = [a.decode() for a in child]
    slot = str(state.absolute() / "slots" / v1.sha)
    assert argv[:6] == [sys.executable, "-I", "-S", "-c", stage0.SLOT_BOOT, slot], argv
    loaded = {line.split()[-1] for line in maps.splitlines() if "/" in line}
    heavy = sorted(
        p
        for p in loaded
        if any(s in Path(p).name for s in ("libcrypto", "_nacl", "msgpack", "_cffi"))
    )
    assert heavy == [], heavy
    assert proc.returncode == 0


# -- the daemon's side of the box: its key file without ``cryptography`` (~8 MB) ------------


def test_the_daemon_reads_its_key_file_without_importing_cryptography(tmp_path: Path) -> None:
    """The daemon loads its node key at every start (``daemon.identity``): a file in the
    form ``core.crypto`` writes is read by ``core.crypto`` alone."""
    from p2pupdate.core import crypto

    key = crypto.SigningKey.from_seed(bytes(range(32)))
    pem = tmp_path / "node.pem"
    pem.write_bytes(b"# node " + key.keyid.encode() + b"\n" + crypto.private_key_to_pem(key))
    probe = (
        "import sys; from pathlib import Path; import p2pupdate.daemon.main; "
        "from p2pupdate.core import crypto; "
        f"key = crypto.private_key_from_pem(Path({str(pem)!r}).read_bytes()); "
        "print(key.keyid, 'cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == [key.keyid, "False"], out.stderr


def test_key_files_are_the_bytes_cryptography_writes_and_other_forms_still_go_to_it() -> None:
    """Guard for the fixed-form encoder: byte for byte what ``cryptography`` writes, read
    back the same; a file in any other form (two blocks, encrypted, junk) is judged by
    ``cryptography`` as before."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from p2pupdate.core import crypto
    from p2pupdate.core.errors import KeyFileError

    for n in range(20):
        key = crypto.SigningKey.from_seed(bytes([n]) * 32)
        theirs = ed25519.Ed25519PrivateKey.from_private_bytes(key.seed)
        private = theirs.private_bytes(
            ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
        )
        public = theirs.public_key().public_bytes(
            ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo
        )
        assert crypto.private_key_to_pem(key) == private
        assert crypto.public_key_to_pem(key.public_key) == public
        assert crypto.private_key_from_pem(private).seed == key.seed
        assert crypto.public_key_from_pem(public) == key.public_key
    assert crypto.private_key_from_pem(private + private).seed == key.seed  # as cryptography says
    encrypted = theirs.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"pw")
    )
    for bad, why in (
        (encrypted, "encrypted"),
        (private.replace(b"MC4C", b"MC4D"), "not a PEM private key"),
        (public, "not a PEM private key"),
    ):
        try:
            crypto.private_key_from_pem(bad)
        except KeyFileError as exc:
            assert why in str(exc), (bad, exc)
        else:
            raise AssertionError(f"read {bad!r}")
