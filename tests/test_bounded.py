"""Bounded memory and tables while the cache is down or nobody repairs (issue 12).

A repair records a key and a version (it ends as a tombstone of that version, or a
re-read), never the value; the repair log has a capacity; settled outbox rows are
cleared by the writer itself when no repair worker runs.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import writethrough
from conftest import unique_namespace
from writethrough import CacheOutcome, CacheUnavailable
from writethrough.caches.memory import MemoryCache
from writethrough.repair import Repair, RepairLog
from writethrough.sources.sqlite import SQLiteSource
from writethrough.store import Store
from writethrough.tools.faults import FaultyCache

VALUE = "x" * 200_000  # 200 kB


def test_with_the_cache_down_repairs_keep_no_values(tmp_path: Path) -> None:
    ns = unique_namespace("bounded")
    cache = FaultyCache(MemoryCache(max_entries=None, max_bytes=None))
    cache.fail("write", CacheUnavailable("injected: the cache is down"))
    cache.fail("get", CacheUnavailable("injected: the cache is down"))
    with Store(SQLiteSource(str(tmp_path / "b.db"), namespace=ns), cache,  # type: ignore[arg-type]
               namespace=ns, repair_worker=False) as store:
        store.put("warm", VALUE)
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for i in range(300):  # 60 MB of values written while the cache is down
                assert store.put(f"k{i}", VALUE).cache is CacheOutcome.PENDING_REPAIR
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(store.repairs) == 301
        assert after - before < 5_000_000, f"{after - before} bytes kept for 300 repairs"
        assert store.get("k7") == VALUE  # read-your-writes: from the database


def test_the_repair_log_has_a_capacity() -> None:
    log = RepairLog(capacity=10)
    for i in range(25):
        log.record(Repair(f"k{i}", i + 1, float(i)))
    assert len(log) == 10 and log.dropped == 15
    assert "k24" in log and "k0" not in log  # the oldest leave first


def test_without_a_repair_worker_the_outbox_stays_bounded(tmp_path: Path) -> None:
    ns = unique_namespace("outboxbound")
    with writethrough.open(f"sqlite:///{tmp_path / 'o.db'}", "memory://", namespace=ns,
                           durability="outbox", repair_worker=False) as store:
        for i in range(2_000):
            assert store.put(f"k{i % 50}", i).cache is CacheOutcome.UPDATED
        kept = len(store._outbox_done)
        rows = store.source.outbox_claim(0.0, 10_000, 0.0)  # type: ignore[attr-defined]
    assert kept <= 500, f"{kept} settled outbox ids kept in memory"
    assert len(rows) <= 500, f"{len(rows)} settled outbox rows left in the table"
