"""What the durable outbox costs: put latency and DB row writes per put, side by side.

    .venv/bin/python benchmarks/bench_outbox.py [--puts 3000] [--rounds 5]

Runs best-effort and outbox stores alternately in one process on SQLite (a temp file)
and PostgreSQL (WRITETHROUGH_POSTGRES_URL, else a throwaway server), with the
in-process cache. Row writes per put come from the database's own counters on
PostgreSQL (pg_stat_user_tables: inserts + updates + deletes on the data and
outbox tables) and from the store's counters on SQLite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import writethrough
from servers import postgres_server

VALUE = {"name": "Alice", "balance": 400, "email": "alice@example.com"}


def run(source: str, durability: str, puts: int) -> list[int]:
    with writethrough.open(
        source=source, namespace=f"ob{uuid.uuid4().hex[:8]}", durability=durability,
        repair_interval=0.05,
    ) as store:
        timings = []
        for i in range(puts):
            started = time.perf_counter_ns()
            store.put(f"user:{i % 500}", VALUE)
            timings.append(time.perf_counter_ns() - started)
        store.repair_once()  # clear the last batch
        return timings


def pg_row_writes(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
            "WHERE relname IN ('writethrough_items', 'writethrough_outbox')"
        ).fetchone()
        return int(row[0]) if row else 0


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1000


def measure(label: str, source: str, puts: int, rounds: int, pg_url: str | None) -> None:
    results: dict[str, list[int]] = {"best-effort": [], "outbox": []}
    writes: dict[str, list[float]] = {"best-effort": [], "outbox": []}
    for _ in range(rounds):
        for durability in ("best-effort", "outbox"):
            before = pg_row_writes(pg_url) if pg_url else 0
            results[durability] += run(source, durability, puts)
            if pg_url:
                time.sleep(0.05)
                writes[durability].append((pg_row_writes(pg_url) - before) / puts)
    for durability, timings in results.items():
        row_writes = (
            f"{statistics.median(writes[durability]):.2f} row writes/put (pg_stat)"
            if pg_url else ("1 row write/put (by construction)" if durability == "best-effort"
                            else "3 row writes/put: row, outbox insert, batched outbox delete")
        )
        print(f"{label:10s} {durability:11s} put p50 {pct(timings, 0.5):7.1f} us  "
              f"p99 {pct(timings, 0.99):7.1f} us  {row_writes}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--puts", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    measure("sqlite", f"sqlite:///{tmp}/o.db", args.puts, args.rounds, None)
    with postgres_server() as pg:
        measure("postgres", pg.url, args.puts, args.rounds, pg.url)


if __name__ == "__main__":
    main()
