"""Monotonic reads per process when one thread lifts a read floor while another thread's
cache read, older than the catch-up, is still in flight.

Found by the 10^6-op chaos run (hot-writers, versioned write-through: 1 non-monotonic
read in 42,125; reproduced at 2 in 219,578): a thread read v397 from the database
(floor 397), its next read's GET came back with v396 (the cache still lagged), but in
between another thread of the same store had hit v397 and lifted the floor ("the cache
caught up"), so the v396 hit was served. The floor a read must respect is the one in
force when the read began.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import unique_namespace
from writethrough import CacheOutcome, CacheUnavailable
from writethrough.caches.memory import MemoryCache
from writethrough.sources.sqlite import SQLiteSource
from writethrough.store import Store
from writethrough.tools.faults import FaultyCache, times


@pytest.mark.parametrize("batch", [False, True], ids=["get_versioned", "get_many_versioned"])
def test_a_floor_lifted_by_another_thread_still_guards_a_read_in_flight(tmp_path: Path,
                                                                       batch: bool) -> None:
    shared = MemoryCache(max_entries=None, max_bytes=None)
    path = str(tmp_path / "floor-race.db")
    ns = unique_namespace("floorrace")
    reader_cache = FaultyCache(shared)
    with Store(SQLiteSource(path, namespace=ns), shared, namespace=ns,
               repair_worker=False) as writer, \
         Store(SQLiteSource(path, namespace=ns), reader_cache, namespace=ns,  # type: ignore[arg-type]
               repair_worker=False) as reader:
        writer.put("k", "v1")
        assert reader.get("k") == "v1"
        broken = FaultyCache(shared)
        writer.cache = broken  # type: ignore[assignment]
        broken.fail("write", CacheUnavailable("injected"))
        assert writer.put("k", "v2").cache is CacheOutcome.PENDING_REPAIR  # the cache keeps v1
        writer.cache = shared
        reader_cache.fail("get", times(2, CacheUnavailable("injected")))  # a blip: to the DB
        assert reader.get("k") == "v2"  # from the database: a floor at v2
        reader_cache.heal()

        gate = reader_cache.pause("get", after=True)  # the next GET reads v1, then is held
        seen: list[Any] = []
        def slow_read() -> None:
            seen.append(reader.get_many_versioned(["k"]).get("k") if batch
                        else reader.get_versioned("k"))

        slow_reader = threading.Thread(target=slow_read)
        slow_reader.start()
        assert gate.wait_reached(), "the slow read never reached the cache"
        assert writer.put("k", "v3").cache is CacheOutcome.UPDATED  # the cache catches up
        assert reader.get("k") == "v3"  # another thread's hit: the floor may be lifted
        gate.release()
        slow_reader.join(10)
        assert not slow_reader.is_alive()
        assert seen and seen[0] is not None
        assert seen[0].value != "v1", "a read that began after reading v2 returned v1"
        assert seen[0].value in ("v2", "v3")
