"""Stage-0: the boot program that starts the launcher *from the current slot* (P12 item 2).

``p2pupdate node`` (and the unit ``p2pupdate install`` writes) runs ``python -I -S stage0.py
INSTALLED_ROOT TRIAL_SECONDS -- LAUNCHER_ARGS...``; ``p2pupdate install`` copies this file
out of the package to a fixed path once, so no update ever touches the copy it runs.  It
picks a launcher (:func:`pick`, :func:`decide`) and stays its parent (it forwards SIGTERM and
SIGINT and exits with the launcher's code):

* the slot of an undecided ``pending`` swap, else ``current``, if that slot's launcher knows
  this protocol (it holds ``p2pupdate/launcher/stage0.py``): run from the slot alone
  (``-I -S``, ``sys.path`` = slot + slot/deps + the standard library);
* otherwise (no slot yet, an older build) the installed copy, as before P12.

**A new launcher is on trial.**  A slot whose launcher has not come up on this node yet
(``boot``'s ``good``) is run with ``P2PUPDATE_BOOT_TRIAL=1``; it came up when it has started
its first daemon and written ``boot-up`` naming its slot (``Launcher.supervise``).  That is
the launcher's own work -- read the state, decide, start a daemon -- and nothing more: the
daemon's health is the daemon's probation, which the new launcher then runs as always.  If
the launcher exits first, or writes nothing within TRIAL_SECONDS, stage-0 records the slot
as ``failed`` with the reason and runs the last ``good`` launcher (else the installed copy),
which finds the pending swap of that slot, rolls it back and sticky-denies it with that
reason.  A trial interrupted with stage-0 itself (a power cut) is retried, ``MAX_TRIES`` in
all.  A launcher exits ``RELAUNCH`` (77) to hand over when stage-0's pick is no longer its
own slot (a swap to a slot with a launcher, or a rollback away from its own); a relaunch that
would run the same launcher again, or a fallback that fails, ends stage-0 with a log line
and the launcher's code (systemd restarts it: no loop inside).

**What stage-0 can never change**, because every launcher of every later version talks to
this copy: its own code; the interpreter (``sys.executable``, the unit's first word); the
state dir layout it reads (``current``/``previous`` -> ``slots/<sha256>``, ``pending``'s
``artifact`` and ``outcome``, ``slots/<sha>/SLOT.json`` and ``p2pupdate/launcher/stage0.py``,
``slots/<sha>/deps``); the ``boot`` / ``boot-up`` record formats below; the launcher's argv
(passed through, never read beyond ``--state-dir``), the environment it sets
(``P2PUPDATE_BOOT_SLOT``, ``P2PUPDATE_BOOT_TRIAL``, ``P2PUPDATE_BOOT_PARENT``) and the exit
contract (77 relaunch; anything else is the launcher's own code).  That is small enough to get
right once: it reads two links and three small JSON files, and starts one process at a time;
everything with policy (probation, rollback, denies, bootstrap) stays in the launcher, which
updates.  A slot's launcher imports this module for :func:`pick`, :func:`read_boot` and
:func:`write_json`, so both sides use one copy of the rules (newer launchers keep them).

Records (JSON, ``"format": 1``, at most ``CAP`` bytes, written atomically; an unreadable one
is moved aside as ``NAME.bad-N`` and read as empty):
``boot`` {good, trial, tries, failed, reason} (stage-0 writes it) and ``boot-up``
{launcher} (the launcher on trial writes it).  ``boot.lock`` is flocked: one stage-0 per dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from typing import Any

RELAUNCH = 77
MAX_TRIES = 3
CAP = 4096
MARK = "p2pupdate/launcher/stage0.py"
BOOT, UP, LOCK = "boot", "boot-up", "boot.lock"
ENV_SLOT, ENV_TRIAL, ENV_PARENT = ("P2PUPDATE_BOOT_" + k for k in ("SLOT", "TRIAL", "PARENT"))
EMPTY: dict[str, Any] = {"good": None, "trial": None, "tries": 0, "failed": None, "reason": None}
#: ``-I -S -c`` program of a slot's launcher: ``sys.path`` = the slot, slot/deps, stdlib.
SLOT_BOOT = (
    "import sys, runpy; s = sys.argv.pop(1); sys.path[:0] = [s, s + '/deps']; "
    "runpy.run_module('p2pupdate.launcher', run_name='__main__', alter_sys=True)"
)


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} p2pupdate-stage0[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


def sha(value: Any) -> str | None:
    ok = isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    return value if ok else None


def read_json(path: str, aside: bool = True) -> dict[str, Any] | None:
    """The record at ``path``; None if absent or unusable (then moved aside if ``aside``:
    stage-0 leaves the launcher's own records for the launcher to judge)."""
    try:
        with open(path, "rb") as f:
            data = f.read(CAP + 1)
        raw = json.loads(data) if len(data) <= CAP else None
    except FileNotFoundError:
        return None
    except ValueError:
        raw = None
    if not aside or (isinstance(raw, dict) and raw.get("format") == 1):
        return raw if isinstance(raw, dict) else None
    n = next(n for n in range(1, 1 << 30) if not os.path.lexists(f"{path}.bad-{n}"))
    os.replace(path, f"{path}.bad-{n}")
    log(f"{os.path.basename(path)} unusable; moved to {os.path.basename(path)}.bad-{n}")
    return None


def write_json(path: str, obj: dict[str, Any]) -> None:
    """``path`` := ``obj`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{os.urandom(6).hex()}.tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps({"format": 1, **obj}, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(head or ".", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def read_boot(state: str) -> dict[str, Any]:
    raw = read_json(os.path.join(state, BOOT)) or {}
    boot: dict[str, Any] = {k: sha(raw.get(k)) for k in ("good", "trial", "failed")}
    tries, reason = raw.get("tries"), raw.get("reason")
    boot["tries"] = tries if isinstance(tries, int) and not isinstance(tries, bool) else 0
    boot["reason"] = reason[:500] if isinstance(reason, str) else None
    return boot


def has_launcher(state: str, slot: str | None) -> bool:
    d = os.path.join(state, "slots", slot or "-")
    return slot is not None and all(os.path.isfile(os.path.join(d, f)) for f in (MARK, "SLOT.json"))


def link(state: str, name: str) -> str | None:
    try:
        target = os.readlink(os.path.join(state, name))
    except OSError:
        return None
    return sha(target[6:]) if target.startswith("slots/") else None


def pick(state: str) -> str | None:
    """The slot whose launcher should run (None: the installed copy)."""
    pending = read_json(os.path.join(state, "pending"), aside=False) or {}
    swap = sha(pending.get("artifact")) if pending.get("outcome") is None else None
    for slot in (swap, link(state, "current")):
        if has_launcher(state, slot):
            return slot
    return None


def decide(
    boot: dict[str, Any], up: str | None, want: str | None
) -> tuple[str | None, bool, dict[str, Any]]:
    """(slot whose launcher to run or None for the installed copy, on trial?, new ``boot``)."""
    b = dict(boot)
    if b["trial"] is not None and up == b["trial"]:  # it came up before stage-0 last stopped
        b.update(good=b["trial"], trial=None, tries=0)
    if want is None or want == b["good"]:
        return want, False, b
    if want == b["trial"] and b["tries"] >= MAX_TRIES:
        why = f"launcher of {want} did not come up in {MAX_TRIES} starts"
        b.update(failed=want, reason=why, trial=None, tries=0)
    if want == b["failed"]:
        return b["good"], False, b
    b.update(trial=want, tries=(b["tries"] if b["trial"] == want else 0) + 1)
    return want, True, b


def choose(state: str) -> tuple[str | None, bool, dict[str, Any], dict[str, Any]]:
    """:func:`decide` on the records in ``state``: (slot, on trial?, ``boot``, new ``boot``);
    a fallback whose slot is gone meanwhile is the installed copy."""
    boot = read_boot(state)
    up = (read_json(os.path.join(state, UP)) or {}).get("launcher")
    slot, trial, new = decide(boot, up, pick(state))
    return (slot if has_launcher(state, slot) else None), trial, boot, new


def command(slot: str | None, state: str, args: list[str]) -> list[str]:
    if slot is None:
        return [sys.executable, "-S", "-P", "-m", "p2pupdate.launcher", *args]
    return [sys.executable, "-I", "-S", "-c", SLOT_BOOT, os.path.join(state, "slots", slot), *args]


STOPS = {signal.SIGTERM, signal.SIGINT}
_child: list[int] = []  # the launcher's pid while it runs; signals go to it
_stop: list[int] = []  # a stop signal arrived: start nothing more


def _forward(signum: int, frame: object) -> None:
    _stop.append(signum)
    for pid in _child:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def run(
    argv: list[str], env: dict[str, str], seconds: float, trial: Any = None
) -> tuple[int, bool]:
    """Run the launcher until it exits: (its exit code, whether it came up).  On trial
    (``trial`` = (up path, boot path, record)) it came up once ``up`` names its slot: write
    the record then; SIGKILL it if it did not within ``seconds``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)  # no stop is lost while we fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            for s in STOPS:
                signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    _child[:] = [pid]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
    if _stop:  # a stop that came before the child existed
        _forward(_stop[-1], None)
    deadline, came_up = time.monotonic() + seconds, trial is None
    while True:
        done, status = os.waitpid(pid, 0 if came_up else os.WNOHANG)
        if not came_up and (read_json(trial[0]) or {}).get("launcher") == env[ENV_SLOT]:
            came_up = True  # (read after waitpid: a launcher that came up and exited counts)
            write_json(trial[1], trial[2])
            log(f"launcher of {env[ENV_SLOT]} came up")
        if done:
            _child.clear()
            return os.waitstatus_to_exitcode(status), came_up
        if not came_up and time.monotonic() > deadline:
            log(f"no sign of life from launcher pid {pid} within {seconds:g} s: SIGKILL")
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0 if came_up else 0.05)


