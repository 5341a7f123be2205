"""The swarm bench's libtorrent side: one seed (the origin) and N clients, one per home.

    python -m scripts.bench._swarm_lt seed|client --torrent T --dir D --listen ADDR
        --status FILE [--seed ADDR] [--up B/s] [--down B/s] [--go FILE]

runs one libtorrent session in the namespace it was started in (the bench starts it with
``ip netns exec``).  Both kinds are plain BitTorrent over tcp: no DHT, no local peer
discovery, no UPnP / NAT-PMP, no uTP (its delay-based congestion control would yield to
``tbf``'s queue, and ours dials tcp), default piece picker, choker (8 unchoke slots) and
extensions (``ut_pex``).  A client waits for the ``--go`` file, adds the torrent with an
empty save directory and dials only the seed: every other peer it learns from the seed's
and the other peers' PEX.  ``--up``/``--down`` are libtorrent's own session rate limits
(payload and protocol), the same caps the netlab's ``tbf`` sets on the links.

Each process writes ``--status`` (JSON, atomically, every 0.2 s): ``bytes_up`` (payload
uploaded), ``bytes_down``, ``peers``, ``progress``, ``completed_at`` (wall clock, when every
piece was verified) and ``ready`` (listening; the seed: its data checked).  SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

PORT = 6881


def libtorrent() -> Any:
    """The ``libtorrent`` module (the ``bench`` extra), or None when it is not installed."""
    try:
        return importlib.import_module("libtorrent")
    except ImportError:
        return None


def make_torrent(artifact: Path, out: Path, piece_size: int) -> None:
    """A v1 .torrent of ``artifact`` with pieces of ``piece_size`` bytes (our chunk size)."""
    lt = libtorrent()
    fs = lt.file_storage()
    lt.add_files(fs, str(artifact))
    t = lt.create_torrent(fs, piece_size, flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(t, str(artifact.parent))
    out.write_bytes(lt.bencode(t.generate()))


def _write(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    lt = libtorrent()
    if lt is None:
        print("libtorrent is not installed (pip install '.[bench]')", file=sys.stderr)
        return 2
    stop = False

    def on_term(_sig: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    settings: dict[str, Any] = {
        "listen_interfaces": f"{args.listen}:{PORT}",
        "outgoing_interfaces": args.listen,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "alert_mask": 0,
    }
    if args.up:
        settings["upload_rate_limit"] = int(args.up)
    if args.down:
        settings["download_rate_limit"] = int(args.down)
    ses = lt.session(settings)
    ti = lt.torrent_info(str(args.torrent))
    status_path = Path(args.status)
    state: dict[str, Any] = {"ready": False, "bytes_up": 0, "bytes_down": 0, "peers": 0,
                             "progress": 0.0, "completed_at": None}  # fmt: skip
    handle = None
    if args.kind == "seed":
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = str(args.dir)
        handle = ses.add_torrent(atp)
    else:
        state["ready"] = True
    _write(status_path, {**state, "t": time.time()})
    while not stop:
        if handle is None and Path(args.go).exists():
            atp = lt.add_torrent_params()
            atp.ti = ti
            atp.save_path = str(args.dir)
            handle = ses.add_torrent(atp)
            handle.connect_peer((args.seed, PORT))
        if handle is not None:
            st = handle.status()
            state["bytes_up"] = int(st.total_payload_upload)
            state["bytes_down"] = int(st.total_payload_download)
            state["peers"] = int(st.num_peers)
            state["progress"] = float(st.progress)
            if st.is_seeding:
                if args.kind == "seed":
                    state["ready"] = True
                elif state["completed_at"] is None:
                    state["completed_at"] = time.time()
        _write(status_path, {**state, "t": time.time()})
        time.sleep(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="_swarm_lt")
    ap.add_argument("kind", choices=("seed", "client"))
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("--seed", default="")
    ap.add_argument("--go", default="")
    ap.add_argument("--up", type=float, default=0.0)
    ap.add_argument("--down", type=float, default=0.0)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
