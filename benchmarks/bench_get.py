"""In-process get hit path vs a cachetools.TTLCache lookup under a lock, in one run.

    .venv/bin/python benchmarks/bench_get.py [--rounds 7] [--n 200000]

Both sides hold the same value. writethrough stores it serialized and returns a
fresh decoded copy on each hit (so a caller that mutates it cannot corrupt the
cache); cachetools returns the stored object itself. The "bytes" rows use the
bytes serializer (no decode) to show the cost of the path alone. Rounds alternate
the two sides; the ratio of medians is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import cachetools
import orjson

import writethrough
from writethrough import BytesSerializer

VALUES = {
    "issue example {name, balance}": {"name": "Alice", "balance": 400},
    "profile, 4 fields + list": {
        "name": "Alice",
        "balance": 400,
        "email": "alice@example.com",
        "tags": ["a", "b"],
    },
}


def per_op_ns(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n


def measure(label: str, value: object, serializer: object, rounds: int, n: int) -> None:
    tmp = tempfile.mkdtemp()
    store = writethrough.open(
        source=f"sqlite:///{tmp}/b.db", cache="memory://", namespace="bench", serializer=serializer
    )
    stored = value if serializer is None else orjson.dumps(value)
    store.put("user:42", stored)
    store.get("user:42")
    assert store.get("user:42") == stored and store.stats.hits == 1

    ttl_cache: cachetools.TTLCache[str, object] = cachetools.TTLCache(maxsize=100_000, ttl=300)
    lock = threading.Lock()
    ttl_cache["user:42"] = value

    def baseline() -> object:
        with lock:
            return ttl_cache["user:42"]

    def ours() -> object:
        return store.get("user:42")

    base, mine = [], []
    for _ in range(rounds):
        base.append(per_op_ns(baseline, n))
        mine.append(per_op_ns(ours, n))
    b, m = statistics.median(base), statistics.median(mine)
    print(f"{label:56s} TTLCache+lock {b:5.0f} ns  writethrough {m:5.0f} ns  ratio {m / b:.2f}x")
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    print(f"get hit, memory://, median of {args.rounds} alternating rounds of {args.n:,} gets:")
    for label, value in VALUES.items():
        measure(f"{label} (JSON decode per get)", value, None, args.rounds, args.n)
    for label, value in VALUES.items():
        measure(f"{label} (bytes: path without decode)", value, BytesSerializer(), args.rounds, args.n)
    print("goal: <= 1.5x (issue 2)")


if __name__ == "__main__":
    main()
