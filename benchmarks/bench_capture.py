"""What change capture costs writers, and how far behind the cache is (issue 11).

    .venv/bin/python benchmarks/bench_capture.py [--seconds 20] [--rounds 2] [--stop 60]
        [--only tps,bulk,lag,catchup,diverge]

Starts its own PostgreSQL with ``wal_level=logical`` and ``fsync=on`` (commits as durable
as in production) and a throwaway Redis (or WRITETHROUGH_REDIS_URL), then, side by side
in one run:

* pgbench, 8 clients, 70% UPDATE / 15% INSERT / 15% DELETE on a 10,000-row table:
  no capture (a plain table), versioned (the version trigger only), logical (+ a listener
  streaming to Redis), triggers (+ a listener polling): TPS, and the ratio to no capture;
* a bulk UPDATE of all 10,000 rows (median of 9), same four, and logical with the
  statement setting the version itself (`SET ..., version = version + 1`);
* the listener's lag (commit -> cache write) p50 / p99 at 1,000 and 5,000 changes/s;
* catch-up: the listener stopped for ``--stop`` seconds at 1,000 changes/s, then the rate
  at which it applies the backlog;
* divergence: pgbench with the mix while the listener (a child process) is killed with
  SIGKILL in the middle and restarted, then TRUNCATE + re-insert; the cache is compared
  with the table row by row;
* the re-insert race: the mix on 20 hot keys, how many re-inserts ended below their
  key's delete.

Figures are printed as tables; nothing is asserted (timings on shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import _pg_binary, postgres_server, redis_server
from writethrough.caches import open_cache
from writethrough.capture import (
    Keyspace,
    LogicalListener,
    TriggerListener,
    drop_slot,
    install,
    slot_status,
    uninstall,
)
from writethrough.capture.versions import cache_version
from writethrough.protocol import Kind

TABLE, KEYS, GROUP, HOT = "bench_capture", 10_000, "bench", 20
SCRIPTS = {
    "update": f"\\set id random(1, {KEYS})\n"
              f"UPDATE {TABLE} SET balance = balance + 1 WHERE id = :id;\n",
    "insert": f"\\set id random(1, {KEYS})\nINSERT INTO {TABLE} (id, balance, filler) "
              f"VALUES (:id, 0, repeat('x', 40)) ON CONFLICT (id) DO NOTHING;\n",
    "delete": f"\\set id random(1, {KEYS})\nDELETE FROM {TABLE} WHERE id = :id;\n",
    # five rows per transaction: 5,000 changes/s at 1,000 commits/s (fsync=on on 2 cores
    # does not commit 5,000 single-row transactions a second)
    "update5": "".join(f"\\set i{n} random(1, {KEYS})\n" for n in range(5))
               + f"UPDATE {TABLE} SET balance = balance + 1 WHERE id IN (:i0, :i1, :i2, :i3, :i4);\n",
}
MODES = ("none", "versioned", "logical", "triggers")


class Bench:
    def __init__(self, pg: str, cache: str, workdir: Path) -> None:
        self.pg, self.cache, self.dir = pg, cache, workdir
        self.pgbench = _pg_binary("pgbench")
        for name, text in SCRIPTS.items():
            (workdir / f"{name}.sql").write_text(text)
            (workdir / f"hot_{name}.sql").write_text(text.replace(f"random(1, {KEYS})",
                                                                  f"random(1, {HOT})"))

    def sql(self, statement: str, params: Any = None) -> list[Any]:
        with psycopg.connect(self.pg, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def reset(self, mode: str) -> None:
        """A fresh 10,000-row table with ``mode``'s capture installed (slot dropped)."""
        with suppress(Exception):  # nothing installed yet
            uninstall(self.pg, TABLE)
        self._drop_slot()
        self.sql(f"DROP TABLE IF EXISTS {TABLE}")
        self.sql(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0, "
                 "filler text, version bigint NOT NULL DEFAULT 0)")
        self.sql(f"INSERT INTO {TABLE} (id, filler) SELECT g, repeat('x', 40) "
                 f"FROM generate_series(1, {KEYS}) g")
        if mode in ("versioned", "logical"):
            install(self.pg, TABLE, "id", capture="logical")
        if mode == "versioned":  # the version trigger alone: no publication
            self.sql(f"DROP PUBLICATION IF EXISTS {_publication()}")
        if mode == "triggers":
            install(self.pg, TABLE, "id", capture="triggers")
        self.sql(f"VACUUM ANALYZE {TABLE}")
        self.sql("CHECKPOINT")

    def _drop_slot(self) -> None:
        for _ in range(100):
            try:
                drop_slot(self.pg, GROUP)
                return
            except Exception:
                time.sleep(0.1)

    def listener(self, mode: str, cache: Any = None, **options: Any
                 ) -> LogicalListener | TriggerListener:
        spaces = {"bench": Keyspace("bench", TABLE, "id", "write-through")}
        target = self.cache if cache is None else cache
        if mode == "logical":
            return LogicalListener(self.pg, target, spaces, group=GROUP, **options)
        return TriggerListener(self.pg, target, spaces, poll_interval=0.05, **options)

    def run_pgbench(self, seconds: float, *, rate: int | None = None, clients: int = 8,
                    scripts: str = "mix") -> float:
        hot = "hot_" if scripts == "hot" else ""
        files = (["-f", f"{self.dir}/{hot}update.sql@70", "-f", f"{self.dir}/{hot}insert.sql@15",
                  "-f", f"{self.dir}/{hot}delete.sql@15"] if scripts in ("mix", "hot")
                 else ["-f", f"{self.dir}/{scripts}.sql"])
        args = [self.pgbench, "-n", "-c", str(clients), "-j", "2", "-T", str(int(seconds)),
                *files, *(["-R", str(rate)] if rate else []), self.pg]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        found = re.search(r"tps = ([\d.]+)", out)
        return float(found.group(1)) if found else 0.0


