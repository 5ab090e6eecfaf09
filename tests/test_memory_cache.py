"""The in-process cache: LRU bounds, TTL on a fake clock, thread safety."""

from __future__ import annotations

import threading

import pytest

from writethrough import ConfigError
from writethrough.caches.memory import MemoryCache
from writethrough.protocol import Entry, Kind, LeaseOutcome, WriteOutcome


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def put(cache: MemoryCache, key: str, version: int, payload: bytes = b"x", ttl: float = 60) -> None:
    cache.set(key, Entry.value(version, payload), ttl=ttl)


def test_lru_evicts_the_least_recently_used_entry() -> None:
    cache = MemoryCache(max_entries=2, max_bytes=None)
    put(cache, "a", 1)
    put(cache, "b", 1)
    cache.get("a")  # a is now more recent than b
    put(cache, "c", 1)
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.evictions == 1


def test_byte_bound_evicts_until_under_the_limit() -> None:
    cache = MemoryCache(max_entries=None, max_bytes=3 * (1000 + 300))
    for i in range(10):
        put(cache, f"k{i}", 1, b"x" * 1000)
    assert cache.size_bytes <= 3 * 1300
    assert len(cache) == 3
    assert [k for k in ("k7", "k8", "k9") if cache.get(k) is not None] == ["k7", "k8", "k9"]


def test_ttl_runs_on_the_passed_in_clock() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    put(cache, "k", 1, ttl=10)
    clock.now += 9.9
    assert cache.get("k") is not None
    clock.now += 0.2
    assert cache.get("k") is None
    # An expired entry is gone for every operation, not just reads.
    assert cache.lease("k", b"t", lease_ttl=1)[0] is LeaseOutcome.GRANTED
    assert len(cache) == 1


def test_an_expired_lease_lets_the_next_reader_take_over() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    assert cache.lease("k", b"a", lease_ttl=2)[0] is LeaseOutcome.GRANTED
    assert cache.lease("k", b"b", lease_ttl=2)[0] is LeaseOutcome.BUSY
    clock.now += 2.5
    assert cache.lease("k", b"b", lease_ttl=2)[0] is LeaseOutcome.GRANTED
    assert cache.fill("k", b"a", Entry.value(1, b"late"), ttl=60) is False
    assert cache.fill("k", b"b", Entry.value(1, b"v"), ttl=60) is True


def test_bad_bounds_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        MemoryCache(max_entries=0)
    with pytest.raises(ConfigError):
        MemoryCache(max_bytes=-5)


def test_concurrent_conditional_writes_keep_the_newest_version() -> None:
    cache = MemoryCache()
    versions = list(range(1, 2001))
    put(cache, "k", 0)

    def writer(mine: list[int]) -> None:
        for v in mine:
            outcome = cache.write(
                "k", Kind.VALUE, v, b"%d" % v, ttl=60, tombstone_ttl=5
            )
            assert outcome in (WriteOutcome.STORED_VALUE, WriteOutcome.SUPERSEDED)

    threads = [threading.Thread(target=writer, args=(versions[i::8][::-1],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get("k") == Entry.value(2000, b"2000")
