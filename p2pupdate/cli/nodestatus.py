"""``p2pupdate status``: what a node runs and why it waits, read from its state directory.

For the vendor's support person on the box (README "CLI"): what runs (version, artifact,
since when, whether its pid is alive), the slots (``current``, ``previous``, ``pending``,
the sticky denies and rollbacks), the updater's state and what it waits for (the gate that
said no and why, the next check, the lease), the gossip links and their path kinds, the
replicas and when each was last heard, the swarm downloads in progress.

It only *reads*: ``D/status`` (the daemon's own status file, ``daemon.status``), the
``current``/``previous`` links, ``slots/<sha>/SLOT.json``, ``pending``, ``denied`` and
``rollbacks``, each opened read-only with a size cap.  It takes no lock and creates,
changes or moves nothing, so it is safe beside a running node and works as well on a
stopped one (then it says "not running" and how old the last status file is).

A state dir that is missing, unreadable or not a node's is a usage mistake
(:class:`StateDirError`); a status file that is oversized, truncated, corrupt or not a
p2pupdate status record is the local state's fault (:class:`StatusFileError`).  Either is
one line on stderr naming the path, exit 2.  A damaged ``pending``/``denied``/``rollbacks``
is not: it is shown as a problem beside everything else (that is what the support person
came to see).

The JSON (``--json``) is one object whose top-level keys the README lists; the human
report is rendered from that same object (:func:`render`), so the two never disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from ..errors import LocalStateFault
from ..fsutil import FileTooLargeError, read_open_limited
from ..launcher.state import (
    FORMAT,
    MAX_RECORD_BYTES,
    Pending,
    StateDir,
    StateError,
)
from .common import EXIT_OK, EXIT_USAGE, UsageError

__all__ = [
    "MAX_STATUS_BYTES",
    "StateDirError",
    "StatusFileError",
    "add_parser",
    "cmd_status",
    "collect",
    "render",
]

#: Largest status file read (the daemon's records share this cap: ``launcher.state``).
MAX_STATUS_BYTES: Final = MAX_RECORD_BYTES
#: The keys (and their types) every status file the daemon writes has.
_REQUIRED: Final[Mapping[str, tuple[type, ...]]] = {
    "pid": (int,),
    "version": (str,),
    "slot": (str,),
    "state": (str,),
    "time": (int, float),
}
#: Most links, replicas, downloads and denies shown.
MAX_ROWS: Final = 64
SHORT: Final = 12


class StateDirError(UsageError):
    """``--state-dir`` is not a node's state dir we can read: exit 2."""

    rule = "state-dir"


class StatusFileError(LocalStateFault):
    """``D/status`` is there but unusable (too large, truncated, not a status record)."""

    rule = "status-file"


# -- reading ------------------------------------------------------------------------------


