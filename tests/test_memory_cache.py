"""The in-process cache: LRU bounds, TTL on a fake clock, thread safety."""

from __future__ import annotations

import random
import threading
import tracemalloc

import orjson
import pytest

from writethrough import ConfigError
from writethrough.caches.memory import ENTRY_OVERHEAD, MemoryCache, entry_bytes
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
    per_entry = 2 + 1000 + ENTRY_OVERHEAD
    cache = MemoryCache(max_entries=None, max_bytes=3 * per_entry)
    for i in range(10):
        put(cache, f"k{i}", 1, b"x" * 1000)
    assert cache.size_bytes == 3 * per_entry
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


def _expected_bytes(cache: MemoryCache) -> int:
    """Key UTF-8 bytes + payload bytes + the documented fixed overhead, per entry held."""
    return sum(
        len(key.encode("utf-8")) + len(item.entry.payload) + ENTRY_OVERHEAD
        for key, item in cache._data.items()
    )


def test_bytes_accounted_are_key_utf8_plus_payload_plus_the_fixed_overhead() -> None:
    clock = FakeClock()
    cache = MemoryCache(max_entries=None, max_bytes=None, clock=clock)
    put(cache, "ascii", 1, b"12345")
    put(cache, "ключ", 1, b"x" * 30)  # 4 characters, 8 UTF-8 bytes
    put(cache, "😀", 1, b"")  # 1 character, 4 UTF-8 bytes
    assert cache.size_bytes == (5 + 5) + (8 + 30) + (4 + 0) + 3 * ENTRY_OVERHEAD
    assert entry_bytes("ключ", b"x" * 30) == 8 + 30 + ENTRY_OVERHEAD
    # Overwrites, tombstones, leases, deletes, expiry and eviction keep it exact.
    rng = random.Random(7)
    keys = ["a", "bé", "ключ", "😀x", "k" * 50]
    for step in range(3000):
        key = rng.choice(keys)
        op = rng.randrange(6)
        if op == 0:
            put(cache, key, step, b"v" * rng.randrange(200), ttl=rng.uniform(0.5, 5))
        elif op == 1:
            cache.write(key, Kind.TOMBSTONE, step, b"", ttl=60, tombstone_ttl=1)
        elif op == 2:
            outcome, _ = cache.lease(key, b"tok%d" % step, lease_ttl=1)
            if outcome is LeaseOutcome.GRANTED:
                cache.fill(key, b"tok%d" % step, Entry.value(step, b"f" * 40), ttl=3)
        elif op == 3:
            cache.delete(key)
        elif op == 4:
            cache.evict(key)
        else:
            clock.now += rng.uniform(0, 1)
            cache.lease(key, b"t", lease_ttl=0.5)  # drops an expired entry on the way
        assert cache.size_bytes == _expected_bytes(cache)


def test_max_bytes_is_never_exceeded_and_a_too_large_entry_is_not_kept() -> None:
    limit = 4 * (1 + 100 + ENTRY_OVERHEAD)
    cache = MemoryCache(max_entries=None, max_bytes=limit)
    rng = random.Random(3)
    for step in range(2000):
        put(cache, f"{step % 37}", step, b"p" * rng.randrange(300))
        assert cache.size_bytes <= limit
        assert cache.size_bytes == _expected_bytes(cache)
    put(cache, "big", 1, b"b" * 100)
    assert cache.get("big") is not None
    # Larger than the whole bound: not kept, and the older value is gone too (a miss, not stale).
    put(cache, "big", 2, b"b" * limit)
    assert cache.get("big") is None
    assert cache.size_bytes <= limit


def test_payloads_are_kept_at_their_exact_size_not_in_orjsons_buffer() -> None:
    cache = MemoryCache(max_entries=None, max_bytes=None)
    assert len(orjson.dumps({"n": "x" * 16, "i": 0})) == 30
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):  # a write-through passes serializer.dumps(value) straight in
            put(cache, f"user:{i}", 1, b"")  # a cached value to write through over
            outcome = cache.write(
                f"user:{i}", Kind.VALUE, 2, orjson.dumps({"n": "x" * 16, "i": i % 10}),
                ttl=60, tombstone_ttl=5,
            )  # fmt: skip
            assert outcome is WriteOutcome.STORED_VALUE
        cache.lease("filled", b"t", lease_ttl=5)
        cache.fill("filled", b"t", Entry.value(1, orjson.dumps({"filled": 1})), ttl=5)
        cache.set("set", Entry.value(1, orjson.dumps({"set": 1})), ttl=5)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Kept in orjson's ~4 KB buffers this would be > 4,000 bytes per entry.
    assert grown / 2002 < 600, grown / 2002
    assert cache.get("filled") == Entry.value(1, b'{"filled":1}')
    assert cache.get("set") == Entry.value(1, b'{"set":1}')
