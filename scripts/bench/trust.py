"""Benchmark the trust core; prints one JSON object.

    .venv/bin/python scripts/bench/trust.py [--seconds S]

Measures, on this machine: raw Ed25519 sign and verify (PyNaCl), a full
``TrustStore.verify`` of a scope token (envelope parse, signature, payload schema,
freshness, floor), parsing + verifying the release record of a 1 GiB artifact
(4096 chunk hashes), and ``wire.decode`` of a worst-case-shaped 16 KiB message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable

from p2pupdate.core import crypto, wire
from p2pupdate.core import documents as docs
from p2pupdate.core.trust import TrustStore

NOW = 1_800_000_000


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = ap.parse_args()

    keys = {r: crypto.SigningKey.from_seed(hashlib.sha256(r.encode()).digest()) for r in docs.ROLES}
    root = docs.Root(
        version=1,
        issued=NOW,
        expires=NOW + 10**6,
        network="bench",
        keys={k.keyid: k.public_key for k in keys.values()},
        roles={r: docs.Role(keys=(k.keyid,), threshold=1) for r, k in keys.items()},
    )
    store = TrustStore.from_root(root.sign([keys["root"]]).to_wire(), NOW)
    scope = docs.Scope(
        serial=1, issued=NOW, expires=NOW + 3600, artifact="ab" * 32, kind="everyone"
    )
    scope_bytes = scope.sign([keys["operator"]]).to_wire()
    payload = scope.to_payload()
    _, sig = keys["operator"].sign("scope", payload)
    pub = keys["operator"].public_key

    chunk = 256 * 1024
    n_chunks = 4096
    release = docs.Release(
        name="big",
        counter=1,
        artifact="cd" * 32,
        length=n_chunks * chunk,
        chunk_size=chunk,
        chunks=tuple(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n_chunks)),
        issued=NOW,
        expires=NOW + 10**6,
    )
    release_bytes = release.sign([keys["release"]]).to_wire()
    msg = wire.encode({"k": [[i, b"x" * 8, "y" * 4] for i in range(300)]})[: 16 * 1024]

    out = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "ed25519_sign_per_s": round(
            rate(lambda: keys["operator"].sign("scope", payload), args.seconds)
        ),
        "ed25519_verify_per_s": round(
            rate(lambda: crypto.verify_signature(pub, "scope", payload, sig), args.seconds)
        ),
        "scope_full_verify_per_s": round(
            rate(lambda: store.verify(docs.Scope, scope_bytes, NOW), args.seconds)
        ),
        "release_1gib_verify_per_s": round(
            rate(lambda: store.verify(docs.Release, release_bytes, NOW), args.seconds), 1
        ),
        "release_1gib_bytes": len(release_bytes),
        "decode_message_per_s": round(rate(lambda: wire.decode(msg), args.seconds)),
        "message_bytes": len(msg),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
