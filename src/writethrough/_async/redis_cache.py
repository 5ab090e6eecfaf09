"""The Redis and Redis Cluster cache backend (redis-py with hiredis).

One Redis key per entry, so every operation touches one key: correct on a cluster
without hash tags. A read hit is one GET; a conditional write, a lease and a fill
are one EVALSHA each of ``protocol.lua`` (redis-py's Script reloads it after
NOSCRIPT, i.e. after a restart or failover). The client is made with retries
switched off (``caches/redis.py``): the store's failure ladder owns every retry.

The asyncio version (``_async/redis_cache.py``) is written by hand; the sync one
(``_sync/redis_cache.py``) is generated from it by ``scripts/unasync.py``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from ..caches.redis_codec import SCRIPT, WRITE_OUTCOMES, decode, encode, mapped_errors, ms
from ..protocol import Entry, Kind, LeaseOutcome, OnEmpty, WriteOutcome
from .compat import Semaphore

_HIT_OR_BUSY = (LeaseOutcome.HIT, LeaseOutcome.BUSY)


class AsyncRedisCache:
    """A cache backend on one Redis server (see ``caches/redis.py`` for the URLs).

        >>> cache = AsyncRedisCache(redis.asyncio.Redis(socket_timeout=0.05))
    """

    name = "redis"

    def __init__(self, client: Any, *, max_concurrency: int | None = None) -> None:
        self.client = client
        self._script = client.register_script(SCRIPT)
        # The cluster clients fail (rather than wait) when a node's pool is full:
        # bound the calls in flight so bursts wait their turn instead.
        self._limit: Any = nullcontext() if max_concurrency is None else Semaphore(max_concurrency)

    async def open(self) -> None:
        """Connections are made on first use."""

    async def get(self, key: str) -> Entry | None:
        async with self._limit:
            with mapped_errors():
                raw = await self.client.get(key)
        return None if raw is None else decode(raw)

    async def write(
        self,
        key: str,
        kind: Kind,
        version: int,
        payload: bytes,
        *,
        ttl: float,
        tombstone_ttl: float,
        on_empty: OnEmpty,
    ) -> WriteOutcome:
        args = ["write", kind.value, version, payload, ms(ttl), ms(tombstone_ttl), on_empty]
        async with self._limit:
            with mapped_errors():
                result = await self._script(keys=[key], args=args)
        return WRITE_OUTCOMES[result]

    async def lease(self, key: str, token: bytes, *, lease_ttl: float) -> tuple[LeaseOutcome, Entry | None]:
        async with self._limit:
            with mapped_errors():
                result = await self._script(keys=[key], args=["lease", token, ms(lease_ttl)])
        outcome = LeaseOutcome(result[0].decode())
        return outcome, decode(result[1]) if outcome in _HIT_OR_BUSY else None

    async def fill(self, key: str, token: bytes, entry: Entry, *, ttl: float) -> bool:
        args = ["fill", token, entry.kind.value, entry.version, encode(entry), ms(ttl)]
        async with self._limit:
            with mapped_errors():
                return bool(await self._script(keys=[key], args=args))

    async def set(self, key: str, entry: Entry, *, ttl: float) -> None:
        async with self._limit:
            with mapped_errors():
                await self.client.set(key, encode(entry), px=ms(ttl))

    async def delete(self, key: str) -> None:
        async with self._limit:
            with mapped_errors():
                await self.client.delete(key)

    async def close(self) -> None:
        await self.client.aclose()


class AsyncRedisClusterCache(AsyncRedisCache):
    """The same backend on a Redis Cluster; redis-py follows MOVED/ASK redirects."""

    name = "redis+cluster"