def main(argv: list[str]) -> int:
    root, seconds, args = argv[1], float(argv[2]), argv[4:]
    assert argv[3] == "--" and args[0] == "--state-dir", "stage0.py ROOT SECONDS -- --state-dir D"
    state = args[1]  # the launcher's argv starts with --state-dir D (launcher.main)
    for s in STOPS:
        signal.signal(s, _forward)
    os.makedirs(state, exist_ok=True)
    lock = os.open(os.path.join(state, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"fatal: {state}: another launcher is running here (boot.lock held)")
        return 1
    boot_path, up_path = os.path.join(state, BOOT), os.path.join(state, UP)
    last, fell_back = "", False
    while not _stop:
        slot, trial, boot, new = choose(state)
        if new != boot:
            write_json(boot_path, new)
        name = f"of {slot}" if slot else "(the installed copy)"
        if last == name:
            log(f"launcher {name} asked to relaunch, and would run again: stopping")
            return 1
        if trial:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(up_path)
            log(f"launcher {name} on trial (start {new['tries']} of {MAX_TRIES}, {seconds:g} s)")
        env = {k: v for k, v in os.environ.items() if k != ENV_TRIAL} | {"PYTHONPATH": root}
        env |= {ENV_SLOT: slot or "", ENV_PARENT: str(os.getpid())} | (
            {ENV_TRIAL: "1"} if trial else {}
        )
        record = dict(new, good=slot, trial=None, tries=0)
        argv = command(slot, state, args)
        code, came_up = run(argv, env, seconds, (up_path, boot_path, record) if trial else None)
        if not came_up and not _stop:
            why = f"launcher of {slot} failed to come up: {'exit' if code >= 0 else 'signal'} {abs(code)}"
            log(why)
            write_json(boot_path, dict(new, failed=slot, reason=why, trial=None, tries=0))
            last, fell_back = "", True
            continue
        if code != RELAUNCH:
            if code < 0:  # killed by a signal: say so as a shell would (128 + N), or
                code = 0 if -code in _stop else 128 - code  # 0 if it was ours to stop it
            if code != 0:
                log(f"launcher {name} exited {code}" + (" (the fallback)" if fell_back else ""))
            return code
        last = name
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
