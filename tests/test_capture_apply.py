"""The listeners' cache writes in pipelines (capture/apply.py): a failure of a whole
pipeline fails no more keys than the per-key writes before it did.

Found by review of the pipelined writes: one cluster shard down (or one stall) failed
every key of a 500-key pipeline, and the listener then stopped writing to the healthy
shards too.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from writethrough.caches import open_cache
from writethrough.caches.memory import MemoryCache
from writethrough.capture.apply import CacheApplier, KeyChange, cache_key
from writethrough.capture.keyspace import Keyspace, ListenerStats
from writethrough.capture.versions import cache_version
from writethrough.errors import CacheTimeout, CacheUnavailable


class Rows:
    """The database as the applier reads it: every key at ``version``."""

    def __init__(self, version: int) -> None:
        self.version = version

    def rows(self, keys: list[str]) -> dict[str, tuple[int, bytes]]:
        return {k: (self.version, b'{"v": 1}') for k in keys}

    def versions(self, keys: list[str]) -> dict[str, int]:
        return dict.fromkeys(keys, self.version)

    def floor(self) -> int:
        return self.version + 100


class Stalls:
    """The real in-process cache whose ``nth`` call stalls past its timeout once."""

    def __init__(self, nth: int) -> None:
        self.inner, self.name, self.calls, self.nth = MemoryCache(), "memory", 0, nth

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.nth:
            raise CacheTimeout("injected: one stall")

    def write(self, *args: Any, **kwargs: Any) -> Any:
        self._tick()
        return self.inner.write(*args, **kwargs)

    def fill(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.fill(*args, **kwargs)

    def write_many(self, writes: Any, **kwargs: Any) -> Any:
        self._tick()
        return self.inner.write_many(writes, **kwargs)

    def fill_many(self, fills: Any, **kwargs: Any) -> Any:
        return self.inner.fill_many(fills, **kwargs)


@pytest.mark.parametrize("strategy", ["invalidate", "write-through"])
def test_one_stall_fails_one_key_not_a_whole_pipeline(strategy: str) -> None:
    cache = Stalls(nth=2)  # the second pipeline (keys 500-999) stalls
    stats = ListenerStats()
    applier = CacheApplier(cache, stats)  # type: ignore[arg-type]
    applier.begin_batch()
    space = Keyspace("st", "t", "id", strategy=strategy)  # type: ignore[arg-type]
    failed = applier.apply(space, 1, {str(i): KeyChange(7, False) for i in range(1200)}, Rows(7))
    assert len(failed) <= 1, f"{len(failed)} keys failed for one stall"
    assert stats.cache_errors == len(failed)
    landed = [cache.inner.get(cache_key("st", str(i))) for i in range(1200)]
    assert sum(e is not None for e in landed) >= 1199


def test_a_pipeline_with_landed_writes_is_no_outage() -> None:
    """Its first answers unreachable, the rest landed: the landed ones are counted first,
    so the batch is not declared "cache down" (nor are they left uncounted)."""
    class FirstThreeDown:
        name = "memory"

        def __init__(self) -> None:
            self.inner = MemoryCache()

        def write_many(self, writes: Any, **kwargs: Any) -> list[Any]:
            answers: list[Any] = self.inner.write_many(writes, **kwargs)
            return [CacheUnavailable("injected") if i < 3 else a for i, a in enumerate(answers)]

    stats = ListenerStats()
    applier = CacheApplier(FirstThreeDown(), stats)  # type: ignore[arg-type]
    applier.begin_batch()
    space = Keyspace("fd", "t", "id", strategy="invalidate")
    failed = applier.apply(space, 1, {str(i): KeyChange(7, False) for i in range(20)}, Rows(7))
    assert [f.key for f in failed] == ["0", "1", "2"]
    assert stats.tombstones == 17 and applier.landed == 17


@pytest.mark.redis
def test_one_cluster_shard_down_leaves_the_others_written() -> None:
    """Redis Cluster, one master stopped, the others serving (full coverage off): the keys
    of the healthy shards land, only the down shard's fail (and are parked)."""
    from servers import _client, redis_cluster

    with redis_cluster(3) as cluster:
        if not cluster._processes:
            pytest.skip("a cluster of our own is needed: this test stops one of its nodes")
        for port in cluster.ports:
            with _client(port) as client:
                client.execute_command("CONFIG", "SET", "cluster-require-full-coverage", "no")
        cache = open_cache(cluster.url)
        try:
            space = Keyspace("shard", "t", "id", strategy="write-through")
            keys = [str(i) for i in range(300)]
            applier = CacheApplier(cache, ListenerStats())
            applier.begin_batch()
            assert applier.apply(space, 1, dict.fromkeys(keys, KeyChange(10, False)), Rows(10)) == []
            cluster._processes[2].stop()
            time.sleep(6)  # past cluster-node-timeout (5 s): the others serve their slots
            stats = ListenerStats()
            applier = CacheApplier(cache, stats)
            applier.begin_batch()
            failed = applier.apply(space, 1, {k: KeyChange(None, False) for k in keys}, Rows(11))
            versions: Counter[Any] = Counter()
            for key in keys:
                try:
                    entry = cache.get(cache_key("shard", key))
                    versions[None if entry is None else entry.version] += 1
                except CacheUnavailable:
                    versions["down"] += 1
            assert versions["down"] == len(failed) > 0, versions
            assert versions[cache_version(1, 11)] == len(keys) - len(failed), \
                "a healthy shard's key was not written"
            assert stats.values == len(keys) - len(failed)
            assert all(f.unreachable for f in failed)
        finally:
            cache.close()
