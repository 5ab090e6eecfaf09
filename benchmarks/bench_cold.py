"""Cold write-through: what a put onto an uncached key costs with a writer lease
(on_empty="lease", the default) against a tombstone (on_empty="tombstone") and against a
put onto a cached key, side by side in one process; and what the read right after costs.

    python benchmarks/bench_cold.py [--source URL] [--cache URL] [--n 2000]

Round trips, by construction: a warm put = 1 DB statement + 1 cache script; a cold put
with a lease = 2 DB statements (the commit, the row read back under the lease) + 2 cache
scripts (write -> LEASED, fill); with a tombstone = 1 + 1, and the next read pays the
miss: 1 cache script (lease) + 1 DB read + 1 cache script (fill).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import writethrough


def run(source: str, cache: str, n: int) -> None:
    rows = []
    for on_empty in ("lease", "tombstone"):
        ns = f"cold{uuid.uuid4().hex[:8]}"
        with writethrough.open(source=source, cache=cache, namespace=ns, on_empty=on_empty) as store:
            cold_put, read_after, warm_put = [], [], []
            for i in range(n):
                t0 = time.perf_counter()
                store.put(f"new:{i}", {"i": i})
                t1 = time.perf_counter()
                store.get(f"new:{i}")
                t2 = time.perf_counter()
                store.put(f"new:{i}", {"i": -i})
                t3 = time.perf_counter()
                cold_put.append(t1 - t0)
                read_after.append(t2 - t1)
                warm_put.append(t3 - t2)
            s = store.stats
            rows.append((on_empty, statistics.median(cold_put), statistics.median(read_after),
                         statistics.median(warm_put), s.source_reads / n, s.hits / n))
    print(f"{'on_empty':10} {'cold put µs':>12} {'read after µs':>14} {'warm put µs':>12} "
          f"{'DB reads/create':>16} {'hit after create':>17}")
    for on_empty, cold, after, warm, reads, hits in rows:
        print(f"{on_empty:10} {cold * 1e6:12.0f} {after * 1e6:14.0f} {warm * 1e6:12.0f} "
              f"{reads:16.2f} {hits:17.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--cache", default="redis://127.0.0.1:6379/0?socket_timeout=0.5")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    run(args.source, args.cache, args.n)