def _publication() -> str:
    from writethrough.capture.pg import table_tag
    return table_tag("public", TABLE)


@contextmanager
def running(listener: LogicalListener | TriggerListener) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        listener.close()


def backlog(b: Bench, mode: str, listener: LogicalListener | TriggerListener) -> int:
    if mode == "logical":
        status = slot_status(b.pg, GROUP)
        return status.behind_bytes if status else 0
    assert isinstance(listener, TriggerListener)
    return listener.queued()


# -- the measurements --------------------------------------------------------------------


def measure_tps(b: Bench, seconds: float, rounds: int) -> None:
    """Each capture with its listener stopped (the writers' own cost) and running (on this
    machine it shares the CPUs with pgbench and PostgreSQL, as it would on a small host)."""
    variants = ["none", "versioned", "logical", "logical+listener", "triggers",
                "triggers+listener"]
    results: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(rounds):
        for variant in (variants if round_ % 2 == 0 else variants[::-1]):
            mode, _, listen = variant.partition("+")
            b.reset(mode)
            if listen:
                with running(b.listener(mode)):
                    results[variant].append(b.run_pgbench(seconds))
            else:
                if mode == "logical":
                    b.listener(mode).close()  # the slot exists: WAL is kept for it
                results[variant].append(b.run_pgbench(seconds))
    base = statistics.median(results["none"])
    print(f"\npgbench, 8 clients, 70% UPDATE / 15% INSERT / 15% DELETE on {KEYS:,} rows, "
          f"{seconds:.0f} s x {rounds} round(s) (order reversed every other round), fsync=on")
    print(f"{'capture':<19}{'TPS (median)':>14}{'x no capture':>14}   every run")
    for variant in variants:
        tps = statistics.median(results[variant])
        runs = ", ".join(f"{t:,.0f}" for t in results[variant])
        print(f"{variant:<19}{tps:>14,.0f}{tps / base:>14.2f}   {runs}")


BULK = {  # variant -> (capture installed, the UPDATE's SET list)
    "none": ("none", "balance = balance + 1"),
    "versioned": ("versioned", "balance = balance + 1"),
    "logical": ("logical", "balance = balance + 1"),
    "logical, SET version": ("logical", "balance = balance + 1, version = version + 1"),
    "triggers": ("triggers", "balance = balance + 1"),
}


