"""The asyncio rows: get-hit throughput against concurrency (with cashews and aiocache), and
the herd of 1,000 tasks on one cold key."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

import writethrough

from ...sources.base import Row as SourceRow
from .cases_sync import HERD_DB_MS, PROFILE, _redis_rtt_ms, _verdict, na_row, roomy
from .context import Context
from .model import Measure, Row, median_ratio, percentile
from .peers import aiocache_cache, cashews_cache, missing

Get = Callable[[], Awaitable[Any]]


async def _throughput(get: Get, ops: int, tasks: int) -> float:
    per_task = max(1, ops // tasks)

    async def worker() -> None:
        for _ in range(per_task):
            await get()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return per_task * tasks / (time.perf_counter() - started)


def async_get_hit(ctx: Context) -> tuple[Row, dict[str, dict[int, float]]]:
    """The row (64 tasks, and 1 task in the detail) and the ops/s-against-concurrency curves."""
    key, goal = "async_get_hit", ">= 0.97x"
    path = "async `get` hit, 64 tasks, throughput vs raw redis.asyncio"
    if ctx.redis_url is None:
        return na_row(key, path, goal, ctx.redis_note), {}
    return asyncio.run(_async_get_hit(ctx, key, path, goal))


async def _async_get_hit(
    ctx: Context, key: str, path: str, goal: str
) -> tuple[Row, dict[str, dict[int, float]]]:
    import redis.asyncio

    assert ctx.redis_url is not None
    levels = (1, 64) if ctx.config.quick else (1, 4, 16, 64)
    ops, reps = ctx.config.n(1000, 8000), max(3, ctx.config.reps // 2 + 1)
    ctx.start(path, reps * len(levels) + 1)
    raw = redis.asyncio.Redis.from_url(ctx.redis_url, max_connections=64, socket_timeout=1.0)
    raw_key = f"bench:{ctx.run_id}:araw:user:42"
    await raw.set(raw_key, orjson.dumps(PROFILE), px=600_000)
    store = await writethrough.open_async(
        source=ctx.sqlite_url("async"), cache=roomy(ctx.redis_url), namespace=ctx.namespace("async")
    )
    # Written by another store: a store reads keys it wrote itself through its read
    # floors (monotonic reads), not the hit path this row measures.
    writer = await writethrough.open_async(
        source=ctx.sqlite_url("async"), cache=roomy(ctx.redis_url), namespace=ctx.namespace("async")
    )
    closers: list[Callable[[], Awaitable[Any]]] = [raw.aclose, store.close, writer.close]
    contenders: dict[str, Get] = {}
    notes: dict[str, str] = {}
    try:
        await writer.put("user:42", PROFILE)
        await store.get("user:42")
        loads = orjson.loads

        async def raw_get() -> Any:
            return loads(await raw.get(raw_key))  # type: ignore[arg-type]

        contenders["raw redis.asyncio"] = raw_get
        contenders["writethrough"] = lambda: store.get("user:42")
        # 64 keys, read in turn: readers of one key share a GET (compat.Reads), readers of
        # different keys do not; this contender shows the per-call cost without sharing.
        keys64 = [f"user:{i}" for i in range(64)]
        for k in keys64:
            await writer.put(k, PROFILE)
            await store.get(k)
        assert not store._floors, "the reader would not take the hit path"
        turn = itertools.count()
        contenders["writethrough, 64 keys"] = lambda: store.get(keys64[next(turn) % 64])
        if (note := missing("cashews")) is None:
            cashews = cashews_cache(ctx.redis_url)
            ckey = f"bench:{ctx.run_id}:cashews:user:42"
            await cashews.set(ckey, PROFILE, expire=600)
            contenders["cashews"] = lambda: cashews.get(ckey)
            closers.append(cashews.close)
        else:
            notes["cashews"] = note
        if (note := missing("aiocache")) is None:
            aio = aiocache_cache(ctx.redis_url, f"bench{ctx.run_id}aio")
            await aio.set("user:42", PROFILE, ttl=600)
            contenders["aiocache"] = lambda: aio.get("user:42")
            closers.append(aio.close)
        else:
            notes["aiocache"] = note
        for name, get in contenders.items():
            assert await get() == PROFILE, name
        failures0 = store.stats.cache_read_failures
        ctx.tick()
        runs: dict[str, dict[int, list[float]]] = {n: {t: [] for t in levels} for n in contenders}
        names = list(contenders)
        for rep in range(reps):
            for tasks in levels:
                shift = rep % len(names)
                for name in names[shift:] + names[:shift]:
                    runs[name][tasks].append(await _throughput(contenders[name], ops, tasks))
                ctx.tick()
        failures = store.stats.cache_read_failures - failures0
    finally:
        for close in closers:
            await close()
    base_runs = runs["raw redis.asyncio"]
    curves = {n: {t: statistics.median(v) for t, v in by.items()} for n, by in runs.items()}
    base = Measure("raw redis.asyncio", curves["raw redis.asyncio"][64], "ops/s", ratio=1.0)
    measures = []
    for name in names[1:]:
        ratio, spread = median_ratio(runs[name][64], base_runs[64])
        one, _ = median_ratio(runs[name][1], base_runs[1])
        measures.append(
            Measure(
                name,
                curves[name][64],
                "ops/s",
                ratio=ratio,
                ratio_range=spread,
                extra={"ratio_1_task": round(one, 3)},
            )
        )
    measures += [Measure(name, note=note) for name, note in notes.items()]
    one_task = ", ".join(
        f"{m.name} {m.extra['ratio_1_task']:.2f}x" for m in measures if "ratio_1_task" in m.extra
    )
    detail = (
        f"{ops:,} gets per point, {reps} repetitions, contenders interleaved; "
        f"at 1 task: {one_task}; writethrough cache read failures: {failures}. "
        "'writethrough' reads one key from every task: concurrent readers of a key share "
        "one GET (sent after they all began), so its figure counts gets, not GETs; "
        "'writethrough, 64 keys' reads 64 keys in turn: the cost per GET."
    )
    # The goal is about the cost per GET: judged on the 64-key contender (no sharing).
    judged = next(m for m in measures if m.name == "writethrough, 64 keys")
    return Row(key, path, base, measures, goal, _verdict(judged, 0.97, True), detail), curves


# -- herd, asyncio ------------------------------------------------------------------------


class _SlowSource:
    """The store's async source behind a DB read of HERD_DB_MS (asyncio.sleep), counting loads."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.reads = inner, inner.name, 0

    async def open(self) -> None:
        await self.inner.open()

    async def read(self, key: str) -> SourceRow:
        self.reads += 1
        await asyncio.sleep(HERD_DB_MS / 1000)
        row: SourceRow = await self.inner.read(key)
        return row

    async def write(self, key: str, payload: bytes) -> int:
        return int(await self.inner.write(key, payload))

    async def delete(self, key: str) -> int:
        return int(await self.inner.delete(key))

    async def close(self) -> None:
        await self.inner.close()


