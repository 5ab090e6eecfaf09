"""Garbage in the cache (issue 12): whatever sits under the library's prefix -- another
program's keys, a corrupted value, a planted entry -- is a miss, replaced by the next
write or fill; it never reaches the caller as an exception, never trips the circuit
breaker, never pins the key in PENDING_REPAIR, and never stops other keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import writethrough
from conftest import unique_namespace
from writethrough import CacheOutcome, Store
from writethrough.caches.redis_codec import MARKER, encode
from writethrough.protocol import Entry
from writethrough.repair import BreakerState

ROOMY = "socket_timeout=0.5&socket_connect_timeout=0.5"


@pytest.fixture
def store(redis_srv: Any, tmp_path: Path) -> Iterator[Store]:
    with writethrough.open(source=f"sqlite:///{tmp_path}/g.db", cache=f"{redis_srv.url}?{ROOMY}",
                           namespace=unique_namespace("garbage"), breaker_threshold=2) as s:
        yield s


def plant(store: Store, key: str, raw: Any, *, as_hash: bool = False) -> None:
    client: redis.Redis = store.cache.client  # type: ignore[attr-defined]
    ckey = f"wt:{store.namespace}:{key}"
    client.delete(ckey)
    if as_hash:
        client.hset(ckey, "field", "value")
    elif raw is not None:
        client.set(ckey, raw)


def marker(store: Store) -> bytes:
    found: bytes = store.cache.client.get(MARKER)  # type: ignore[attr-defined]
    return found


GARBAGE = {
    "no colon": b"V1garbage-without-colon",
    "empty": b"",
    "not a version": b"V10123456789abcdefxyz:\"v\"",
    "leading zeros": b"V10123456789abcdef007:\"v\"",
    "a sign": b"V10123456789abcdef-7:\"v\"",
    "unknown kind": b"Q10123456789abcdef7:\"v\"",
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("name", [*GARBAGE, "a hash, not a string"])
def test_garbage_entries_are_misses_and_get_replaced(store: Store, name: str) -> None:
    store.put("k", {"v": 1})
    plant(store, "k", GARBAGE.get(name), as_hash=name.startswith("a hash"))
    assert store.get("k") == {"v": 1}, "a miss: read from the database"
    assert store.get("k") == {"v": 1}
    assert store.stats.hits >= 1, "the fill replaced the garbage"
    assert store.put("k", {"v": 2}).cache is CacheOutcome.UPDATED
    assert store.get("k") == {"v": 2}
    assert store.breaker.state is BreakerState.CLOSED and not store.repairs
    assert store.stats.cache_write_failures == 0


@pytest.mark.parametrize("payload", [b"not json", b"\xff\xfe\xfd", b'{"unterminated": '])
def test_a_well_formed_entry_whose_payload_does_not_decode_is_dropped(store: Store, payload: bytes) -> None:
    store.put("k", {"v": 1})
    version = store.get_versioned("k").version  # type: ignore[union-attr]
    plant(store, "k", encode(Entry.value(version + 5, payload), marker(store)))
    assert store.get("k") == {"v": 1}, "no JSONDecodeError reaches the caller"
    assert store.get_versioned("k") == writethrough.Versioned({"v": 1}, version)
    assert store.stats.cache_data_errors >= 1
    assert store.put("k", {"v": 2}).cache is CacheOutcome.UPDATED
    assert store.get("k") == {"v": 2}


@pytest.mark.parametrize("planted", [2**63, 2**64 + 5, 10**19 - 1, 2**53 + 1])
def test_a_planted_version_beyond_the_bigint_range_is_not_served(store: Store, planted: int) -> None:
    store.put("k", {"v": 1})
    plant(store, "k", encode(Entry.value(planted, b'"planted"'), marker(store)))
    if planted <= 2**63 - 1:  # a valid version the DB could have given: the cache is trusted
        assert store.get("k") == "planted"
        return
    assert store.get("k") == {"v": 1}, "beyond 2**63 - 1 in epoch 0: not a row version"
    result = store.put("k", {"v": 2})
    assert result.cache is CacheOutcome.UPDATED
    assert store.get("k") == {"v": 2}, "the planted entry did not supersede the write"


def test_garbage_never_trips_the_breaker_for_other_keys(store: Store) -> None:
    for i in range(20):
        store.put(f"k{i}", i)
        plant(store, f"k{i}", GARBAGE["binary"])
    for i in range(20):
        assert store.get(f"k{i}") == i
    assert store.breaker.state is BreakerState.CLOSED and store.breaker.opened == 0
    store.put("other", "x")
    assert store.get("other") == "x" and store.stats.hits >= 1


def test_a_row_the_serializer_cannot_read_is_a_source_data_error(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "bad.db"
    with writethrough.open(source=f"sqlite:///{path}", namespace="rows") as s:
        s.put("k", {"v": 1})
        with sqlite3.connect(path) as conn:  # another program wrote the row
            conn.execute("UPDATE writethrough_items SET value = ?", (b"not json",))
        s.cache.delete("wt:rows:k")
        with pytest.raises(writethrough.SourceDataError, match="serializer cannot read"):
            s.get("k")
        s.put("k", {"v": 2})
        assert s.get("k") == {"v": 2}