def _check_dir(root: Path) -> None:
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise StateDirError(
            f"{root}: no such directory (is this the node's --state-dir?)"
        ) from None
    except OSError as exc:
        raise StateDirError(f"{root}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{root}: not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise StateDirError(f"{root}: permission denied (run as the node's user, or as root)")


def _no_constant(name: str) -> Any:
    """``NaN``/``Infinity`` are not JSON, and the daemon never writes them."""
    raise ValueError(f"{name} is not a number JSON allows")


def read_status_file(path: Path) -> dict[str, Any] | None:
    """``D/status`` parsed and checked (None if absent); :class:`StatusFileError` if it is
    oversized, truncated or not a status record.  Opened read-only, without blocking (a
    FIFO in its place is refused, not waited on), and judged by what was opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except PermissionError:
        raise StatusFileError(f"{path}: permission denied (run as the node's user)") from None
    except OSError as exc:
        raise StatusFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StatusFileError(f"{path}: not a regular file")
            os.set_blocking(fd, True)
            data = read_open_limited(f, path, MAX_STATUS_BYTES)
    except FileTooLargeError as exc:
        raise StatusFileError(f"{exc} (over the limit of a status file)") from None
    except OSError as exc:
        raise StatusFileError(f"{path}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise StatusFileError(f"{path}: not text (not a p2pupdate status file)") from None
    except RecursionError:
        raise StatusFileError(f"{path}: nested too deep (not a p2pupdate status file)") from None
    except ValueError as exc:
        what = "empty" if not data.strip() else f"truncated or corrupt JSON ({exc})"
        raise StatusFileError(f"{path}: {what}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise StatusFileError(f"{path}: not a p2pupdate status record (no format {FORMAT})")
    for key, types in _REQUIRED.items():
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, types):
            raise StatusFileError(f"{path}: not a p2pupdate status record ({key!r} missing)")
    return raw


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs a p2pupdate process (the cmdline, where /proc shows it, guards
    against a pid reused by something else after the node stopped)."""
    if not 0 < pid < 1 << 31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read(4096).rsplit(b")", 1)[-1].split()[:1]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read(4096)
    except OSError:
        return True  # no /proc to ask (or not ours to read): the pid exists
    return state not in ([b"Z"], [b"X"]) and b"p2pupdate" in cmdline


def _get(d: Any, key: str, types: tuple[type, ...], default: Any = None) -> Any:
    """``d[key]`` if ``d`` is a dict and the value has one of ``types`` (no bool for a
    number), else ``default``: a status file from another version reads as far as it goes."""
    if not isinstance(d, dict):
        return default
    value = d.get(key)
    if isinstance(value, bool) and bool not in types:
        return default
    return value if isinstance(value, types) else default


NUM: Final = (int, float)


def _slot(state: StateDir, name: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        sha = state.read_link(name)
    except StateError as exc:
        problems.append(str(exc))
        return None
    if sha is None:
        return None
    m = state.slot_manifest(sha)
    if m is None:
        problems.append(f"{name}: slot {sha[:SHORT]}... is missing or incomplete")
    return {
        "artifact": sha,
        "version": m.version if m is not None else None,
        "counter": m.counter if m is not None else None,
    }


def _slots(state: StateDir, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "current": _slot(state, "current", problems),
        "previous": _slot(state, "previous", problems),
        "pending": None,
        "denied": [],
        "rollbacks": 0,
        "last_rollback": None,
    }
    try:
        p: Pending | None = state.read_pending()
    except StateError as exc:
        problems.append(f"pending: {exc}")
        p = None
    if p is not None:
        out["pending"] = {
            "artifact": p.artifact,
            "previous": p.previous,
            "counter": p.counter,
            "created": p.created,
            "attempts": p.attempts,
            "max_attempts": p.max_attempts,
            "deadline": p.deadline,
            "last_failure": p.last_failure,
            "outcome": p.outcome,
            "reason": p.reason,
        }
    try:
        out["denied"] = [d._asdict() for d in state.read_denied()[-MAX_ROWS:]]
    except StateError as exc:
        problems.append(f"denied: {exc}")
    try:
        rollbacks = state.read_rollbacks()
    except StateError as exc:
        problems.append(f"rollbacks: {exc}")
        rollbacks = []
    out["rollbacks"] = len(rollbacks)
    if rollbacks:
        last = rollbacks[-1]
        out["last_rollback"] = {
            "artifact": last.artifact,
            "counter": last.counter,
            "reason": last.reason,
            "time": last.time,
            "reported": last.reported,
        }
    return out


def _links(gossip: Any) -> list[dict[str, Any]]:
    detail = _get(gossip, "links_detail", (list,))
    rows: list[dict[str, Any]] = []
    if detail is not None:
        for entry in detail[:MAX_ROWS]:
            peer = _get(entry, "peer", (str,))
            if peer is not None:
                rows.append(
                    {
                        "peer": peer,
                        "path": _get(entry, "path", (str,)),
                        "direction": _get(entry, "direction", (str,)),
                        "since": _get(entry, "since", NUM),
                    }
                )
        return rows
    paths = _get(gossip, "paths", (dict,), {})  # a daemon before links_detail: path only
    for peer, path in list(paths.items())[:MAX_ROWS]:
        rows.append(
            {"peer": peer, "path": path if isinstance(path, str) else None}
            | {"direction": None, "since": None}
        )
    return rows


def _replicas(coordinator: Any) -> list[dict[str, Any]]:
    rows = []
    for r in _get(coordinator, "replicas", (list,), [])[:MAX_ROWS]:
        url = _get(r, "url", (str,))
        if url is None:
            continue
        refused = _get(r, "admission_refused", (dict,))
        rows.append(
            {
                "url": url,
                "connected": _get(r, "connected", (bool,), False),
                "heard": _get(r, "heard", NUM),
                "admission_refused": None
                if refused is None
                else {
                    "reason": _get(refused, "reason", (str,), ""),
                    "detail": _get(refused, "detail", (str,), ""),
                },
            }
        )
    return rows


def _downloads(swarm: Any) -> list[dict[str, Any]]:
    rows = []
    for sha, a in list(_get(swarm, "artifacts", (dict,), {}).items())[:MAX_ROWS]:
        chunks, held = _get(a, "chunks", (int,), 0), _get(a, "held", (int,), 0)
        rows.append(
            {
                "artifact": sha,
                "chunks": chunks,
                "held": held,
                "sessions": _get(a, "sessions", (int,), 0),
                "origin_chunks": _get(a, "origin_chunks", (int,), 0),
                "completed_at": _get(a, "completed_at", NUM),
                "complete": chunks > 0 and held >= chunks,
            }
        )
    return rows


def collect(root: Path, *, now: float, alive: Callable[[int], bool] = pid_alive) -> dict[str, Any]:
    """Everything ``p2pupdate status`` says about the node at ``root`` (the ``--json``
    object), read without changing a file; ``now`` is the wall clock (unix seconds),
    ``alive`` whether a pid runs the daemon (:func:`pid_alive`)."""
    _check_dir(root)
    state = StateDir(root)
    status = read_status_file(state.status_path)
    if status is None and not (state.slots.is_dir() or os.path.lexists(root / "current")):
        raise StateDirError(
            f"{root}: not a p2pupdate state dir (no status file, no slots, no current link)"
        )
    problems: list[str] = []
    slots = _slots(state, problems)
    s = status or {}
    pid = _get(s, "pid", (int,))
    exit_code = _get(s, "exit_code", (int,))
    pid_runs = pid is not None and alive(pid)
    running = status is not None and exit_code is None and pid_runs
    written = _get(s, "time", NUM)
    updater = _get(s, "updater", (dict,), {})
    waiting = _get(s, "waiting_on", (dict,))
    gossip = _get(s, "gossip", (dict,))
    coordinator = _get(s, "coordinator", (dict,))
    swarm = _get(s, "swarm", (dict,))
    work = _get(s, "work", (dict,))
    return {
        "state_dir": str(root),
        "now": now,
        "running": running,
        "status_file": None
        if status is None
        else {"path": str(state.status_path), "written": written, "age_s": now - written},
        "daemon": None
        if status is None
        else {
            "pid": pid,
            "pid_alive": pid_runs,
            "version": _get(s, "version", (str,)),
            "artifact": _get(s, "slot", (str,)),
            "slot_version": _get(s, "slot_version", (str,)),
            "counter": _get(s, "counter", (int,)),
            "mode": _get(s, "mode", (str,)),
            "started": _get(s, "started", NUM),
            "exit_code": exit_code,
            "package_dir": _get(s, "package_dir", (str,)),
        },
        "slots": slots,
        "updater": None
        if status is None
        else {
            "state": _get(s, "state", (str,)),
            "waiting_on": waiting,
            "candidate": _get(updater, "candidate", (dict,)),
            "held": _get(updater, "held", (dict,)),
            "next_check": _get(updater, "next_check", NUM),
            "coordinator_errors": _get(updater, "coordinator_errors", (int,), 0),
            "last_error": _get(updater, "last_error", (str,)),
            "lease": _get(updater, "lease", (dict,)),
            "gate_checks": _get(s, "gate_checks", (int,)),
        },
        "gossip": None
        if gossip is None
        else {
            "node": _get(gossip, "node", (str,)),
            "address": _get(gossip, "address", (str,)),
            "links": _get(gossip, "links", (int,), 0),
            "active": _get(gossip, "active", (int,), 0),
            "passive": _get(gossip, "passive", (int,), 0),
            "relayed_bytes": _get(gossip, "relayed_bytes", (int,), 0),
            "allowlist": _get(gossip, "allowlist", (int,)),
        },
        "links": _links(gossip),
        "replicas": _replicas(coordinator),
        "swarm": _downloads(swarm),
        "work": work,
        "problems": problems,
    }


# -- rendering ----------------------------------------------------------------------------


def _clean(value: Any, limit: int = 120) -> str:
    """A value from a file, safe to print: no control characters (a status file must not
    drive the terminal), at most ``limit`` characters."""
    text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(sha: Any) -> str:
    return _clean(sha, SHORT) if isinstance(sha, str) and len(sha) <= SHORT else _clean(sha)[:SHORT]


def _span(seconds: float) -> str:
    """``42s``, ``5m 03s``, ``2h 10m``, ``3d 4h``."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _when(t: Any, now: float) -> str:
    """A wall time as UTC and how far from ``now`` (``16:20:11 UTC, 5m 03s ago``)."""
    if not isinstance(t, (int, float)) or isinstance(t, bool):
        return "unknown"
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return "unknown"
    d = t - now
    rel = "now" if abs(d) < 1 else (f"in {_span(d)}" if d > 0 else f"{_span(d)} ago")
    return f"{stamp} ({rel})"


def _slot_line(slot: Mapping[str, Any] | None) -> str:
    if slot is None:
        return "none"
    version = slot.get("version")
    counter = slot.get("counter")
    what = "slot missing" if version is None else f"{_clean(version, 40)} (counter {counter})"
    return f"{_short(slot.get('artifact'))}  {what}"


#: What the updater's timer is in each state that has one (``core.updater``).
_TIMER: Final = {
    "sleeping": "check",
    "refused": "retry",
    "backing_off": "retry",
    "draining": "drain deadline",
    "probation": "probation deadline",
}


def render(report: Mapping[str, Any]) -> str:
    """The human report of :func:`collect`'s object: short, aligned sections."""
    now = float(report["now"])
    lines: list[str] = []

    def row(label: str, text: str) -> None:
        lines.append(f"  {label:<13}{text}")

    lines.append(f"node state dir {_clean(report['state_dir'], 200)}")
    d = report["daemon"]
    st = report["status_file"]
    if d is None:
        row("daemon", "not running (no status file yet: the daemon has not written one)")
    else:
        if report["running"]:
            alive = f"running, pid {d['pid']}"
        elif d["exit_code"] is not None:
            alive = f"not running (exited with {d['exit_code']}; pid {d['pid']})"
        else:
            alive = f"not running (pid {d['pid']} is gone)"
        row("daemon", alive)
        row("started", _when(d["started"], now))
        row("version", f"{_clean(d['version'], 64)}  mode {_clean(d['mode'], 16)}")
        row("artifact", f"{_clean(d['artifact'], 64)}  (release counter {d['counter']})")
        row("status", f"written {_when(st['written'], now)}")
    s = report["slots"]
    lines.append("slots")
    row("current", _slot_line(s["current"]))
    row("previous", _slot_line(s["previous"]))
    p = s["pending"]
    if p is None:
        row("pending", "none")
    else:
        tries = f"attempt {p['attempts']}" + (
            f" of {p['max_attempts']}" if p["max_attempts"] is not None else ""
        )
        extra = f", probation ends {_when(p['deadline'], now)}" if p["deadline"] else ""
        row("pending", f"{_short(p['artifact'])} on probation, {tries}{extra}")
        if p["outcome"]:
            row("", f"outcome {_clean(p['outcome'])}: {_clean(p['reason'])}")
        elif p["last_failure"]:
            row("", f"last failure: {_clean(p['last_failure'])}")
    denied = ", ".join(_short(x.get("artifact")) for x in s["denied"][:4]) or "none"
    row("denied", denied + (f" and {len(s['denied']) - 4} more" if len(s["denied"]) > 4 else ""))
    last = s["last_rollback"]
    if last is None:
        row("rollbacks", "none")
    else:
        row(
            "rollbacks",
            f"{s['rollbacks']}, last {_short(last['artifact'])} {_when(last['time'], now)}: "
            f"{_clean(last['reason'], 80)}",
        )
    u = report["updater"]
    if u is not None:
        lines.append("updater" if report["running"] else "updater (last known)")
        row("state", _clean(u["state"], 32))
        w = u["waiting_on"]
        if isinstance(w, dict):
            pos = w.get("queue_position")
            queue = f" (queue position {pos})" if isinstance(pos, int) else ""
            row(
                "waiting on",
                f"gate {_clean(w.get('gate'), 32)}: {_clean(w.get('reason'), 64)}{queue}",
            )
        held = u["held"]
        if isinstance(held, dict):
            detail = f" ({_clean(held.get('detail'), 80)})" if held.get("detail") else ""
            row("held by", f"gate {_clean(held.get('gate'), 32)}: {_clean(held.get('reason'))}"
                + detail)  # fmt: skip
        c = u["candidate"]
        if isinstance(c, dict):
            force = " (forced)" if c.get("force") else ""
            row("target", f"{_short(c.get('artifact'))} release counter {c.get('counter')}{force}")
        if u["next_check"] is not None:
            what = _TIMER.get(str(u["state"]), "timer")
            row("next", f"{what} {_when(u['next_check'], now)}")
        if u["coordinator_errors"]:
            err = f": {_clean(u['last_error'])}" if u["last_error"] else ""
            row("errors", f"{u['coordinator_errors']} coordinator error(s) in a row{err}")
        lease = u["lease"]
        if isinstance(lease, dict):
            row(
                "lease",
                f"granted {_when(lease.get('granted'), now)}, lapses "
                f"{_when(lease.get('lapses'), now)}",
            )
        else:
            row("lease", "none")
    g = report["gossip"]
    links = report["links"]
    if g is not None or links:
        node = f" as {_short(g['node'])} at {_clean(g['address'], 64)}" if g else ""
        lines.append(f"links ({len(links)}){node}")
        for link in links:
            since = _when(link["since"], now) if link["since"] is not None else ""
            row(
                _short(link["peer"]),
                f"{_clean(link['path'] or '?', 6):<6} {_clean(link['direction'] or '', 3):<3} "
                f"{('since ' + since) if since else ''}".rstrip(),
            )
        if not links:
            row("", "none yet")
    if report["replicas"]:
        lines.append(f"replicas ({len(report['replicas'])})")
        for r in report["replicas"]:
            said = "connected" if r["connected"] else "not connected"
            heard = f", last heard {_when(r['heard'], now)}" if r["heard"] is not None else ""
            refused = r["admission_refused"]
            why = f"; refused: {_clean(refused['reason'], 64)}" if refused else ""
            lines.append(f"  {_clean(r['url'], 60)}  {said}{heard}{why}")
    downloads = [x for x in report["swarm"] if not x["complete"]]
    if report["swarm"]:
        lines.append(f"swarm ({len(downloads)} download(s) in progress)")
        for x in downloads:
            row(
                _short(x["artifact"]),
                f"{x['held']}/{x['chunks']} chunks, {x['sessions']} peer session(s), "
                f"{x['origin_chunks']} from the origin",
            )
    w = report["work"]
    if isinstance(w, dict):
        lines.append("work")
        flags = [
            "serving" if w.get("serving") else "not serving",
            "healthy" if w.get("healthy") else "unhealthy",
        ]
        port = f", port {w['port']}" if isinstance(w.get("port"), int) else ""
        row(_clean(w.get("name"), 10), ", ".join(flags) + port)
    for problem in report["problems"]:
        lines.append(f"problem: {_clean(problem, 200)}")
    return "\n".join(lines) + "\n"


# -- the command --------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """``p2pupdate status``: print the node's report; a bad state dir or status file is
    one line and exit 2."""
    root = (args.state_dir or args.default_state_dir()).absolute()
    try:
        report = collect(root, now=time.time())
    except LocalStateFault as exc:  # the status file: the local state's fault, named
        print(f"p2pupdate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        json.dump(report, sys.stdout, indent=1, sort_keys=True)
        print()
    else:
        sys.stdout.write(render(report))
    return EXIT_OK


def add_parser(sub: Any, *, default_state_dir: Callable[[], Path]) -> None:
    """Register ``status`` on ``p2pupdate``'s subparsers; ``default_state_dir`` is the
    node's own default (``commands.default_state_dir``: one home, passed in, so this
    module does not import the node's command line)."""
    st = sub.add_parser(
        "status",
        help="what this node runs and why it waits (reads its state dir, changes nothing)",
        description="Show what the node at STATE_DIR runs (version, artifact, since when, "
        "whether its daemon is alive), its slots (current, previous, a pending swap on "
        "probation, sticky denies, rollbacks), the updater's state and what it waits for "
        "(the gate that said no and why, the next check or retry, the departure lease), its "
        "gossip links and their path kinds (tcp, host, srflx, prflx, relay: a TURN relay), "
        "the replicas and when each was last heard, and swarm downloads in progress. "
        "It only reads the node's files (no lock, nothing written), so it is safe beside a "
        "running node; on a stopped one it says 'not running' and how old the last status "
        "file is.",
        epilog="Exit codes: 0 ok; 2 the state dir is missing, unreadable or not a node's, or "
        "its status file is oversized, truncated or not a status record (one line naming "
        "the path).",
    )
    st.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the node's state dir (default /var/lib/p2pupdate as root, else "
        "$XDG_STATE_HOME/p2pupdate: the same as `p2pupdate node`)",
    )
    st.add_argument("--json", action="store_true", help="print one JSON object (README 'CLI')")
    st.set_defaults(handler=cmd_status, default_state_dir=default_state_dir)