def herd_async(ctx: Context) -> Row:
    key = "herd_async"
    path = f"herd, 1,000 asyncio tasks, one cold key, {HERD_DB_MS:g} ms DB read"
    goal = "1 load, p99 <= 1.5x the DB read + one round trip"
    if ctx.redis_url is None:
        return na_row(key, path, goal, ctx.redis_note)
    return asyncio.run(_herd_async(ctx, key, path, goal))


async def _herd_async(ctx: Context, key: str, path: str, goal: str) -> Row:
    assert ctx.redis_url is not None
    rounds, tasks = ctx.config.n(2, 5), 1000
    ctx.start(path, rounds)
    rtt = _redis_rtt_ms(ctx.redis_url)
    ideal = HERD_DB_MS + rtt
    ours = {"loads": [], "p99": [], "all": []}  # type: dict[str, list[Any]]
    peer = {"loads": [], "p99": [], "all": []}  # type: dict[str, list[Any]]
    note = missing("cashews")
    store = await writethrough.open_async(
        source=ctx.sqlite_url("herdasync"), cache=roomy(ctx.redis_url),
        namespace=ctx.namespace("herdasync"),
    )  # fmt: skip
    cashews = cashews_cache(ctx.redis_url) if note is None else None
    try:
        slow = _SlowSource(store.source)
        for r in range(rounds):
            hot = f"hot{r}"
            await store.put(hot, PROFILE)
            await store.cache.delete(f"wt:{store.namespace}:{hot}")
            store.source = slow
            before = slow.reads
            lat = await _gather_latencies(tasks, lambda hot=hot: store.get(hot))  # type: ignore[misc]
            store.source = slow.inner
            ours["loads"].append(slow.reads - before)
            ours["p99"].append(percentile(lat, 99))
            ours["all"] += lat
            if cashews is not None:
                loads, cached = _cashews_loader(cashews, f"bench:{ctx.run_id}:cherd:{r}")
                lat = await _gather_latencies(tasks, cached)
                peer["loads"].append(loads[0])
                peer["p99"].append(percentile(lat, 99))
                peer["all"] += lat
            ctx.tick()
    finally:
        await store.close()
        if cashews is not None:
            await cashews.close()
    base = Measure("one DB read + one round trip", ideal, "ms")
    mine = Measure("writethrough", statistics.median(ours["p99"]), "ms p99",
                   extra={"loads_per_round": ours["loads"], "p99_ms_per_round": ours["p99"]})  # fmt: skip
    mine.ratio = mine.value / ideal  # type: ignore[operator]
    contenders = [mine]
    if cashews is not None:
        theirs = Measure("cashews", statistics.median(peer["p99"]), "ms p99",
                         extra={"loads_per_round": peer["loads"], "p99_ms_per_round": peer["p99"]})  # fmt: skip
        theirs.ratio = theirs.value / ideal  # type: ignore[operator]
        contenders.append(theirs)
    else:
        contenders.append(Measure("cashews", note=note or ""))
    met = all(n == 1 for n in ours["loads"]) and mine.ratio <= 1.5
    detail = (
        f"{rounds} rounds; DB loads per round: writethrough {ours['loads']}"
        + (f", cashews (lock=True) {peer['loads']}" if cashews is not None else "")
        + f"; p99 per round (ms): writethrough {[round(x, 1) for x in ours['p99']]}"
        + (f", cashews {[round(x, 1) for x in peer['p99']]}" if cashews is not None else "")
        + f"; Redis round trip {rtt:.3f} ms."
    )
    samples = {"writethrough": [x * 1000 for x in ours["all"]]}
    if peer["all"]:
        samples["cashews"] = [x * 1000 for x in peer["all"]]
    return Row(key, path, base, contenders, goal, met, detail, samples)


def _cashews_loader(cashews: Any, key: str) -> tuple[list[int], Get]:
    """A loader of HERD_DB_MS under cashews' ``@cache(..., lock=True)``, counting its loads."""
    loads = [0]

    async def create() -> Any:
        loads[0] += 1
        await asyncio.sleep(HERD_DB_MS / 1000)
        return PROFILE

    cached: Get = cashews(ttl="10m", key=key, lock=True)(create)
    return loads, cached


async def _gather_latencies(tasks: int, call: Get) -> list[float]:
    """Latencies (ms) of ``tasks`` tasks started together."""
    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(one() for _ in range(tasks)))
    return latencies
