"""What instrumenting a store costs, as ratios to the same store uninstrumented, measured
side by side in one process (memory:// cache, SQLite in a temp file, sync store).

    .venv/bin/python benchmarks/bench_observe.py [--rounds 5] [--ops 20000]

Variants: plain; instrument(metrics) (timings, outcomes, read-backs); + tracing with
opentelemetry-api and no SDK (the API's no-op tracer); + tracing with the SDK recording every
span to a no-op processor. Reported: best-of-rounds µs per get hit and per put, and the ratio
to plain. An uninstrumented store runs none of this code (test_observe checks it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from prometheus_client import CollectorRegistry

import writethrough
from writethrough.observe import instrument

PROFILE = {"name": "Alice", "balance": 400, "email": "alice@example.com"}


def per_op(fn: Callable[[int], Any], ops: int) -> float:
    start = time.perf_counter()
    for i in range(ops):
        fn(i)
    return (time.perf_counter() - start) / ops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=20_000)
    args = parser.parse_args()
    sdk = TracerProvider()
    sdk.add_span_processor(SpanProcessor())  # records every span, exports none
    with tempfile.TemporaryDirectory() as tmp:
        variants: dict[str, Any] = {}
        for name in ("plain", "metrics", "tracing, no SDK", "tracing, SDK"):
            store = writethrough.open(f"sqlite:///{Path(tmp) / name}.db", "memory://",
                                      namespace=name.replace(" ", "").replace(",", "_"))
            if name != "plain":
                store = instrument(store, registry=CollectorRegistry(), tracing=name != "metrics",
                                   tracer_provider=sdk if name == "tracing, SDK" else None)
            for i in range(100):
                store.put(f"k{i}", PROFILE)
                store.get(f"k{i}")
            variants[name] = store
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.rounds):  # interleaved, so drift hits every variant alike
            for name, store in variants.items():
                for what, fn in (("get hit", lambda i, s=store: s.get(f"k{i % 100}")),
                                 ("put", lambda i, s=store: s.put(f"k{i % 100}", PROFILE))):
                    ops = args.ops if what == "get hit" else args.ops // 10
                    t = per_op(fn, ops)
                    best[(name, what)] = min(best.get((name, what), t), t)
        print(f"{'variant':<18} {'get hit µs':>10} {'ratio':>6} {'put µs':>8} {'ratio':>6}")
        for name in variants:
            g, p = best[(name, "get hit")], best[(name, "put")]
            print(f"{name:<18} {g:>10.2f} {g / best[('plain', 'get hit')]:>6.2f} "
                  f"{p:>8.1f} {p / best[('plain', 'put')]:>6.2f}")
        for store in variants.values():
            store.close()


if __name__ == "__main__":
    main()