def measure_bulk(b: Bench, reps: int = 9) -> None:
    """One table per variant, updated in turn (the machine's noise hits all alike); no
    listener runs meanwhile: this is the writer's own cost. "logical, SET version": the
    statement sets the version itself, so the version trigger's WHEN skips its function."""
    tables = {variant: f"{TABLE}_b{i}" for i, variant in enumerate(BULK)}
    for variant, table in tables.items():
        mode = BULK[variant][0]
        with suppress(Exception):  # nothing installed yet
            uninstall(b.pg, table)
        b.sql(f"DROP TABLE IF EXISTS {table}")
        b.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, balance int NOT NULL DEFAULT 0, "
              "filler text, version bigint NOT NULL DEFAULT 0)")
        b.sql(f"INSERT INTO {table} (id, filler) SELECT g, repeat('x', 40) "
              f"FROM generate_series(1, {KEYS}) g")
        if mode != "none":
            install(b.pg, table, "id", capture="triggers" if mode == "triggers" else "logical")
        if mode == "versioned":
            from writethrough.capture.pg import table_tag
            b.sql(f"DROP PUBLICATION {table_tag('public', table)}")
        b.sql(f"VACUUM ANALYZE {table}")
    spaces = {"bulk": Keyspace("bulk", tables["logical"], "id", "write-through")}
    LogicalListener(b.pg, b.cache, spaces, group="bulk").close()  # its slot keeps the WAL
    results: dict[str, list[float]] = {variant: [] for variant in BULK}
    with psycopg.connect(b.pg, autocommit=True) as conn:
        for rep in range(reps):
            for variant, table in (list(tables.items())[::1 if rep % 2 == 0 else -1]):
                started = time.perf_counter()
                conn.execute(f"UPDATE {table} SET {BULK[variant][1]}")
                results[variant].append((time.perf_counter() - started) * 1000)
                conn.execute(f"VACUUM {table}")
        conn.execute(f"DELETE FROM writethrough_changes WHERE tbl = '{tables['triggers']}'"
                     "::regclass")
    for table in tables.values():
        uninstall(b.pg, table)
        b.sql(f"DROP TABLE {table}")
    drop_slot(b.pg, "bulk")
    print(f"\nbulk UPDATE of {KEYS:,} rows (one statement), {len(BULK)} tables in turn (order "
          f"reversed every other time), median of {reps}; no listener running")
    print(f"{'capture':<22}{'ms':>10}{'x no capture':>14}   every run")
    for variant in BULK:
        ms = statistics.median(results[variant])
        ratio = statistics.median(a / n for a, n in zip(results[variant], results["none"], strict=True))
        runs = ", ".join(f"{t:.0f}" for t in results[variant])
        print(f"{variant:<22}{ms:>10.1f}{ratio:>14.2f}   {runs}")


