"""The circuit breaker counts failures *in a row*, on every path (found by a review of the
hot-path and batch work): the hit fast path must report its successes too, and a batch
whose every key was refused (-OOM, -READONLY, -LOADING come back per command in a
pipeline) is a failure, as the same refusals through ``put`` are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import unique_namespace
from writethrough import CacheUnavailable
from writethrough.caches.memory import MemoryCache
from writethrough.errors import CacheServerError
from writethrough.sources.sqlite import SQLiteSource
from writethrough.store import Store
from writethrough.tools.faults import FaultyCache, every


def test_isolated_blips_between_fast_hits_do_not_open_the_breaker(tmp_path: Path) -> None:
    ns = unique_namespace("brk")
    shared = MemoryCache(max_entries=None, max_bytes=None)
    path = str(tmp_path / "b.db")
    keys = [f"k{i}" for i in range(2000)]
    cache = FaultyCache(shared)
    with Store(SQLiteSource(path, namespace=ns), shared, namespace=ns, repair_worker=False) as writer, \
         Store(SQLiteSource(path, namespace=ns), cache, namespace=ns,  # type: ignore[arg-type]
               repair_worker=False) as reader:
        writer.put_many(dict.fromkeys(keys, "v"))  # cached (closing a store closes its cache)
        cache.fail("get", every(200, CacheUnavailable("injected blip")))  # 1 GET in 200 fails, never two in a row
        for key in keys:
            assert reader.get(key) == "v"
        assert reader.stats.cache_read_failures == 10
        assert reader.stats.hits >= 1_900
        assert reader.breaker.opened == 0, "10 isolated blips among 2,000 hits opened the breaker"


class RefusesEveryWrite(MemoryCache):
    """An in-process cache whose server refuses every write, one answer per command."""

    def write_many(self, writes: list[Any], **_: Any) -> list[Any]:
        return [CacheServerError("OOM command not allowed") for _ in writes]

    def write(self, *_: Any, **__: Any) -> Any:
        raise CacheServerError("OOM command not allowed")


def opened_after_ten(tmp_path: Path, batch: bool) -> int:
    ns = unique_namespace("bbrk")
    with Store(SQLiteSource(str(tmp_path / f"{batch}.db"), namespace=ns),
               RefusesEveryWrite(max_entries=None, max_bytes=None), namespace=ns,
               repair_worker=False) as store:
        for i in range(10):
            if batch:
                store.put_many({f"k{i}": i, f"j{i}": i})
            else:
                store.put(f"k{i}", i)
        return store.breaker.opened


def test_a_batch_refused_key_by_key_opens_the_breaker_as_put_does(tmp_path: Path) -> None:
    assert opened_after_ten(tmp_path, batch=False) >= 1
    assert opened_after_ten(tmp_path, batch=True) >= 1
