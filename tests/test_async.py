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

    def __init__(self, inner: Any, delay: float = 0.02) -> None:
        self.inner, self.delay, self.reads = inner, delay, 0
        self.name = inner.name
        self.gate: asyncio.Event | None = None

    async def open(self) -> None:
        await self.inner.open()

    async def read(self, key: str) -> Any:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
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
        assert result.cache is CacheOutcome.INVALIDATED and await store.get("k") == "v"
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
