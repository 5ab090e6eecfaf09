"""The races of DESIGN.md, forced step by step with gates on a real backend.

FaultyCache / FaultySource wrap the real cache and source: they only pause or fail
calls, so every step runs the real protocol code against the real server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from writethrough import CacheOutcome, CacheTimeout, Store
from writethrough.tools.faults import FaultyCache, FaultySource

MakeStore = Callable[..., Store]


def faulty(store: Store) -> tuple[FaultyCache, FaultySource]:
    cache, source = FaultyCache(store.cache), FaultySource(store.source)
    store.cache, store.source = cache, source  # type: ignore[assignment]
    return cache, source


def run(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def ckey(store: Store, key: str) -> str:
    return f"wt:{store.namespace}:{key}"


@pytest.mark.parametrize("protocol", ["versioned", "naive"])
def test_race_2_writers_reorder(make_store: MakeStore, protocol: str) -> None:
    """W1 commits v1, W2 commits v2, the cache gets v2 then v1."""
    store = make_store(protocol=protocol, write_budget=5.0)
    store.put("k", "v0")
    store.get("k")
    cache, _ = faulty(store)
    gate = cache.pause("write" if protocol == "versioned" else "set")
    w1, _ = run(lambda: store.put("k", "v1"))
    assert gate.wait_reached()
    assert store.put("k", "v2").version == 3
    gate.release()
    w1.join(5)
    if protocol == "versioned":
        assert store.get("k") == "v2"
        assert store.stats.stale_rejected == 1
    else:
        assert store.get("k") == "v1", "naive write-through leaves the older value behind"


@pytest.mark.parametrize("protocol", ["versioned", "naive"])
@pytest.mark.parametrize("strategy", ["write-through", "invalidate"])
def test_race_3_read_populate(make_store: MakeStore, protocol: str, strategy: str) -> None:
    """A reader misses and loads v1; a writer commits v2; then the reader stores v1."""
    store = make_store(protocol=protocol, strategy=strategy)
    store.put("k", "v1")
    store.cache.delete(ckey(store, "k"))
    _, source = faulty(store)
    gate = source.pause("read", after=True)  # the reader has read v1 from the DB
    reader, got = run(lambda: store.get("k"))
    assert gate.wait_reached()
    store.put("k", "v2")
    gate.release()
    reader.join(5)
    assert got == ["v1"]  # it read before the write: fine
    if protocol == "versioned":
        assert store.get("k") == "v2"
        assert store.stats.fills_dropped == 1
    else:
        assert store.get("k") == "v1", "naive: the late fill put the old value back"


def test_race_6_fill_after_the_writes_entry_was_evicted(make_store: MakeStore) -> None:
    """The write's entry is evicted before the older fill lands on the empty key."""
    store = make_store(strategy="write-through")
    store.put("k", "v1")
    store.cache.delete(ckey(store, "k"))
    _, source = faulty(store)
    gate = source.pause("read", after=True)
    reader, _ = run(lambda: store.get("k"))
    assert gate.wait_reached()
    store.put("k", "v2")
    store.cache.delete(ckey(store, "k"))  # evicted
    gate.release()
    reader.join(5)
    assert store.cache.get(ckey(store, "k")) is None, "the stale fill must not land"
    assert store.get("k") == "v2"


def test_race_6_older_write_after_the_newer_entry_was_evicted(make_store: MakeStore) -> None:
    store = make_store(write_budget=5.0)
    store.put("k", "v0")
    store.get("k")
    cache, _ = faulty(store)
    gate = cache.pause("write")
    w1, _ = run(lambda: store.put("k", "v1"))
    assert gate.wait_reached()
    store.put("k", "v2")
    store.cache.delete(ckey(store, "k"))  # the newer entry is evicted
    gate.release()
    w1.join(5)
    assert store.get("k") == "v2", "the late v1 must land as a tombstone, not a value"


