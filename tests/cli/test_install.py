"""``p2pupdate install`` / ``uninstall`` (P11): the node as a systemd service.

Nothing here touches the real /etc, makes a user or starts a unit: ``--root DIR`` writes
under ``tmp_path`` and runs no command, and the tests of the system path inject the
command runner (a fake ``useradd``/``systemctl``: the fault or the absence of systemd is
what they inject).  The unit itself is checked by the real ``systemd-analyze verify``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from p2pupdate.cli import install as inst
from p2pupdate.cli import main as p2pupdate_main
from p2pupdate.cli.common import Rejected
from p2pupdate.launcher import stage0 as launcher_stage0
from tests.cli.test_admission_cli import coord, init


def p2p(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    try:
        code = p2pupdate_main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def bundle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    d = tmp_path / "net"
    init(capsys, d, "--pow-bits", "0")
    out = tmp_path / "network.bundle"
    code, _out, err = coord(
        capsys, "bundle", "--dir", d, "--url", "http://10.0.0.1:8470", "-o", out
    )
    assert code == 0, err
    return out


@pytest.fixture
def no_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(argv: Sequence[str]) -> tuple[int, str]:
        raise AssertionError(f"ran {argv} under --root")

    monkeypatch.setattr(inst, "run_command", refuse)


def test_printed_unit_passes_systemd_analyze_verify(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_commands: None,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # --print works as any user
    code, unit, err = p2p(capsys, "install", "--print", "--bundle", bundle, "--work", "none")
    assert code == 0, err
    lines = set(unit.splitlines())
    for want in (
        "Restart=always",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/p2pupdate",
        "PrivateTmp=yes",
        "User=p2pupdate",
        "WantedBy=multi-user.target",
    ):
        assert want in lines, want
    exec_start = next(ln for ln in lines if ln.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK)
    assert argv[1:] == [
        "-m", "p2pupdate", "node", "--bundle", "/etc/p2pupdate/network.bundle",
        "--state-dir", "/var/lib/p2pupdate", "--work", "none",
        "--stage0", "/usr/local/lib/p2pupdate/stage0.py",
    ]  # fmt: skip
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing (scripts/test installs systemd as root)")

    def verify(text: str, where: str) -> tuple[int, str]:
        path = tmp_path / where / "p2pupdate.service"
        path.parent.mkdir()
        path.write_text(text)
        done = subprocess.run(
            [analyze, "verify", "--man=no", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.returncode, (done.stdout + done.stderr).strip()

    # verify exits 0 for unknown keys and bad values ("ignoring"): any word is a failure,
    # and the check is first shown to see a misspelt key
    assert verify(unit.replace("ProtectSystem=", "ProtectSystm="), "bad")[1]
    assert verify(unit, "good") == (0, "")


def test_install_and_uninstall_under_a_root_prefix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path, no_commands: None
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    code, unit, err = p2p(capsys, "install", "--print", "--bundle", bundle)
    assert code == 0, err
    code, out, err = p2p(capsys, "install", "--bundle", bundle, "--root", root)
    assert code == 0, err
    assert "no user made, nothing enabled or started" in out
    placed = root / "etc/p2pupdate/network.bundle"
    assert placed.read_bytes() == bundle.read_bytes()
    assert (root / "etc/systemd/system/p2pupdate.service").read_text() == unit
    state = root / "var/lib/p2pupdate"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(placed.stat().st_mode) == 0o644
    # stage-0, copied out of the package: the file the unit's ExecStart names
    stage0 = root / "usr/local/lib/p2pupdate/stage0.py"
    assert stage0.read_bytes() == Path(launcher_stage0.__file__).read_bytes()
    assert f"--stage0 {inst.STAGE0_PATH}" in unit
    # again: the same files, nothing else
    code, _out, err = p2p(capsys, "install", "--bundle", bundle, "--root", root)
    assert code == 0, err
    (state / "keys").mkdir()
    code, out, err = p2p(capsys, "uninstall", "--root", root)
    assert code == 0, err
    assert not (root / "etc/systemd/system/p2pupdate.service").exists()
    assert not (root / "etc/p2pupdate").exists()
    assert not (root / "usr/local/lib/p2pupdate").exists()
    assert (state / "keys").is_dir() and "kept the node's state" in out
    # a state dir of its own, found again from the unit by uninstall --purge
    code, _out, err = p2p(
        capsys, "install", "--bundle", bundle, "--root", root, "--state-dir", "/srv/p2p"
    )
    assert code == 0, err
    assert (root / "srv/p2p").is_dir()
    code, out, err = p2p(capsys, "uninstall", "--root", root, "--purge")
    assert code == 0, err
    assert not (root / "srv/p2p").exists() and state.exists()
    assert not (root / "etc/systemd/system/p2pupdate.service").exists()


def test_install_refusals_are_one_line_and_change_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_commands: None,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    forged = tmp_path / "forged.bundle"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 1
    forged.write_bytes(bytes(data))
    oversize = tmp_path / "big.bundle"
    oversize.write_bytes(b"\0" * (200 * 1024))
    cases: list[tuple[list[str | Path], int, str]] = [
        (["--bundle", forged, "--root", root], 1, "rejected"),
        (["--bundle", forged, "--print"], 1, "rejected"),
        (["--bundle", oversize, "--root", root], 2, "error"),
        (["--bundle", tmp_path / "none", "--root", root], 2, "no such file"),
        (["--bundle", bundle, "--root", root, "--state-dir", "rel/dir"], 2, "absolute"),
        (["--bundle", bundle, "--root", root, "--state-dir", "/a b"], 2, "no spaces"),
        (["--bundle", bundle, "--root", tmp_path / "nope"], 2, "not a directory"),
    ]
    for flags, want, says in cases:
        code, _out, err = p2p(capsys, "install", *flags)
        assert code == want and says in err and len(err.strip().splitlines()) == 1, (flags, err)
    assert list(root.iterdir()) == []
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for command in (["install", "--bundle", bundle], ["uninstall"]):
        code, _out, err = p2p(capsys, *command)
        assert code == 2 and "run it as root" in err and len(err.strip().splitlines()) == 1, err


class FakeSystem:
    """Records the commands ``install`` runs; answers ``fail`` (a command's first words)
    with exit 1, ``getent`` with 2 (no such user) unless ``user``."""

    def __init__(self, *, fail: Sequence[str] = (), user: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = list(fail)
        self.user = user
        self.active = False

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        argv = list(argv)
        self.calls.append(argv)
        if self.fail and argv[: len(self.fail)] == self.fail:
            return 1, "Failed to enable unit: injected"
        if argv[0] == "getent":
            return (0 if self.user else 2), ""
        if argv[:2] == ["systemctl", "is-active"]:
            return (0 if self.active else 3), ""
        return 0, ""


def _system(tmp_path: Path, run: FakeSystem, *, systemd: bool) -> inst.Host:
    root = tmp_path / "sys"
    if systemd:
        (root / "run/systemd/system").mkdir(parents=True)
    root.mkdir(exist_ok=True)
    return inst.Host(root=root, system=True, run=run)


def _install(host: inst.Host, bundle: Path, said: list[str]) -> None:
    state = Path("/var/lib/p2pupdate")
    unit = inst.render_unit(
        command=inst.node_command(state_dir=state, work=None), state_dir=state,
        home_read_only=False,
    )  # fmt: skip
    inst.install(host, bundle=bundle.read_bytes(), state_dir=state, unit=unit, say=said.append)


def test_install_on_a_systemd_host_makes_the_user_and_starts_the_service(
    tmp_path: Path, bundle: Path
) -> None:
    run, said = FakeSystem(), []
    host = _system(tmp_path, run, systemd=True)
    _install(host, bundle, said)
    names = [c[:2] if c[0] == "systemctl" else c[:1] for c in run.calls]
    assert names == [
        ["getent"], ["useradd"], ["chown"], ["systemctl", "daemon-reload"],
        ["systemctl", "is-active"], ["systemctl", "enable"],
    ]  # fmt: skip
    useradd = run.calls[1]
    assert "--system" in useradd and useradd[-1] == "p2pupdate"
    assert useradd[useradd.index("--home-dir") + 1] == "/var/lib/p2pupdate"
    assert "nologin" in useradd[useradd.index("--shell") + 1]
    assert run.calls[-1] == ["systemctl", "enable", "--now", "p2pupdate.service"]
    assert any("enabled and started" in s for s in said)
    assert run.calls[2] == ["chown", "-R", "p2pupdate:p2pupdate", "/var/lib/p2pupdate"]
    # again while it runs: the same files, no restart; a new bundle: restarted
    run.calls.clear()
    run.user = run.active = True
    _install(host, bundle, said)
    assert not any(c[0] == "useradd" or c[1:2] == ["try-restart"] for c in run.calls)
    (host.root / "etc/p2pupdate/network.bundle").write_bytes(b"older")
    _install(host, bundle, said)
    assert run.calls[-1] == ["systemctl", "try-restart", "p2pupdate.service"]
    # uninstall --purge: stop+disable, files gone, state and user gone
    run.calls.clear()
    inst.uninstall(host, state_dir=Path("/var/lib/p2pupdate"), purge=True, say=said.append)
    assert run.calls[0] == ["systemctl", "disable", "--now", "p2pupdate.service"]
    assert ["systemctl", "daemon-reload"] in run.calls and run.calls[-1] == ["userdel", "p2pupdate"]
    assert not (host.root / "var/lib/p2pupdate").exists()
    assert not (host.root / "etc/systemd/system/p2pupdate.service").exists()


def test_install_where_systemd_is_not_running_writes_everything_and_warns(
    tmp_path: Path, bundle: Path
) -> None:
    run, said = FakeSystem(user=True), []
    host = _system(tmp_path, run, systemd=False)
    _install(host, bundle, said)
    assert run.calls[-1] == ["systemctl", "enable", "p2pupdate.service"]  # offline: no --now
    assert not any(c[:1] == ["useradd"] for c in run.calls)  # the user was there
    assert any(s.startswith("warning: systemd is not running here") for s in said), said
    assert (host.root / "etc/systemd/system/p2pupdate.service").is_file()


def test_a_failing_systemctl_is_a_refusal_naming_the_command(tmp_path: Path, bundle: Path) -> None:
    run = FakeSystem(fail=["systemctl", "enable"], user=True)
    host = _system(tmp_path, run, systemd=True)
    with pytest.raises(Rejected, match=r"`systemctl enable --now p2pupdate.service` failed"):
        _install(host, bundle, [])
