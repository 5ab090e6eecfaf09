"""The behaviour suite: runs on every cache x source (see conftest)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import writethrough
from writethrough import CacheOutcome, Store

MakeStore = Callable[..., Store]


def evict(store: Store, key: str) -> None:
    """Drop the key as memory pressure or expiry would (a bare DEL on the server)."""
    store.cache.delete(f"wt:{store.namespace}:{key}")


def warm(store: Store, key: str, value: object) -> None:
    store.put(key, value)
    store.get(key)


def test_put_get_delete_round_trip_with_versions_from_the_database(make_any_store: MakeStore) -> None:
    store = make_any_store()
    first = store.put("user:42", {"name": "Alice", "balance": 400})
    assert first.version == 1
    assert store.get("user:42") == {"name": "Alice", "balance": 400}
    second = store.put("user:42", {"name": "Alice", "balance": 500})
    assert second.version == 2
    assert store.get("user:42") == {"name": "Alice", "balance": 500}
    deleted = store.delete("user:42")
    assert deleted.version == 3
    assert store.get("user:42") is None
    assert store.get("user:42", "gone") == "gone"
    again = store.put("user:42", {"name": "Bob"})
    assert again.version == 4, "a re-insert after a delete never goes back"
    assert store.get_versioned("user:42") == writethrough.Versioned({"name": "Bob"}, 4)


def test_write_through_makes_the_next_read_a_hit(make_any_store: MakeStore) -> None:
    store = make_any_store(strategy="write-through")
    warm(store, "k", 1)
    before = store.stats.snapshot()
    result = store.put("k", 2)
    assert result.cache is CacheOutcome.UPDATED
    assert store.get("k") == 2
    after = store.stats.snapshot()
    assert after["hits"] - before["hits"] == 1
    assert after["source_reads"] == before["source_reads"]


def test_invalidate_costs_one_miss_then_refills(make_any_store: MakeStore) -> None:
    store = make_any_store(strategy="invalidate")
    warm(store, "k", 1)
    before = store.stats.snapshot()
    assert store.put("k", 2).cache is CacheOutcome.INVALIDATED
    assert store.get("k") == 2
    assert store.get("k") == 2
    after = store.stats.snapshot()
    assert after["source_reads"] - before["source_reads"] == 1
    assert after["misses"] - before["misses"] == 1
    assert after["hits"] - before["hits"] == 1


def test_write_through_on_a_cold_key_is_a_hit_after_a_writer_lease(make_any_store: MakeStore) -> None:
    """The seed's promise for new keys: create, then read -- a hit. The cost: one more
    DB read (the row read back under the writer's lease) and one more cache call."""
    store = make_any_store(strategy="write-through")
    assert store.put("cold", 1).cache is CacheOutcome.UPDATED
    assert store.stats.source_reads == 1 and store.stats.cold_writes == 1
    assert store.get("cold") == 1
    assert store.stats.hits == 1 and store.stats.source_reads == 1
    cheap = make_any_store(strategy="write-through", on_empty="tombstone")
    assert cheap.put("cold", 1).cache is CacheOutcome.INVALIDATED
    assert cheap.stats.source_reads == 0
    assert cheap.get("cold") == 1
    assert cheap.stats.source_reads == 1 and cheap.stats.misses == 1


def test_an_older_write_arriving_late_is_rejected(make_any_store: MakeStore) -> None:
    """Race 2 at the cache: v2 then v1 arrive; the cache keeps v2."""
    store = make_any_store()
    warm(store, "k", "v1")
    v2 = store.put("k", "v2").version
    ckey = f"wt:{store.namespace}:k"
    outcome = store.cache.write(
        ckey, writethrough.protocol.Kind.VALUE, v2 - 1, b'"v1"', ttl=60, tombstone_ttl=10
    )
    assert outcome is writethrough.protocol.WriteOutcome.SUPERSEDED
    assert store.get_versioned("k") == writethrough.Versioned("v2", v2)


def test_a_tombstone_blocks_an_older_fill(make_any_store: MakeStore) -> None:
    store = make_any_store(strategy="invalidate")
    warm(store, "k", "v1")
    store.put("k", "v2")
    ckey = f"wt:{store.namespace}:k"
    from writethrough.protocol import Entry

    assert store.cache.fill(ckey, b"not-a-lease", Entry.value(1, b'"v1"'), ttl=60) is False
    assert store.get("k") == "v2"


def test_entries_expire_after_the_ttl(make_any_store: MakeStore) -> None:
    import time

    store = make_any_store(ttl=0.3, ttl_jitter=0.0)
    warm(store, "k", 1)
    assert store.cache.get(f"wt:{store.namespace}:k") is not None
    time.sleep(0.45)
    assert store.cache.get(f"wt:{store.namespace}:k") is None
    assert store.get("k") == 1


def test_namespaces_are_separate(make_any_store: MakeStore) -> None:
    a = make_any_store()
    b = make_any_store()
    a.put("k", "a")
    b.put("k", "b")
    assert a.get("k") == "a" and b.get("k") == "b"


def test_naive_protocol_sets_and_deletes_without_versions_checks(make_any_store: MakeStore) -> None:
    store = make_any_store(protocol="naive")
    assert store.put("k", 1).cache is CacheOutcome.UPDATED
    assert store.get("k") == 1
    assert store.stats.source_reads == 0, "naive write-through SETs even a cold key"
    invalidating = make_any_store(protocol="naive", strategy="invalidate")
    assert invalidating.put("k", 1).cache is CacheOutcome.INVALIDATED


@pytest.mark.parametrize("strategy", ["write-through", "invalidate"])
def test_reading_a_missing_key_returns_the_default(make_any_store: MakeStore, strategy: str) -> None:
    store = make_any_store(strategy=strategy)
    assert store.get("never") is None
    assert store.get("never", 0) == 0
    assert store.get_versioned("never") is None


def test_apply_write_keeps_the_cache_current_for_a_write_the_application_committed(
    make_any_store: MakeStore,
) -> None:
    store = make_any_store(strategy="write-through")
    warm(store, "k", {"v": 1})
    # The application wrote version 7 of the row in its own transaction (say, an ORM).
    result = store.apply_write("k", 7, {"v": 7})
    assert (result.version, result.cache) == (7, CacheOutcome.UPDATED)
    assert store.get_versioned("k") == writethrough.Versioned({"v": 7}, 7)
    # A late, older after-commit call never goes back.
    late = store.apply_write("k", 5, {"v": 5})
    assert late.cache is CacheOutcome.UPDATED  # superseded: the key holds a newer version
    assert store.get_versioned("k") == writethrough.Versioned({"v": 7}, 7)
    gone = store.apply_delete("k", 8)
    assert gone.cache is CacheOutcome.INVALIDATED
    assert store.stats.source_writes == 1, "apply_* never write the database"


@pytest.mark.parametrize("bad", [0, -1, 1 << 63, True, 1.0, "3", None])
def test_apply_write_refuses_a_version_the_database_could_not_have_given(
    make_store: MakeStore, bad: object
) -> None:
    store = make_store()
    with pytest.raises(writethrough.InvalidVersionError):
        store.apply_write("k", bad, 1)  # type: ignore[arg-type]
    with pytest.raises(writethrough.InvalidVersionError):
        store.apply_delete("k", bad)  # type: ignore[arg-type]
    assert store.stats.cache_writes == 0
