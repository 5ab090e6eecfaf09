"""The asyncio store: single flight, cancellation safety, and the generated sync code.

The behaviour suite also runs on AsyncStore (make_any_store); this file holds what
only asyncio has.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import writethrough
from writethrough import CacheOutcome
from writethrough.caches.memory import AsyncMemoryCache, MemoryCache
from writethrough.protocol import Kind

ROOT = Path(__file__).resolve().parent.parent


def test_the_generated_sync_code_is_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


class CountingSource:
    """Wraps an async source: counts reads and makes each one take ``delay`` seconds."""

    def __init__(self, inner: Any, delay: float = 0.02, *, after: bool = False) -> None:
        self.inner, self.delay, self.reads, self.after = inner, delay, 0, after
        self.name = inner.name
        self.gate: asyncio.Event | None = None

    async def open(self) -> None:
        await self.inner.open()

    async def read(self, key: str) -> Any:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.after:  # read, then dawdle: the row is older when it reaches the cache
            row = await self.inner.read(key)
            await asyncio.sleep(self.delay)
            return row
        await asyncio.sleep(self.delay)
        return await self.inner.read(key)

    async def write(self, key: str, payload: bytes) -> int:
        return int(await self.inner.write(key, payload))

    async def delete(self, key: str) -> int:
        return int(await self.inner.delete(key))

    async def close(self) -> None:
        await self.inner.close()


class GatedCache(AsyncMemoryCache):
    """The real in-process cache whose conditional writes wait for a gate."""

    def __init__(self) -> None:
        super().__init__(MemoryCache())
        self.gate = asyncio.Event()
        self.reached = asyncio.Event()

    async def write(self, *args: Any, **kwargs: Any) -> Any:
        self.reached.set()
        await self.gate.wait()
        return await super().write(*args, **kwargs)


async def _open(cache_url: str, **options: Any) -> writethrough.AsyncStore:
    return await writethrough.open_async(source="sqlite:///:memory:", cache=cache_url, **options)


@pytest.mark.parametrize("concurrency", [1000])
def test_a_thousand_concurrent_gets_of_one_cold_key_load_it_once(
    cache_url: str, concurrency: int
) -> None:
    async def main() -> tuple[int, float, int]:
        store = await _open(cache_url, namespace=f"sf{concurrency}x{id(cache_url)}", lease_wait=5.0)
        await store.put("hot", {"v": 1})
        await store.cache.delete(f"wt:{store.namespace}:hot")
        source = CountingSource(store.source)
        store.source = source  # type: ignore[assignment]
        latencies: list[float] = []

        async def one() -> Any:
            started = asyncio.get_running_loop().time()
            value = await store.get("hot")
            latencies.append(asyncio.get_running_loop().time() - started)
            return value

        results = await asyncio.gather(*(one() for _ in range(concurrency)))
        assert results == [{"v": 1}] * concurrency
        latencies.sort()
        joins = store.stats.flight_joins
        assert len(store.flights) == 0
        await store.close()
        return source.reads, latencies[int(len(latencies) * 0.99) - 1], joins

    reads, p99, joins = asyncio.run(main())
    print(f"\n{concurrency} concurrent gets of one cold key: {reads} DB load(s), "
          f"p99 {p99 * 1000:.1f} ms, {joins} joined the local flight")
    assert reads == 1


def test_a_cancelled_follower_leaves_nothing_stuck() -> None:
    async def main() -> None:
        store = await _open("memory://", lease_wait=5.0)
        await store.put("k", 1)
        await store.cache.delete(f"wt:{store.namespace}:k")
        source = CountingSource(store.source)
        source.gate = asyncio.Event()
        store.source = source  # type: ignore[assignment]
        leader = asyncio.create_task(store.get("k"))
        await asyncio.sleep(0.01)
        follower = asyncio.create_task(store.get("k"))
        await asyncio.sleep(0.01)
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        source.gate.set()
        assert await leader == 1
        assert len(store.flights) == 0
        assert source.reads == 1
        await store.close()

    asyncio.run(main())


def test_a_cancelled_leader_lets_its_followers_read_for_themselves() -> None:
    async def main() -> None:
        store = await _open("memory://", lease_wait=5.0, lease_ttl=0.2)
        await store.put("k", 1)
        await store.cache.delete(f"wt:{store.namespace}:k")
        source = CountingSource(store.source)
        source.gate = asyncio.Event()
        store.source = source  # type: ignore[assignment]
        leader = asyncio.create_task(store.get("k"))
        await asyncio.sleep(0.01)
        followers = [asyncio.create_task(store.get("k")) for _ in range(5)]
        await asyncio.sleep(0.01)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        source.gate.set()
        assert await asyncio.gather(*followers) == [1] * 5
        assert len(store.flights) == 0, "no future left behind"
        assert await store.get("k") == 1
        await store.close()

    asyncio.run(main())


def test_a_put_cancelled_after_the_commit_still_updates_the_cache() -> None:
    async def main() -> None:
        cache = GatedCache()
        source = writethrough.sources.open_async_source("sqlite:///:memory:", namespace="c")
        store = writethrough.AsyncStore(source, cache, namespace="c")
        await store.open()
        cache.gate.set()
        await store.put("acct", {"balance": 500})
        await store.get("acct")
        cache.gate.clear()
        cache.reached.clear()
        put = asyncio.create_task(store.put("acct", {"balance": 400}))
        await cache.reached.wait()  # committed in the DB, cache write in flight
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
        cache.gate.set()
        for _ in range(100):
            entry = cache.inner.get("wt:c:acct")
            if entry is not None and entry.version == 2:
                break
            await asyncio.sleep(0.01)
        assert entry is not None and entry.version == 2 and entry.kind is Kind.VALUE
        assert await store.get("acct") == {"balance": 400}
        await store.close()

    asyncio.run(main())


def test_open_async_can_be_awaited_or_used_with_async_with() -> None:
    async def main() -> None:
        store = await writethrough.open_async(source="sqlite:///:memory:")
        result = await store.put("k", "v")
        assert result.cache is CacheOutcome.UPDATED and await store.get("k") == "v"
        await store.close()
        async with writethrough.open_async(source="sqlite:///:memory:") as other:
            assert (await other.put("k", "w")).version == 1

    asyncio.run(main())


def test_the_async_sqlite_source_does_not_block_the_loop() -> None:
    async def main() -> int:
        store = await _open("memory://")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        for i in range(50):
            await store.put(f"k{i}", i)
        task.cancel()
        await store.close()
        return ticks

    assert asyncio.run(main()) > 50, "the loop ran other tasks while SQLite worked"


@pytest.mark.parametrize("protocol", ["versioned", "naive"])
def test_the_checker_on_the_async_store_under_faults(cache_url: str, protocol: str) -> None:
    """32 concurrent tasks on 4 hot keys, with cache-write failures, evictions and a slow
    DB; every op recorded and checked. Versioned: 0 stale reads after ack, converged
    after repair. Naive: printed for contrast."""
    import random

    from writethrough.errors import CacheTimeout
    from writethrough.tools.checker import Op, check

    async def main() -> Any:
        store = await _open(cache_url, namespace=f"chk{protocol}{random.getrandbits(32)}",
                            protocol=protocol, repair_interval=0.01, lease_wait=0.05)
        real_write, real_set = store.cache.write, store.cache.set
        failing = {"on": False}

        async def flaky_write(*args: Any, **kwargs: Any) -> Any:
            if failing["on"]:
                raise CacheTimeout("injected")
            return await real_write(*args, **kwargs)

        async def flaky_set(*args: Any, **kwargs: Any) -> Any:
            if failing["on"]:
                raise CacheTimeout("injected")
            return await real_set(*args, **kwargs)

        store.cache.write = flaky_write  # type: ignore[method-assign]
        store.cache.set = flaky_set  # type: ignore[method-assign]
        store.source = CountingSource(store.source, delay=0.003, after=True)  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        ops: list[Op] = []
        keys = ["a", "b", "c", "d"]

        async def client(n: int) -> None:
            rng = random.Random(n)
            for _ in range(60):
                key = rng.choice(keys)
                start = loop.time()
                if rng.random() < 0.35:
                    r = await store.put(key, n)
                    ops.append(Op(f"c{n}", key, "write", start, loop.time(), r.version, r.cache.value))
                else:
                    got = await store.get_versioned(key)
                    ops.append(Op(f"c{n}", key, "read", start, loop.time(), got.version if got else 0))

        async def chaos() -> None:
            rng = random.Random(99)
            for i in range(400):
                failing["on"] = i % 80 < 20
                await store.cache.delete(f"wt:{store.namespace}:{rng.choice(keys)}")
                await asyncio.sleep(0.001)
            failing["on"] = False

        await asyncio.gather(chaos(), *(client(n) for n in range(32)))
        failing["on"] = False
        for _ in range(200):
            if not len(store.repairs):
                break
            await asyncio.sleep(0.01)
        final_cache, final_db = {}, {}
        for key in keys:
            entry = await store.cache.get(f"wt:{store.namespace}:{key}")
            final_cache[key] = entry.version if entry is not None and entry.kind is Kind.VALUE else None
            final_db[key] = (await store.source.read(key)).version
        await store.close()
        return check(ops, final_cache=final_cache, final_db=final_db)

    report = asyncio.run(main())
    print(f"\n{protocol}: {report.checked_reads} reads checked, "
          f"{report.stale_reads_after_ack} stale after ack, divergence {report.final_divergence}")
    assert report.checked_reads > 1000
    if protocol == "versioned":
        assert report.stale_reads_after_ack == 0 and report.monotonic_violations == 0, report.violations[:5]
        assert report.final_divergence == 0
    # The naive run is printed for contrast only: whether its races bite in a run this
    # short depends on timing (they are shown deterministically in test_races and by
    # the explorer).


def test_a_reader_that_comes_after_an_acknowledged_write_never_takes_the_local_flights_older_answer(
    tmp_path: Path,
) -> None:
    """Local followers wait for the first reader's lookup of the key (no cache call of their
    own), but take its answer only from a look that began after they came: here the leader's
    lease round trip met v1, a write of v2 was acknowledged before its reply arrived, and a
    reader that began after that acknowledgement must read v2."""
    from writethrough._async.store import AsyncStore
    from writethrough.core import Settings
    from writethrough.sources import open_async_source

    class LeaseGated(AsyncMemoryCache):
        def __init__(self, shared: MemoryCache) -> None:
            super().__init__(shared)
            self.armed = False
            self.reached, self.go = asyncio.Event(), asyncio.Event()
            self.applied, self.reply = asyncio.Event(), asyncio.Event()

        async def lease(self, *args: Any, **kwargs: Any) -> Any:
            if not self.armed:
                return await super().lease(*args, **kwargs)
            self.armed = False
            self.reached.set()
            await self.go.wait()
            found = await super().lease(*args, **kwargs)
            self.applied.set()
            await self.reply.wait()  # applied on the server, the reply still on its way
            return found

    async def main() -> None:
        shared = MemoryCache()
        url = f"sqlite:///{tmp_path}/f.db"
        gated = LeaseGated(shared)

        def store(cache: Any, strategy: str) -> AsyncStore:
            return AsyncStore(open_async_source(url, namespace="f"), cache, namespace="f",
                              settings=Settings(strategy=strategy), repair_worker=False)  # type: ignore[arg-type]

        reader, writer, other = store(gated, "invalidate"), store(AsyncMemoryCache(shared), "invalidate"), \
            store(AsyncMemoryCache(shared), "invalidate")
        for s in (reader, writer, other):
            await s.open()
        await writer.put("k", 1)  # a tombstone: the next read fills
        gated.armed = True
        leader = asyncio.create_task(reader.get("k"))
        await gated.reached.wait()  # the leader missed and is about to take the lease
        assert await other.get("k") == 1  # another process fills v1 meanwhile
        gated.go.set()
        await gated.applied.wait()  # the leader's lease met v1 (a hit), its reply is late
        assert (await writer.put("k", 2)).cache is CacheOutcome.INVALIDATED
        follower = asyncio.create_task(reader.get("k"))  # begins after the acknowledgement
        await asyncio.sleep(0.01)
        gated.reply.set()
        assert await leader == 1  # began before the write: either answer is right
        assert await follower == 2, "a read that began after the acknowledged write got v1"
        assert len(reader.flights) == 0
        for s in (reader, writer, other):
            await s.close()

    asyncio.run(main())


class HitGated(AsyncMemoryCache):
    """The real in-process cache; an armed hit-path read answers from the cache at once
    but its reply waits for ``reply`` (applied on the server, still on its way); an armed
    failure makes the next call raise as a lost connection does."""

    def __init__(self, shared: MemoryCache) -> None:
        super().__init__(shared)
        self.calls, self.armed, self.fail = 0, False, False
        self.applied, self.reply = asyncio.Event(), asyncio.Event()

    async def get_hit(self, key: str, floor: int, ceiling: int) -> Any:
        self.calls += 1
        if self.fail:
            from writethrough.errors import CacheUnavailable
            raise CacheUnavailable("connection lost")
        found = await super().get(key)  # an Entry: the store takes it as get's
        if self.armed:
            self.armed = False
            self.applied.set()
            await self.reply.wait()
        return found


def _hit_stores(tmp_path: Path, shared: MemoryCache, cache: Any) -> tuple[Any, Any]:
    from writethrough._async.store import AsyncStore
    from writethrough.core import Settings
    from writethrough.sources import open_async_source

    url = f"sqlite:///{tmp_path}/h.db"

    def store(c: Any) -> AsyncStore:
        return AsyncStore(open_async_source(url, namespace="h"), c, namespace="h",
                          settings=Settings(), repair_worker=False)
    return store(cache), store(AsyncMemoryCache(shared))


async def _first_read_in_flight(tmp_path: Path) -> tuple[HitGated, Any, Any, asyncio.Task[Any]]:
    """A reader store whose first get of k (v1 in the cache) met v1 and whose reply is
    held back (``reply``), a writer store on the same cache, and that first get."""
    shared = MemoryCache()
    gated = HitGated(shared)
    reader, writer = _hit_stores(tmp_path, shared, gated)
    await reader.open()
    await writer.open()
    await writer.put("k", 1)
    gated.armed = True
    first = asyncio.create_task(reader.get("k"))
    await asyncio.wait_for(gated.applied.wait(), 5)  # the first read met v1; its reply is late
    return gated, reader, writer, first


def test_readers_share_a_hit_read_only_if_it_was_sent_after_they_began(tmp_path: Path) -> None:
    """Concurrent readers of a key share one cache read (1,000 readers, 2 reads), but a
    reader never takes the answer of a read sent before it began: here the first read
    met v1, a write of v2 was acknowledged before its reply arrived, and a reader that
    began after that acknowledgement reads v2 (from the next read, made for it)."""
    async def main() -> None:
        gated, reader, writer, first = await _first_read_in_flight(tmp_path)
        assert (await writer.put("k", 2)).cache is CacheOutcome.UPDATED
        later = [asyncio.create_task(reader.get("k")) for _ in range(999)]
        await asyncio.sleep(0.01)
        assert gated.calls == 1, "the later readers wait for the next read"
        gated.reply.set()
        assert await first == 1  # began before the write: either answer is right
        assert await asyncio.gather(*later) == [2] * 999, "a reader got a reply older than it"
        assert gated.calls == 2, "999 readers shared one read"
        assert len(reader._reads) == 0
        await reader.close()
        await writer.close()

    asyncio.run(main())


def test_a_shared_hit_read_that_fails_counts_once_and_its_readers_read_the_db(
        tmp_path: Path) -> None:
    async def main() -> None:
        gated, reader, writer, first = await _first_read_in_flight(tmp_path)
        later = [asyncio.create_task(reader.get("k")) for _ in range(50)]
        cancelled = asyncio.create_task(reader.get("k"))
        await asyncio.sleep(0.01)
        cancelled.cancel()  # a cancelled reader cancels only itself
        gated.fail = True
        gated.reply.set()
        assert await first == 1
        assert await asyncio.gather(*later) == [1] * 50, "the DB answered each"
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert gated.calls == 2
        assert reader.stats.cache_read_failures == 1, "one failed read, counted once"
        assert reader.breaker.state.value == "closed"
        await reader.close()
        await writer.close()

    asyncio.run(main())


# -- found by review of the shared reads: each failed before its fix --------------------


def _plain_store(tmp_path: Path, cache: Any, worker: bool = False, **settings: Any) -> Any:
    from writethrough._async.store import AsyncStore
    from writethrough.core import Settings
    from writethrough.sources import open_async_source

    return AsyncStore(open_async_source(f"sqlite:///{tmp_path}/r.db", namespace="r"), cache,
                      namespace="r", settings=Settings(**settings), repair_worker=worker)


def test_a_shared_read_uses_the_epoch_known_when_it_is_made(tmp_path: Path) -> None:
    """A reader that begins after this process learned a new database epoch never gets a
    value of the old one from a shared read another reader set up before."""
    import sqlite3

    class Gated(HitGated):
        async def get_hit(self, key: str, floor: int, ceiling: int) -> Any:
            self.seen.append(floor)
            found = await super().get_hit(key, floor, ceiling)
            if found is not None and found.kind is Kind.VALUE and floor <= found.version < ceiling:
                return found.payload  # as the Redis backend answers a current value
            return found

    async def main() -> None:
        shared = MemoryCache()
        gated = Gated(shared)
        gated.seen = []  # type: ignore[attr-defined]
        reader, writer = _plain_store(tmp_path, gated), _plain_store(tmp_path, AsyncMemoryCache(shared))
        await reader.open()
        await writer.open()
        await writer.put("k", "v1")
        await writer.put("k", "v2-lost")
        con = sqlite3.connect(tmp_path / "r.db")  # the database restored to before v2
        table = reader.source.inner.table
        con.execute(f"UPDATE {table} SET value = ?, version = 1 WHERE key = 'k'", (b'"v1"',))
        con.commit()
        con.close()
        gated.armed = True
        first = asyncio.create_task(reader.get("k"))
        await asyncio.wait_for(gated.applied.wait(), 5)
        early = asyncio.create_task(reader.get("k"))  # sets up the next, shared read
        await asyncio.sleep(0)
        await reader.source.bump_epoch("restored", everything=True)
        await reader._check_epoch()  # what the repair worker does
        late = asyncio.create_task(reader.get("k"))  # began after the new epoch was known
        await asyncio.sleep(0.01)
        gated.reply.set()
        await first
        assert await early == "v1"
        assert await late == "v1", "a value of the old epoch"
        await reader.close()
        await writer.close()

    asyncio.run(main())


def test_a_shared_read_cancelled_before_it_starts_leaves_no_reader_waiting(tmp_path: Path) -> None:
    class Slow(AsyncMemoryCache):
        async def get(self, key: str) -> Any:
            await asyncio.sleep(0.02)
            return await super().get(key)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def factory(loop: Any, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            if "_hit_read" in getattr(coro, "__qualname__", "") or \
                    "_cache_call" in getattr(coro, "__qualname__", ""):
                task.cancel()  # a sweep cancelling tasks of this loop iteration
            return task

        store = _plain_store(tmp_path, Slow(MemoryCache()))
        await store.open()
        await store.put("k", 1)
        assert await store.get("k") == 1
        loop.set_task_factory(factory)  # type: ignore[arg-type]
        first = asyncio.create_task(store.get("k"))
        await asyncio.sleep(0.005)
        waiter = asyncio.create_task(store.get("k"))
        assert await first == 1
        loop.set_task_factory(None)
        assert await asyncio.wait_for(waiter, 2) == 1, "the waiter of a cancelled read hung"
        assert await asyncio.wait_for(store.get("k"), 2) == 1, "a later reader hung"
        assert len(store._reads) == 0 and len(store._entry_reads) == 0
        await store.close()

    asyncio.run(main())


def test_waiters_of_a_failed_read_go_to_the_db_without_a_second_timeout(tmp_path: Path) -> None:
    from writethrough.errors import CacheUnavailable

    class Down(AsyncMemoryCache):
        down, calls = False, 0

        async def get(self, key: str) -> Any:
            if self.down:
                self.calls += 1
                await asyncio.sleep(0.3)
                raise CacheUnavailable("timeout")
            return await super().get(key)

    async def main() -> None:
        cache = Down(MemoryCache())
        store = _plain_store(tmp_path, cache, breaker_threshold=1, breaker_reset=5.0)
        await store.open()
        await store.put("k", 1)
        assert await store.get("k") == 1
        cache.down = True
        first = asyncio.create_task(store.get("k"))
        await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        others = await asyncio.gather(*(store.get("k") for _ in range(20)))
        took = asyncio.get_running_loop().time() - started
        assert await first == 1 and others == [1] * 20
        assert cache.calls == 1, "no read made for the waiters after the one that failed"
        assert took < 0.55, f"waiters waited {took:.2f} s: a second timeout"
        assert store.stats.cache_read_failures == 1
        await store.close()

    asyncio.run(main())


def test_followers_of_a_slow_load_each_wait_their_own_lease_ttl(tmp_path: Path) -> None:
    """One timer per load, but each follower's deadline is its own: a follower that came
    late still gets the leader's load instead of reading the DB itself."""
    async def main() -> None:
        store = _plain_store(tmp_path, AsyncMemoryCache(MemoryCache()), True, lease_ttl=0.4,
                             strategy="invalidate")  # the worker renews the slow load's lease
        await store.open()
        await store.put("k", 1)
        store._invalidated.clear()
        read = store.source.read

        async def slow_read(key: str) -> Any:
            await asyncio.sleep(0.6)
            return await read(key)

        store.source.read = slow_read  # type: ignore[method-assign]

        async def reader(delay: float) -> Any:
            await asyncio.sleep(delay)
            return await store.get("k")

        reads0 = store.stats.source_reads
        got = await asyncio.gather(*(reader(d) for d in (0.0, 0.05, 0.3, 0.5, 0.55)))
        assert got == [1] * 5
        assert store.stats.source_reads - reads0 <= 2, "late followers read the DB themselves"
        assert store.stats.flight_joins >= 3
        assert len(store.flights) == 0, "a timer or a future left behind"
        await store.close()

    asyncio.run(main())


def test_a_herd_on_a_key_this_process_wrote_shares_its_gets(tmp_path: Path) -> None:
    """After this process's own put the key has a read floor, so its readers skip the hit
    path; their lookups still share GETs (a review of the sharing found them making one
    GET each: 1,000 tasks, p99 150-460 ms instead of ~35)."""
    class Counting(AsyncMemoryCache):
        gets = 0

        async def get(self, key: str) -> Any:
            self.gets += 1
            await asyncio.sleep(0.002)  # a round trip: readers overlap
            return await super().get(key)

    async def main() -> None:
        cache = Counting(MemoryCache())
        store = _plain_store(tmp_path, cache)
        await store.open()
        await store.put("k", 1)
        await cache.delete(f"wt:{store.namespace}:k")
        assert "k" in store._floors
        source = CountingSource(store.source)
        store.source = source  # type: ignore[assignment]
        assert await asyncio.gather(*(store.get("k") for _ in range(500))) == [1] * 500
        assert source.reads == 1
        assert cache.gets <= 3, f"{cache.gets} GETs for 500 readers"
        await store.close()

    asyncio.run(main())