def measure_lag(b: Bench, seconds: float) -> None:
    print(f"\nlag from commit to cache write, UPDATEs at a fixed rate for {seconds:.0f} s "
          "(pgbench -R, 4 clients; 5,000 changes/s as 1,000 transactions of 5 rows)")
    print(f"{'capture':<12}{'changes/s':>10}{'achieved':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'max ms':>9}{'changes':>9}")
    for mode in ("logical", "triggers"):
        for rate, script, rows in ((1000, "update", 1), (5000, "update5", 5)):
            b.reset(mode)
            listener = b.listener(mode)
            with running(listener):
                tps = b.run_pgbench(seconds, rate=rate // rows, clients=4, scripts=script)
                deadline = time.monotonic() + 30
                while backlog(b, mode, listener) > 0 and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(0.5)
                lag = listener.lag_percentiles()
            print(f"{mode:<12}{rate:>10,}{tps * rows:>10,.0f}{lag.p50 * 1000:>9.1f}"
                  f"{lag.p99 * 1000:>9.1f}{lag.max * 1000:>9.1f}{lag.count:>9,}")


class OneByOne:
    """The cache without its pipelined forms: the listener writes key by key (as before
    the pipelines), for the side-by-side catch-up."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name

    def __getattr__(self, name: str) -> Any:
        if name in ("write_many", "fill_many"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def measure_catchup(b: Bench, stopped: float) -> None:
    print(f"\ncatch-up after the listener was stopped for {stopped:.0f} s at 1,000 changes/s")
    print(f"{'capture':<12}{'writes':<20}{'backlog':>10}{'seconds':>10}{'changes/s':>11}")
    for mode in ("logical", "triggers"):
        for writes in ("pipelined", "one call per key"):
            cache = open_cache(b.cache) if writes != "pipelined" else None
            b.reset(mode)
            b.listener(mode).close()  # the slot exists: changes from now on are kept
            b.run_pgbench(stopped, rate=1000, clients=4, scripts="update")
            listener = b.listener(mode, OneByOne(cache) if cache else None, batch_size=1000)
            started = time.monotonic()
            if mode == "logical":
                with running(listener):
                    while backlog(b, mode, listener) > 64 * 1024 or listener.stats.applied == 0:
                        time.sleep(0.05)
                        if time.monotonic() - started > 600:
                            break
                    took = time.monotonic() - started
                    applied = listener.stats.applied
            else:
                assert isinstance(listener, TriggerListener)
                applied = listener.drain_once()
                took = time.monotonic() - started
                listener.close()
            if cache is not None:
                cache.close()
            print(f"{mode:<12}{writes:<20}{applied:>10,}{took:>10.1f}{applied / took:>11,.0f}")


def measure_race(b: Bench, seconds: float) -> None:
    """How often a re-insert's version ends below its key's delete (the race a BEFORE
    trigger cannot close): the mix on 20 hot keys, counted by the logical listener."""
    b.reset("logical")
    listener = b.listener("logical")
    with running(listener):
        b.run_pgbench(seconds, scripts="hot")
        time.sleep(2)
        stats = listener.stats
    print(f"\nthe mix on {HOT} hot keys for {seconds:.0f} s: {stats.applied:,} changes, "
          f"{stats.went_back:,} re-insert(s) below their delete (left a miss until the "
          "tombstone expired)")


def compare(b: Bench) -> tuple[int, int, int]:
    """(divergences, values that match, keys that are a miss) over ids 1..KEYS."""
    rows = {str(k): (int(v), json.loads(p)) for k, v, p in b.sql(
        f"SELECT id::text, version, row_to_json(t)::text FROM {TABLE} t")}
    epoch = int(b.sql("SELECT coalesce(max(epoch), 0) FROM writethrough_epochs "
                      "WHERE namespace IN ('', 'bench')")[0][0])
    cache = open_cache(b.cache)
    wrong = good = miss = 0
    try:
        for key in (str(i) for i in range(1, KEYS + 1)):
            entry = cache.get(f"wt:bench:{key}")
            if entry is None or entry.kind is not Kind.VALUE or entry.version < cache_version(
                    epoch, 0):
                miss += 1
                continue
            row = rows.get(key)
            if row is None or entry.version != cache_version(epoch, row[0]) or \
                    json.loads(entry.payload) != row[1]:
                wrong += 1
            else:
                good += 1
    finally:
        cache.close()
    return wrong, good, miss


def measure_divergence(b: Bench, seconds: float) -> None:
    print(f"\ncache vs table, row by row: pgbench mix for {seconds:.0f} s, listener killed "
          "(SIGKILL) halfway and restarted, then TRUNCATE + re-insert of every key")
    print(f"{'capture':<12}{'divergent':>10}{'matching':>10}{'misses':>8}{'killed':>8}")
    for mode in ("logical", "triggers"):
        b.reset(mode)
        b.listener(mode).close()
        child = spawn_listener(b, mode)
        bench = threading.Thread(target=b.run_pgbench, args=(seconds,))
        bench.start()
        time.sleep(seconds / 2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        time.sleep(1)
        child = spawn_listener(b, mode)
        bench.join()
        b.sql(f"TRUNCATE {TABLE}")
        b.sql(f"INSERT INTO {TABLE} (id, filler) SELECT g, 'again' FROM "
              f"generate_series(1, {KEYS}) g")
        check = b.listener(mode) if mode == "triggers" else None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(1)
            if mode == "logical":
                status = slot_status(b.pg, GROUP)
                if status and status.behind_bytes < 8192:
                    break
            elif check is not None and isinstance(check, TriggerListener) and check.queued() == 0:
                break
        time.sleep(2)
        if check is not None:
            check.close()
        child.send_signal(signal.SIGTERM)
        child.wait(30)
        wrong, good, miss = compare(b)
        print(f"{mode:<12}{wrong:>10,}{good:>10,}{miss:>8,}{1:>8}")


def spawn_listener(b: Bench, mode: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, WT_BENCH_PG=b.pg, WT_BENCH_CACHE=b.cache)  # not on argv
    return subprocess.Popen([sys.executable, __file__, "--child", mode], env=env)


def child(mode: str) -> None:
    """A listener until SIGTERM (or SIGKILL)."""
    b = Bench.__new__(Bench)
    b.pg, b.cache = os.environ["WT_BENCH_PG"], os.environ["WT_BENCH_CACHE"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    listener = b.listener(mode)
    try:
        listener.run(stop)
    finally:
        listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="per pgbench run (20)")
    parser.add_argument("--rounds", type=int, default=2, help="pgbench rounds (2)")
    parser.add_argument("--stop", type=float, default=60.0, help="listener stopped for (60 s)")
    parser.add_argument("--only", default="tps,bulk,lag,catchup,diverge,race")
    parser.add_argument("--child", choices=("logical", "triggers"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    only = set(args.only.split(","))
    with postgres_server(wal_level="logical", fsync=True) as pg, redis_server() as redis, \
            tempfile.TemporaryDirectory() as workdir:
        b = Bench(pg.url, f"{redis.url}?socket_timeout=1", Path(workdir))
        print(f"PostgreSQL {b.sql('SHOW server_version')[0][0]} (wal_level=logical, "
              f"fsync={b.sql('SHOW fsync')[0][0]}), Redis {redis.url.split('@')[-1]}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        if "tps" in only:
            measure_tps(b, args.seconds, args.rounds)
        if "bulk" in only:
            measure_bulk(b)
        if "lag" in only:
            measure_lag(b, 15.0)
        if "catchup" in only:
            measure_catchup(b, args.stop)
        if "diverge" in only:
            measure_divergence(b, args.seconds)
        if "race" in only:
            measure_race(b, args.seconds)


if __name__ == "__main__":
    main()
