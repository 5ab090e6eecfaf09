"""asyncio store costs, as ratios to raw redis.asyncio measured side by side.

    .venv/bin/python benchmarks/bench_async.py [--rounds 5] [--ops 20000]

Uses WRITETHROUGH_REDIS_URL when set, else a throwaway redis-server.
1. Throughput of get hits with 64 concurrent tasks vs raw redis.asyncio GETs (+ the
   same decode) with the same concurrency and the same pool size.
2. 1,000 concurrent gets of one cold key: DB loads and the waiters' p50/p99 latency
   (with a 20 ms DB query), single flight + lease vs the naive protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import writethrough
from servers import redis_server

PROFILE = {"name": "Alice", "balance": 400, "email": "alice@example.com", "tags": ["a", "b"]}
TASKS = 64


async def throughput(get: Callable[[], Awaitable[Any]], ops: int) -> float:
    per_task = ops // TASKS

    async def worker() -> None:
        for _ in range(per_task):
            await get()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(TASKS)))
    return per_task * TASKS / (time.perf_counter() - started)


class SlowCounting:
    def __init__(self, inner: Any) -> None:
        self.inner, self.reads, self.name = inner, 0, inner.name

    async def open(self) -> None:
        await self.inner.open()

    async def read(self, key: str) -> Any:
        self.reads += 1
        await asyncio.sleep(0.02)
        return await self.inner.read(key)

    async def write(self, key: str, payload: bytes) -> int:
        return int(await self.inner.write(key, payload))

    async def delete(self, key: str) -> int:
        return int(await self.inner.delete(key))

    async def close(self) -> None:
        await self.inner.close()


async def cold_herd(url: str, protocol: str) -> tuple[int, float, float]:
    store = await writethrough.open_async(
        source="sqlite:///:memory:", cache=url, namespace=f"herd{protocol}{time.time_ns()}",
        protocol=protocol, lease_wait=2.0,
    )
    await store.put("hot", PROFILE)
    await store.cache.delete(f"wt:{store.namespace}:hot")
    source = SlowCounting(store.source)
    store.source = source  # type: ignore[assignment]
    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        assert await store.get("hot") == PROFILE
        latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(1000)))
    await store.close()
    latencies.sort()
    return source.reads, latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]


async def main(rounds: int, ops: int, url: str) -> None:
    store = await writethrough.open_async(source="sqlite:///:memory:", cache=url, namespace="bench")
    await store.put("user:42", PROFILE)
    await store.get("user:42")
    raw = redis.asyncio.Redis.from_url(url, max_connections=64)
    await raw.set("raw:user:42", orjson.dumps(PROFILE), px=300_000)

    async def raw_get() -> Any:
        return orjson.loads(await raw.get("raw:user:42"))

    async def our_get() -> Any:
        return await store.get("user:42")

    assert await our_get() == await raw_get() == PROFILE
    base, ours = [], []
    for _ in range(rounds):
        base.append(await throughput(raw_get, ops))
        ours.append(await throughput(our_get, ops))
    b, o = statistics.median(base), statistics.median(ours)
    print(f"get hits, {TASKS} tasks: raw redis.asyncio {b:8.0f}/s   writethrough {o:8.0f}/s   "
          f"ratio {o / b:.2f}x (goal >= 0.85x)")
    await raw.aclose()
    await store.close()
    for protocol in ("versioned", "naive"):
        loads, p50, p99 = await cold_herd(url, protocol)
        print(f"1,000 concurrent gets of one cold key ({protocol:9s}): {loads:4d} DB loads, "
              f"waiters p50 {p50 * 1000:6.1f} ms, p99 {p99 * 1000:6.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=20_000)
    args = parser.parse_args()
    with redis_server() as server:
        asyncio.run(main(args.rounds, args.ops, server.url))
