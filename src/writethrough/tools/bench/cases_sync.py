"""The sync rows: get hit, put (both strategies), Redis calls per put+get, 100 keys, thread herd.

Each function takes the run's :class:`Context` and returns one :class:`Row` (or
several, for the put rows with and without added DB latency).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

import writethrough

from ..dblatency import DelayedSource, db_latency
from .context import Context
from .model import Measure, Row, interleave, percentile, sample_latencies, timed_measures
from .peers import dogpile_region, missing

PROFILE = {"name": "Alice", "balance": 400, "email": "alice@example.com", "tags": ["a", "b"]}
# Roomy client timeouts on both sides: a timeout on a busy 2-core machine is not what
# these rows measure (the store would fall back to the DB and the figure would lie).
ROOMY = "socket_timeout=1&socket_connect_timeout=1"
HERD_DB_MS = 20.0


def roomy(url: str) -> str:
    return url + ("&" if "?" in url else "?") + ROOMY


def na_row(key: str, path: str, goal: str, why: str) -> Row:
    return Row(key, path, Measure("baseline", note=why), [], goal, None, detail=why)


@contextlib.contextmanager
def _raw_redis(url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1.0)
    try:
        yield client
    finally:
        client.close()


def _verdict(measure: Measure, limit: float, higher_is_better: bool = False) -> bool | None:
    if measure.ratio is None or measure.ratio != measure.ratio:
        return None
    return measure.ratio >= limit if higher_is_better else measure.ratio <= limit


# -- get hit -----------------------------------------------------------------------


def get_hit(ctx: Context) -> Row:
    key, path, goal = "get_hit", "sync `get` hit vs raw redis-py GET + orjson.loads", "<= 1.05x"
    if ctx.redis_url is None:
        return na_row(key, path, goal, ctx.redis_note)
    n, reps = ctx.config.n(1500, 10000), ctx.config.reps
    ctx.start(path, reps + 2)
    raw_key = f"bench:{ctx.run_id}:raw:user:42"
    with _raw_redis(ctx.redis_url) as raw, writethrough.open(
        source=ctx.sqlite_url("get"), cache=roomy(ctx.redis_url), namespace=ctx.namespace("get")
    ) as store:
        raw.set(raw_key, orjson.dumps(PROFILE), px=600_000)
        store.put("user:42", PROFILE)
        store.get("user:42")  # the fill: from now on every get is a hit
        hits0 = store.stats.hits
        assert store.get("user:42") == PROFILE and store.stats.hits == hits0 + 1
        contenders: dict[str, Callable[[], object]] = {
            "raw redis-py": lambda: orjson.loads(raw.get(raw_key)),
            "writethrough": lambda: store.get("user:42"),
        }
        note = missing("dogpile.cache")
        if note is None:
            region = dogpile_region(ctx.redis_url)
            region.set(f"bench:{ctx.run_id}:dogpile:user:42", PROFILE)
            dkey = f"bench:{ctx.run_id}:dogpile:user:42"
            assert region.get(dkey) == PROFILE
            contenders["dogpile.cache"] = lambda: region.get(dkey)
        timed = interleave(contenders, n, reps, ctx.tick)
        samples = sample_latencies(contenders, ctx.config.n(1000, 3000))
        ctx.tick()
        failures = store.stats.cache_read_failures
    base, others = timed_measures(timed, "raw redis-py")
    if note is not None:
        others.append(Measure("dogpile.cache", note=note))
    ours = others[0]
    detail = f"{n:,} gets per repetition, {reps} repetitions; cache read failures: {failures}."
    return Row(key, path, base, others, goal, _verdict(ours, 1.05), detail, samples)


# -- put -----------------------------------------------------------------------------


def put_rows(ctx: Context) -> list[Row]:
    """put write-through vs raw UPSERT ... RETURNING + SET EX; put invalidate vs raw UPSERT + DEL.

    Both without added DB latency and, when ``db_latency_ms`` > 0, with it."""
    rows: list[Row] = []
    latencies = [0.0] + ([ctx.config.db_latency_ms] if ctx.config.db_latency_ms else [])
    for ms in latencies:
        for strategy in ("write-through", "invalidate"):
            rows.append(_put_row(ctx, strategy, ms))
    return rows


def _put_row(ctx: Context, strategy: str, ms: float) -> Row:
    raw_cache = "SET EX" if strategy == "write-through" else "DEL"
    suffix = f", +{ms:g} ms DB round trip" if ms else ""
    key = f"put_{strategy.replace('-', '_')}" + (f"_db{ms:g}ms" if ms else "")
    path = f"`put` {strategy} vs raw UPSERT…RETURNING + {raw_cache}{suffix}"
    goal = "<= 1.05x"
    if ctx.redis_url is None or ctx.postgres_url is None:
        return na_row(key, path, goal, ctx.redis_note or ctx.postgres_note)
    import psycopg

    n = ctx.config.n(100, 1500) if not ms else ctx.config.n(25, 300)
    reps = ctx.config.reps if not ms else max(3, ctx.config.reps // 2)
    ctx.start(path, reps + 2)
    table = f"wt_bench_raw_{ctx.run_id}"
    warm = ctx.config.n(50, 100)
    payload_key = itertools.cycle([f"user:{i}" for i in range(warm)])
    with _no_fsync(), db_latency(ctx.postgres_url, ms) as delayed, _raw_redis(ctx.redis_url) as raw, \
            psycopg.connect(delayed.url, autocommit=True) as conn, writethrough.open(
                source=delayed.url, cache=roomy(ctx.redis_url), strategy=strategy,  # type: ignore[arg-type]
                namespace=ctx.namespace(f"put{strategy}{ms:g}"),
            ) as store:  # fmt: skip
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (namespace text, key text, value bytea, "
            "version bigint NOT NULL, PRIMARY KEY (namespace, key))"
        )
        upsert = (
            f"INSERT INTO {table} (namespace, key, value, version) VALUES (%s, %s, %s, 1) "
            f"ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
            f"version = {table}.version + 1 RETURNING version"
        )
        rkey = itertools.cycle([f"bench:{ctx.run_id}:raw:user:{i}" for i in range(100)])

        def raw_put() -> None:
            k = next(rkey)
            payload = orjson.dumps(PROFILE)
            version = conn.execute(upsert, ("raw", k, payload), prepare=True).fetchone()
            assert version is not None
            if strategy == "write-through":
                raw.set(k, payload, ex=300)
            else:
                raw.delete(k)

        for i in range(warm):  # every key in the DB and cached (a value, not a tombstone)
            store.put(f"user:{i}", PROFILE)
            store.get(f"user:{i}")
        try:
            contenders: dict[str, Callable[[], object]] = {
                "raw": raw_put,
                "writethrough": lambda: store.put(next(payload_key), PROFILE),
            }
            timed = interleave(contenders, n, reps, ctx.tick)
            samples = sample_latencies(contenders, ctx.config.n(60, 600) if not ms else 25)
            ctx.tick()
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        outcomes = store.stats.snapshot()
    base, others = timed_measures(timed, "raw")
    base.name = f"raw UPSERT + {raw_cache}"
    detail = (
        f"{n:,} puts per repetition over {warm} warm keys, {reps} repetitions; both sides "
        "with synchronous_commit=off (PGOPTIONS): the commit's fsync on a shared disk is the "
        "same work on both sides but the noisiest part, and would swamp the ratio; "
        f"{delayed.describe()}; store cache writes {outcomes['cache_writes']:,}, "
        f"failures {outcomes['cache_write_failures']}."
    )
    return Row(key, path, base, others, goal, _verdict(others[0], 1.05), detail, samples)


@contextlib.contextmanager
def _no_fsync() -> Iterator[None]:
    """Connections opened inside (raw and the store's pool alike) commit without waiting for
    the WAL flush: libpq reads PGOPTIONS when it connects."""
    import os

    before = os.environ.get("PGOPTIONS")
    os.environ["PGOPTIONS"] = f"{before or ''} -c synchronous_commit=off".strip()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PGOPTIONS", None)
        else:
            os.environ["PGOPTIONS"] = before


# -- Redis calls per put+get pair ---------------------------------------------------------


class _Counted:
    """Counts the commands a redis-py client sends (every command goes through execute_command)."""

    def __init__(self, client: Any) -> None:
        self.calls = 0
        real = client.execute_command

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        client.execute_command = counted


def redis_calls(ctx: Context) -> Row:
    key, goal = "redis_calls", "3"
    path = "invalidate read-after-write: Redis calls per put+get pair"
    if ctx.redis_url is None:
        return na_row(key, path, goal, ctx.redis_note)
    pairs = ctx.config.n(100, 500)
    ctx.start(path, 3)
    found: dict[str, float] = {}
    for strategy in ("invalidate", "write-through"):
        with writethrough.open(
            source=ctx.sqlite_url(f"calls{strategy}"), cache=roomy(ctx.redis_url),
            strategy=strategy,
            namespace=ctx.namespace(f"calls{strategy}"), repair_worker=False,
        ) as store:  # fmt: skip
            client = getattr(store.cache, "client", None)
            if client is None:
                return na_row(key, path, goal, f"cache {store.cache.name} has no redis-py client")
            for i in range(pairs):  # warm: in the DB and cached
                store.put(f"k{i}", {"i": i})
                store.get(f"k{i}")
            counter = _Counted(client)
            for i in range(pairs):
                store.put(f"k{i}", {"i": i, "again": True})
                assert store.get(f"k{i}") == {"i": i, "again": True}
            found[strategy] = counter.calls / pairs
        ctx.tick()
    with _raw_redis(ctx.redis_url) as raw:
        counter = _Counted(raw)
        db: dict[str, bytes] = {}
        for i in range(pairs):  # cache-aside: DEL on write; GET, miss, load, SET on read
            k = f"bench:{ctx.run_id}:aside:{i}"
            db[k] = orjson.dumps({"i": i})
            raw.delete(k)
            if raw.get(k) is None:
                raw.set(k, db[k], ex=300)
        aside = counter.calls / pairs
    ctx.tick()
    ours = Measure("writethrough invalidate", found["invalidate"], "calls")
    through = Measure("writethrough write-through", found["write-through"], "calls")
    base = Measure("raw cache-aside (DEL; GET, SET)", aside, "calls")
    ours.ratio, through.ratio = ours.value / aside, through.value / aside  # type: ignore[operator]
    detail = (
        f"{pairs:,} put+get pairs on warm keys; commands counted at the redis-py client "
        "(every command, EVALSHA included, goes through execute_command)."
    )
    return Row(key, path, base, [ours, through], goal, found["invalidate"] <= 3, detail)


# -- 100 keys ---------------------------------------------------------------------------


def read_many(ctx: Context) -> Row:
    key, goal = "read_100", "<= 2x MGET per key"
    path = "100 keys read (µs per key)"
    if ctx.redis_url is None:
        return na_row(key, path, goal, ctx.redis_note)
    n, reps = ctx.config.n(20, 100), ctx.config.reps
    ctx.start(path, reps + 1)
    keys = [f"user:{i}" for i in range(100)]
    raw_keys = [f"bench:{ctx.run_id}:many:{k}" for k in keys]
    with _raw_redis(ctx.redis_url) as raw, writethrough.open(
        source=ctx.sqlite_url("many"), cache=roomy(ctx.redis_url), namespace=ctx.namespace("many")
    ) as store:
        raw.mset({k: orjson.dumps(PROFILE) for k in raw_keys})
        store.put_many(dict.fromkeys(keys, PROFILE))
        assert store.get_many(keys) == dict.fromkeys(keys, PROFILE)
        loads = orjson.loads
        contenders: dict[str, Callable[[], object]] = {
            "raw MGET": lambda: [loads(v) for v in raw.mget(raw_keys)],
            "writethrough get_many": lambda: store.get_many(keys),
            "writethrough get loop": lambda: [store.get(k) for k in keys],
        }
        note = missing("dogpile.cache")
        if note is None:
            region = dogpile_region(ctx.redis_url)
            dkeys = [f"bench:{ctx.run_id}:dogmany:{k}" for k in keys]
            region.set_multi(dict.fromkeys(dkeys, PROFILE))
            contenders["dogpile.cache get_multi"] = lambda: region.get_multi(dkeys)
        timed = interleave(contenders, n, reps, ctx.tick)
        hits = store.stats.hits
    base, others = timed_measures(timed, "raw MGET", unit="µs/key")
    for m in [base, *others]:
        m.value = None if m.value is None else m.value / 100
        m.cpu_us = None if m.cpu_us is None else m.cpu_us / 100
    if note is not None:
        others.append(Measure("dogpile.cache get_multi", note=note))
    detail = (f"{n} reads of 100 keys per repetition, {reps} repetitions; figures per key; "
              f"every key a hit ({hits:,} hits counted).")
    return Row(key, path, base, others, goal, _verdict(others[0], 2.0), detail)


def put_many_row(ctx: Context) -> Row:
    """put_many of 100 keys vs one raw multi-row UPSERT ... RETURNING + one pipeline of SET EX."""
    key, goal = "put_100", "<= 2x raw per key"
    path = "100 keys written (µs per key) vs raw multi-row UPSERT…RETURNING + pipelined SET EX"
    if ctx.redis_url is None or ctx.postgres_url is None:
        return na_row(key, path, goal, ctx.redis_note or ctx.postgres_note)
    import psycopg

    n, reps = ctx.config.n(5, 30), ctx.config.reps
    ctx.start(path, reps + 1)
    table = f"wt_bench_rawmany_{ctx.run_id}"
    keys = [f"user:{i}" for i in range(100)]
    raw_keys = [f"bench:{ctx.run_id}:rawmany:{k}" for k in keys]
    with _no_fsync(), _raw_redis(ctx.redis_url) as raw, \
            psycopg.connect(ctx.postgres_url, autocommit=True) as conn, writethrough.open(
                source=ctx.postgres_url, cache=roomy(ctx.redis_url), namespace=ctx.namespace("putmany"),
            ) as store:  # fmt: skip
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (namespace text, key text, value bytea, "
            "version bigint NOT NULL, PRIMARY KEY (namespace, key))"
        )
        upsert = (
            f"INSERT INTO {table} AS t (namespace, key, value, version) "
            "SELECT 'raw', u.k, u.v, 1 FROM unnest(%s::text[], %s::bytea[]) AS u(k, v) ORDER BY u.k "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, "
            "version = t.version + 1 RETURNING t.key, t.version"
        )

        def raw_put_many() -> None:
            payloads = [orjson.dumps(PROFILE) for _ in raw_keys]
            found = conn.execute(upsert, (raw_keys, payloads), prepare=True).fetchall()
            assert len(found) == len(raw_keys)
            pipe = raw.pipeline(transaction=False)
            for k, p in zip(raw_keys, payloads, strict=True):
                pipe.set(k, p, ex=300)
            pipe.execute()

        profile = dict.fromkeys(keys, PROFILE)
        store.put_many(profile)  # warm: every key cached (a value, not a lease)
        store.get_many(keys)
        try:
            contenders: dict[str, Callable[[], object]] = {
                "raw": raw_put_many,
                "writethrough put_many": lambda: store.put_many(profile),
                "writethrough put loop": lambda: [store.put(k, PROFILE) for k in keys],
            }
            timed = interleave(contenders, n, reps, ctx.tick)
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        outcomes = store.stats.snapshot()
    base, others = timed_measures(timed, "raw", unit="µs/key")
    base.name = "raw UPSERT + pipelined SET EX"
    for m in [base, *others]:
        m.value = None if m.value is None else m.value / 100
        m.cpu_us = None if m.cpu_us is None else m.cpu_us / 100
    detail = (
        f"{n} batches of 100 warm keys per repetition, {reps} repetitions; figures per key; "
        "both sides with synchronous_commit=off; "
        f"store cache writes {outcomes['cache_writes']:,}, failures {outcomes['cache_write_failures']}."
    )
    return Row(key, path, base, others, goal, _verdict(others[0], 2.0), detail)


# -- herd, threads --------------------------------------------------------------------------


def herd_threads(ctx: Context) -> Row:
    key, goal = "herd_threads", "1 load every round, p99 <= dogpile"
    path = f"herd, 200 threads, one cold key, {HERD_DB_MS:g} ms DB read"
    if ctx.redis_url is None:
        return na_row(key, path, goal, ctx.redis_note)
    rounds, threads = ctx.config.n(2, 5), 200
    ctx.start(path, rounds * 2)
    ours_loads: list[int] = []
    ours_p99: list[float] = []
    peer_loads: list[int] = []
    peer_p99: list[float] = []
    all_ours: list[float] = []
    all_peer: list[float] = []
    note = missing("dogpile.cache")
    rtt = _redis_rtt_ms(ctx.redis_url)
    errors: list[str] = []
    peer_errors: list[str] = []
    with writethrough.open(
        source=ctx.sqlite_url("herdthreads"), cache=roomy(ctx.redis_url),
        namespace=ctx.namespace("herdthreads"), cache_options={"max_connections": threads + 8},
    ) as store:  # fmt: skip
        delayed = DelayedSource(store.source, HERD_DB_MS / 1000)
        for r in range(rounds):
            hot = f"hot{r}"
            store.put(hot, PROFILE)
            store.cache.delete(f"wt:{store.namespace}:{hot}")  # cold: nothing cached
            store.source = delayed
            before = delayed.calls
            lat = _in_threads(threads, lambda hot=hot: store.get(hot), errors)  # type: ignore[misc]
            store.source = delayed.inner
            ours_loads.append(delayed.calls - before)
            ours_p99.append(percentile(lat, 99))
            all_ours += lat
            ctx.tick()
            if note is None:
                loads, load = _dogpile_loader(ctx.redis_url, f"bench:{ctx.run_id}:dogherd:{r}")
                lat = _in_threads(threads, load, peer_errors)
                peer_loads.append(loads[0])
                peer_p99.append(percentile(lat, 99))
                all_peer += lat
            ctx.tick()
    ideal = HERD_DB_MS + rtt
    base = Measure("one DB read + one round trip", ideal, "ms")
    ours = Measure("writethrough", statistics.median(ours_p99), "ms p99",
                   extra={"loads_per_round": ours_loads, "p99_ms_per_round": ours_p99})  # fmt: skip
    ours.ratio = ours.value / ideal  # type: ignore[operator]
    contenders = [ours]
    met: bool | None = all(n == 1 for n in ours_loads)
    if note is None:
        peer = Measure("dogpile.cache", statistics.median(peer_p99), "ms p99",
                       extra={"loads_per_round": peer_loads, "p99_ms_per_round": peer_p99})  # fmt: skip
        peer.ratio = peer.value / ideal  # type: ignore[operator]
        contenders.append(peer)
        met = met and ours.value <= peer.value  # type: ignore[operator]
    else:
        contenders.append(Measure("dogpile.cache", note=note))
    detail = (
        f"{rounds} rounds; DB loads per round: writethrough {ours_loads}"
        + (f", dogpile.cache {peer_loads}" if note is None else "")
        + f"; p99 per round (ms): writethrough {[round(x, 1) for x in ours_p99]}"
        + (f", dogpile.cache {[round(x, 1) for x in peer_p99]}" if note is None else "")
        + f"; Redis round trip {rtt:.3f} ms; failed calls: writethrough {len(errors)}"
        + (f" ({errors[0]})" if errors else "")
        + (f", dogpile.cache {len(peer_errors)}" if note is None else "")
        + (f" ({peer_errors[0]})" if peer_errors else "")
        + "."
    )
    if errors:
        met = False
    samples = {"writethrough": [x * 1000 for x in all_ours]}
    if all_peer:
        samples["dogpile.cache"] = [x * 1000 for x in all_peer]
    return Row(key, path, base, contenders, goal, met, detail, samples)


def _dogpile_loader(redis_url: str, key: str) -> tuple[list[int], Callable[[], object]]:
    """dogpile.cache's get_or_create of ``key`` with a loader of HERD_DB_MS, counting loads."""
    region = dogpile_region(redis_url)
    loads = [0]

    def create() -> Any:
        loads[0] += 1
        time.sleep(HERD_DB_MS / 1000)
        return PROFILE

    return loads, lambda: region.get_or_create(key, create)


def _in_threads(
    threads: int, call: Callable[[], object], errors: list[str] | None = None
) -> list[float]:
    """Latencies (ms) of ``threads`` threads calling ``call`` at once (a barrier).

    A call that raises is not timed; its error goes to ``errors`` (the row says so).
    """
    barrier = threading.Barrier(threads)
    latencies: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            call()
        except Exception as exc:
            with lock:
                if errors is not None:
                    errors.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            latencies.append((time.perf_counter() - started) * 1000)

    pool = [threading.Thread(target=one) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies


def _redis_rtt_ms(url: str) -> float:
    with _raw_redis(url) as raw:
        raw.ping()
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            raw.ping()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


# -- near cache -------------------------------------------------------------------------------


def near_cache(ctx: Context) -> Row:
    """A near-cache hit against a raw redis-py GET, and the staleness window across processes."""
    key, goal = "near", "hit ~1 µs; staleness window bounded (max, p99 stated)"
    path = "near cache (`redis://...?near=N`): `get` hit, and staleness across processes"
    if ctx.redis_url is None:
        return na_row(key, path, goal, ctx.redis_note)
    n, reps = ctx.config.n(2000, 20000), ctx.config.reps
    writes = ctx.config.n(30, 500)
    ctx.start(path, reps + 2 + 2 * (writes // 10))
    namespace = ctx.namespace("near")
    source = ctx.sqlite_url("near")
    raw_key = f"bench:{ctx.run_id}:near:user:42"
    with _raw_redis(ctx.redis_url) as raw, writethrough.open(
        source=source, cache=roomy(ctx.redis_url) + "&near=10000", namespace=namespace
    ) as near, writethrough.open(
        source=source, cache=roomy(ctx.redis_url), namespace=namespace
    ) as plain:  # fmt: skip
        raw.set(raw_key, orjson.dumps(PROFILE), px=600_000)
        plain.put("user:42", PROFILE)
        for _ in range(3):  # lease + fill, then a read that puts it in the L1
            near.get("user:42")
        coherence = near.cache.coherence  # type: ignore[attr-defined]
        ckey = f"wt:{namespace}:user:42"
        assert coherence.l1.get(ckey) is not None, "the near cache did not keep the value"
        backend_get = near.cache.get
        contenders: dict[str, Callable[[], object]] = {
            "raw redis-py": lambda: orjson.loads(raw.get(raw_key)),
            "writethrough get (near)": lambda: near.get("user:42"),
            "writethrough get (redis)": lambda: plain.get("user:42"),
            "writethrough near backend get (L1 hit)": lambda: backend_get(ckey),
        }
        timed = interleave(contenders, n, reps, ctx.tick)
        idle = _staleness_windows(ctx, near, source, ckey, writes, busy=0)
        loaded = _staleness_windows(ctx, near, source, ckey, writes, busy=2)
    base, others = timed_measures(timed, "raw redis-py")
    for label, windows in (("idle reader", idle), ("reader with 2 busy threads", loaded)):
        others.append(
            Measure(
                f"writethrough near staleness window, {label}",
                max(windows),
                "ms max",
                extra={
                    "p99_ms": percentile(windows, 99),
                    "p50_ms": percentile(windows, 50),
                    "writes": len(windows),
                },
            )
        )
    l1 = next(m for m in others if m.name == "writethrough near backend get (L1 hit)")
    detail = (
        f"{n:,} gets per repetition, {reps} repetitions. Staleness across processes: "
        f"{writes} writes each by a writer in another process while this process holds the "
        "key in its L1; window = from the writer's acknowledgement (its time.perf_counter, "
        "CLOCK_MONOTONIC, shared by all processes) until the L1 dropped the key (0 when the "
        "invalidation arrived first). Idle reader: max "
        f"{max(idle):.3f} ms, p99 {percentile(idle, 99):.3f} ms, p50 {percentile(idle, 50):.3f} "
        f"ms. Reader with 2 threads hammering L1 hits (the tracking thread waits for the GIL): "
        f"max {max(loaded):.3f} ms, p99 {percentile(loaded, 99):.3f} ms, p50 "
        f"{percentile(loaded, 50):.3f} ms. Loopback Redis: add the network's one-way delay "
        "elsewhere; never longer than near_ttl (default 60 s) even if messages were lost "
        "without the connection dropping."
    )
    met = l1.value is not None and l1.value <= 2.0
    return Row(key, path, base, others, goal, met, detail)


_WRITER = """
import sys, time, writethrough
source, cache, namespace = sys.argv[1:4]
with writethrough.open(source=source, cache=cache, namespace=namespace) as store:
    print("ready", flush=True)
    for line in sys.stdin:
        store.put("user:42", {"balance": int(line)})
        print(repr(time.perf_counter()), flush=True)  # CLOCK_MONOTONIC: the same in every process
"""


def _staleness_windows(
    ctx: Context, near: writethrough.Store, source: str, ckey: str, writes: int, busy: int
) -> list[float]:
    """ms from each write acknowledged in *another process* until ``near``'s L1 dropped the key.

    ``busy`` threads of this process meanwhile hammer L1 hits (the tracking thread then
    competes for the GIL, as in a loaded reader process).
    """
    import subprocess
    import sys

    assert ctx.redis_url is not None
    coherence = near.cache.coherence  # type: ignore[attr-defined]
    dropped = threading.Event()
    when: list[float] = []

    def on_invalidate(key: str | None) -> None:
        if key in (ckey, None) and not dropped.is_set():
            when.append(time.perf_counter())
            dropped.set()

    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            near.get("user:42")

    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, source, roomy(ctx.redis_url), near.namespace],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdin is not None and writer.stdout is not None
    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(busy)]
    windows: list[float] = []
    try:
        if writer.stdout.readline().strip() != "ready":
            raise RuntimeError("the writer process did not start")
        coherence.on_invalidate = on_invalidate
        for t in threads:
            t.start()
        for i in range(writes):
            deadline = time.monotonic() + 2
            while coherence.l1.get(ckey) is None and time.monotonic() < deadline:
                near.get("user:42")  # back into the L1 (after its own fill's invalidation)
                time.sleep(0.0005)
            dropped.clear()
            when.clear()
            writer.stdin.write(f"{i}\n")
            writer.stdin.flush()
            acked = float(writer.stdout.readline())
            if not dropped.wait(5):
                raise RuntimeError("the near cache never dropped the key after a write")
            windows.append(max(0.0, (when[0] - acked) * 1000))
            if i % 10 == 9:
                ctx.tick()
    finally:
        coherence.on_invalidate = None
        stop.set()
        for t in threads:
            t.join()
        writer.stdin.close()
        writer.wait(10)
    return windows