@pytest.mark.parametrize("protocol", ["versioned", "naive"])
def test_race_1_cache_times_out_after_the_commit(make_store: MakeStore, protocol: str) -> None:
    """DB holds $400, the cache update fails: naive serves $500; versioned repairs."""
    store = make_store(protocol=protocol, repair_interval=0.02)
    store.put("acct", {"balance": 500})
    store.get("acct")
    cache, _ = faulty(store)
    failing = "write" if protocol == "versioned" else "set"
    cache.fail(failing, CacheTimeout("injected: cache timed out"))
    result = store.put("acct", {"balance": 400})
    if protocol == "naive":
        assert result.cache is CacheOutcome.FAILED
        assert store.get("acct") == {"balance": 500}, "naive: stale until the TTL"
        return
    assert result.cache is CacheOutcome.PENDING_REPAIR
    assert store.get("acct") == {"balance": 400}, "read-your-writes while pending repair"
    assert store.stats.pending_repair_reads == 1
    cache.heal()
    deadline = time.monotonic() + 5
    while len(store.repairs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(store.repairs) == 0
    assert store.stats.repairs_applied >= 1
    entry = store.cache.get(ckey(store, "acct"))
    assert entry is not None and entry.version == result.version
    assert store.get("acct") == {"balance": 400}


def test_a_timed_out_write_that_was_applied_is_safe_to_retry(make_store: MakeStore) -> None:
    """A timeout is ambiguous: here the write reached the cache, then 'timed out'."""
    store = make_store(write_budget=5.0)
    store.put("k", "v1")
    store.get("k")
    cache, _ = faulty(store)
    calls = {"n": 0}

    def flaky() -> BaseException | None:
        calls["n"] += 1
        return None if calls["n"] > 1 else CacheTimeout("lost reply")

    # Apply the first write, then report a timeout: done by pausing after the real call.
    real_write = cache.inner.write

    def applied_then_timeout(*args: object, **kwargs: object) -> object:
        outcome = real_write(*args, **kwargs)
        error = flaky()
        if error is not None:
            raise error
        return outcome

    cache.inner.write = applied_then_timeout  # type: ignore[method-assign]
    result = store.put("k", "v2")
    assert result.cache is CacheOutcome.UPDATED
    assert store.stats.cache_write_failures == 1
    assert store.get_versioned("k") is not None and store.get("k") == "v2"


def test_the_breaker_opens_and_writes_skip_to_repair_without_paying_timeouts(
    make_store: MakeStore,
) -> None:
    store = make_store(repair_worker=False)
    cache, _ = faulty(store)
    cache.fail("write", CacheTimeout("down"))
    cache.fail("get", CacheTimeout("down"))
    for i in range(10):
        assert store.put(f"k{i}", i).cache is CacheOutcome.PENDING_REPAIR
    assert store.breaker.opened >= 1
    calls_before = cache.calls.get("write", 0)
    assert store.put("x", 1).cache is CacheOutcome.PENDING_REPAIR
    assert cache.calls.get("write", 0) == calls_before, "open breaker: no cache call"
    assert store.get("k3") == 3, "reads go to the DB while the cache is down"
    cache.heal()
    time.sleep(store.breaker.reset_after + 0.05)
    while store.repair_once():
        pass
    assert len(store.repairs) == 0
    assert store.get("k3") == 3


def test_herd_of_threads_missing_one_key_loads_it_once(make_store: MakeStore) -> None:
    store = make_store(lease_wait=2.0)
    store.put("hot", "v")
    store.cache.delete(ckey(store, "hot"))
    _, source = faulty(store)
    gate = source.pause("read", after=True)  # hold the first loader until all have missed
    barrier = threading.Barrier(50)
    results: list[object] = []

    def reader() -> None:
        barrier.wait()
        results.append(store.get("hot"))

    threads = [threading.Thread(target=reader) for _ in range(50)]
    for t in threads:
        t.start()
    assert gate.wait_reached()
    time.sleep(0.2)
    gate.release()
    for t in threads:
        t.join(10)
    assert results == ["v"] * 50
    assert source.calls["read"] == 1, f"DB loads: {source.calls['read']}"


def test_the_breaker_is_settable(make_store: MakeStore) -> None:
    store = make_store(repair_worker=False, breaker_threshold=2, breaker_reset=30.0)
    cache, _ = faulty(store)
    cache.fail("write", CacheTimeout("down"))
    store.put("a", 1)
    assert store.breaker.opened == 1, "two failed attempts of one put open it"
    calls = cache.calls["write"]
    store.put("b", 1)
    assert cache.calls["write"] == calls, "open for 30 s: no cache call"
