"""The netlab command line: ``up``, ``down``, ``status``, ``exec`` (run from the repo root).

Exit codes: 0 done, 1 a tool failed on this machine (ip, nft, tc), 2 bad usage or topology.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

if not __package__:  # run as `python scripts/netlab ...`: import from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from p2pupdate.errors import UsageFault
from scripts.netlab.lab import Lab, NetlabError, down, namespaces, status
from scripts.netlab.topology import check_prefix, load_topology

EPILOG = """\
examples (as root, from the repository root; `python scripts/netlab` works too):
  python -m scripts.netlab up scripts/netlab/topologies/two-cone.toml --prefix nl1
  python -m scripts.netlab exec nl1 a1 -- ip -br addr
  python -m scripts.netlab status
  python -m scripts.netlab down --prefix nl1

Namespaces are named PREFIX-inet (the inet bridge, 198.18.0.1/24), PREFIX-h-HOST (inet
hosts, .200 up), PREFIX-r-HOME (routers; WAN .10 up, LAN 10.N.0.1/24), PREFIX-n-NODE (nodes,
10.N.0.10 up).  `down` finds them by the prefix alone, also after a crashed `up`.

topology file (TOML):
  [inet]
  hosts = ["coord", "turn"]            # namespaces on the inet bridge
  [[homes]]
  name = "a"                           # names: 1-6 of [a-z0-9], unique
  nat = "cone"                         # cone: DMZ DNAT of inbound UDP to the first node;
                                       # strict: symmetric (a random port per flow),
                                       # inbound established/related only
  nodes = ["a1", "a2"]                 # 1-3 nodes on the home's LAN bridge (mDNS works)
  uplink = { rate_kbit = 1000, delay_ms = 20, loss_pct = 1.0 }    # optional, also downlink
Rate is a tbf qdisc, loss an nftables rule in the router, delay a userspace delay line
(python -m scripts.netlab.wire, in its own namespace): this kernel has no netem.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts.netlab",
        description="Build home networks behind NAT routers from a TOML topology, in "
        "Linux network namespaces (needs root, ip, nft; tc for rate shaping).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the lab described by TOPOLOGY")
    up.add_argument("topology", help="a TOML file (see scripts/netlab/topologies/)")
    up.add_argument("--prefix", help="name prefix, 1-5 of [a-z0-9] (default: random)")
    dn = sub.add_parser("down", help="remove everything whose name carries PREFIX")
    dn.add_argument("--prefix", required=True)
    sub.add_parser("status", help="list labs (by prefix) and their namespaces")
    ex = sub.add_parser("exec", help="run a command in a node, host or router: exec P NAME -- CMD")
    ex.add_argument("prefix")
    ex.add_argument("name", help="node, inet host, home (its router) or 'inet'")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    return p


def _exec(prefix: str, name: str, argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageFault("exec: no command given (exec P NAME -- CMD ...)")
    have = set(namespaces(check_prefix(prefix)))
    kinds = ["inet"] if name == "inet" else ["n", "h", "r"]
    for kind in kinds:
        ns = f"{prefix}-{kind}" if kind == "inet" else f"{prefix}-{kind}-{name}"
        if ns in have:
            os.execvp("ip", ["ip", "netns", "exec", ns, *argv])
    raise UsageFault(f"no node, host or home {name!r} in lab {prefix}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "up":
            topo = load_topology(Path(args.topology))
            prefix = check_prefix(args.prefix or "n" + secrets.token_hex(2))
            lab = Lab(topo, prefix)
            try:
                lab.build()
            except BaseException:
                lab.close()
                raise
            for home in topo.homes:
                nodes = " ".join(f"{n}={lab.addr(n)}" for n in home.nodes)
                print(f"home {home.name} ({home.nat}) wan={lab.wan(home.name)} {nodes}")
            for host in topo.inet_hosts:
                print(f"inet host {host}={lab.inet_addr(host)}")
            print(
                f"lab {prefix} is up; remove it with: python -m scripts.netlab down --prefix {prefix}"
            )
        elif args.cmd == "down":
            removed = down(check_prefix(args.prefix))
            print(f"removed {len(removed)} namespace(s)/link(s) with prefix {args.prefix}")
        elif args.cmd == "status":
            labs = status()
            if not labs:
                print("no netlab labs")
            for prefix, spaces in labs.items():
                print(f"{prefix}: {' '.join(spaces)}")
        else:
            return _exec(args.prefix, args.name, args.argv)
    except UsageFault as e:
        print(f"netlab: {e}", file=sys.stderr)
        return 2
    except NetlabError as e:
        print(f"netlab: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
