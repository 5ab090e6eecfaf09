"""Batches (issue 13): get_many / get_many_versioned / put_many / delete_many.

Every cache (memory://, Redis, Redis Cluster) x source (SQLite, PostgreSQL) x store
(sync, asyncio) for the behaviour; real servers throughout (a fault proxy for the failures).
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import writethrough
from conftest import unique_namespace
from tables import pg_table
from writethrough import Table
from writethrough.caches.memory import MemoryCache
from writethrough.caches.redis_codec import MARKER, encode
from writethrough.core import CacheOutcome
from writethrough.errors import InvalidKeyError, InvalidValueError, ReadOnlyTableError
from writethrough.protocol import Entry, Kind, LeaseOutcome, decide_lease, decide_write, visible

UPDATED, INVALIDATED, PENDING = CacheOutcome.UPDATED, CacheOutcome.INVALIDATED, CacheOutcome.PENDING_REPAIR


def test_put_many_get_many_delete_many(make_any_store: Any) -> None:
    store = make_any_store()
    keys = [f"user:{i}" for i in range(30)]
    assert store.get_many(keys) == {}
    written = store.put_many({k: {"n": i} for i, k in enumerate(keys)})
    assert list(written) == keys
    assert {r.cache for r in written.values()} == {UPDATED}
    found = store.get_many_versioned([*keys, "absent"])
    assert set(found) == set(keys)
    for key in keys:
        assert found[key].version == written[key].version
        assert store.get_versioned(key) == found[key]
    hits = store.stats.hits
    assert store.get_many(keys) == {k: {"n": i} for i, k in enumerate(keys)}
    assert store.stats.hits == hits + len(keys)  # one hit counted per key
    deleted = store.delete_many([*keys[:10], "never-written"])
    assert {r.cache for r in deleted.values()} == {INVALIDATED}
    for key in keys[:10]:
        assert deleted[key].version > written[key].version
    assert store.get_many(keys) == {k: {"n": i} for i, k in enumerate(keys) if i >= 10}
    assert store.get_many(keys[:10]) == {}
    again = store.put_many({keys[0]: "back"})
    assert again[keys[0]].version > deleted[keys[0]].version  # a re-insert never goes back
    assert store.get_many([keys[0]]) == {keys[0]: "back"}


def test_misses_are_filled_in_one_load(make_any_store: Any) -> None:
    store = make_any_store()
    keys = [f"k{i}" for i in range(20)]
    store.put_many({k: i for i, k in enumerate(keys)})
    before = store.stats.snapshot()
    assert store.get_many(keys) == {k: i for i, k in enumerate(keys)}
    after = store.stats.snapshot()
    # the cold writes took the writer leases and filled: every read is a hit
    assert after["hits"] - before["hits"] == len(keys)
    store.delete_many(keys)  # tombstones: the next reads miss, lease, load, fill
    before = store.stats.snapshot()
    assert store.get_many(keys) == {}
    after = store.stats.snapshot()
    assert after["misses"] - before["misses"] == len(keys)
    assert after["source_reads"] - before["source_reads"] == len(keys)
    assert after["fills"] - before["fills"] == len(keys)
    assert store.get_many(keys) == {}  # the fills are tombstones: readers go to the DB
    store.put_many({k: -i for i, k in enumerate(keys)})
    assert store.get_many(keys) == {k: -i for i, k in enumerate(keys)}
    if store.cache.name != "memory":  # another process sees the same cache: hits
        other = make_any_store(namespace=store.namespace)
        assert other.get_many(keys) == {k: -i for i, k in enumerate(keys)}
        assert other.stats.hits == len(keys) and other.stats.source_reads == 0


def test_empty_duplicates_and_bad_keys(make_any_store: Any) -> None:
    store = make_any_store()
    assert store.get_many([]) == {} and store.put_many({}) == {} and store.delete_many([]) == {}
    store.put_many({"a": 1, "b": 2})
    assert store.get_many(["a", "a", "b", "a"]) == {"a": 1, "b": 2}
    assert list(store.delete_many(["a", "a"])) == ["a"]
    for bad in (["ok", ""], ["ok", 7], ["ok", "x" * 100_000], ["ok", "\ud800"]):
        with pytest.raises(InvalidKeyError):
            store.get_many(bad)
        with pytest.raises(InvalidKeyError):
            store.delete_many(bad)
    with pytest.raises(InvalidKeyError):
        store.get_many("abc")  # one key, not an iterable of keys
    with pytest.raises(InvalidKeyError):
        store.put_many({"ok": 1, "": 2})
    with pytest.raises(InvalidValueError):
        store.put_many({"ok": 1, "bad": object()})
    with pytest.raises(InvalidValueError):
        store.put_many([("ok", 1)])
    writes = store.stats.source_writes
    assert store.get_many(["ok", "b"]) == {"b": 2}  # nothing was written by the refused batches
    assert store.stats.source_writes == writes
    endless = (f"k{i}" for i in itertools.count())  # never read to its end
    for call in (store.get_many, store.get_many_versioned, store.delete_many):
        with pytest.raises(InvalidKeyError, match="at most 10,000 keys"):
            call(endless)
    with pytest.raises(InvalidKeyError, match="at most 10,000 keys, got 10,001"):
        store.put_many({f"k{i}": i for i in range(10_001)})
    assert store.stats.source_writes == writes and store.get_many(["k1"]) == {}
    assert len(store.get_many([f"k{i}" for i in range(10_000)])) == 0  # the limit itself is fine


def test_invalidate_strategy_and_tombstone_on_empty(make_any_store: Any) -> None:
    inv = make_any_store(strategy="invalidate")
    out = inv.put_many({"a": 1, "b": 2})
    assert {r.cache for r in out.values()} == {INVALIDATED}
    assert inv.get_many(["a", "b"]) == {"a": 1, "b": 2}
    out = inv.put_many({"a": 3})
    assert out["a"].cache is INVALIDATED and inv.get_many(["a", "b"]) == {"a": 3, "b": 2}
    # on_empty="tombstone": cold keys are invalidated, cached ones updated: mixed outcomes
    store = make_any_store(on_empty="tombstone")
    store.put("warm", 0)
    assert store.get("warm") == 0
    out = store.put_many({"warm": 1, "cold": 2})
    assert out["warm"].cache is UPDATED and out["cold"].cache is INVALIDATED
    assert store.get_many(["warm", "cold"]) == {"warm": 1, "cold": 2}


def test_batch_interleaved_with_single_puts(make_store: Any) -> None:
    """Batches and single puts of the same keys race; no read ever goes back in version,
    and the cache ends at the database's version."""
    store = make_store()
    keys = ["hot", "warm", "cold"]
    stop = threading.Event()
    errors: list[BaseException] = []

    def batches() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                store.put_many({k: ("batch", i) for k in keys})
                if i % 5 == 0:
                    store.delete_many(keys[:1])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def singles() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                store.put(keys[i % 3], ("single", i))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=batches), threading.Thread(target=singles)]
    for t in threads:
        t.start()
    seen: dict[str, int] = {}
    try:
        for _ in range(150):
            found = store.get_many_versioned(keys)
            for key, v in found.items():
                assert v.version >= seen.get(key, 0), (key, v, seen)
                seen[key] = v.version
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    store.repair_once()
    for key in keys:
        row = store.source.read(key)
        found = store.get_many_versioned([key]).get(key)
        assert (found.version if found else row.version) == row.version


def test_outbox_rows_written_with_the_batch(make_any_store: Any) -> None:
    store = make_any_store(durability="outbox", repair_worker=False)
    out = store.put_many({"a": 1, "b": 2})
    assert {r.cache for r in out.values()} == {UPDATED}
    assert len(store._outbox_done) == 2  # both rows' cache writes landed: settled
    out = store.delete_many(["a"])
    assert out["a"].cache is INVALIDATED
    assert store.get_many(["a", "b"]) == {"b": 2}
    store.repair_once()
    assert store._outbox_done == []


def test_naive_protocol(make_any_store: Any) -> None:
    store = make_any_store(protocol="naive")
    assert {r.cache for r in store.put_many({"a": 1, "b": 2}).values()} == {UPDATED}
    assert store.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert store.delete_many(["a"])["a"].cache is INVALIDATED
    assert store.get_many(["a", "b"]) == {"b": 2}


# -- failures mid-batch --------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_cache_down_mid_batch(redis_srv: Any, tmp_path: Path, flavour: str, loop_thread: Any) -> None:
    from writethrough.tools.faultproxy import FaultProxy

    port = int(redis_srv.url.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy("127.0.0.1", port) as proxy:
        cache = f"redis://127.0.0.1:{proxy.port}?socket_timeout=0.2&socket_connect_timeout=0.2"
        options: dict[str, Any] = {"namespace": unique_namespace(), "repair_worker": False}
        source = f"sqlite:///{tmp_path}/wt.db"
        if flavour == "sync":
            store = writethrough.open(source=source, cache=cache, **options)
        else:
            from async_view import SyncView

            async def start() -> Any:
                return await writethrough.open_async(source=source, cache=cache, **options)

            store = SyncView(loop_thread.run(start()), loop_thread)
        try:
            first = store.put_many({f"k{i}": i for i in range(10)})
            assert {r.cache for r in first.values()} == {UPDATED}
            proxy.blackhole()
            second = store.put_many({f"k{i}": -i for i in range(5)})  # committed, cache silent
            assert {r.cache for r in second.values()} == {PENDING}
            assert all(second[k].version > first[k].version for k in second)
            # read-your-writes while the cache is down: the pending keys from the DB
            assert store.get_many([f"k{i}" for i in range(5)]) == {f"k{i}": -i for i in range(5)}
            assert store.stats.repairs_recorded == 5
            proxy.pass_through()
            assert store.repair_once() >= 5
            found = store.get_many_versioned([f"k{i}" for i in range(10)])
            assert {k: v.value for k, v in found.items()} == {f"k{i}": (-i if i < 5 else i) for i in range(10)}
            for k in second:
                assert found[k].version == second[k].version  # never an older version
        finally:
            proxy.pass_through()
            store.close()


def test_lost_cache_reply_then_repair(redis_srv: Any, tmp_path: Path) -> None:
    """The cache writes reached Redis but their replies were lost: repairs, then current."""
    from writethrough.tools.faultproxy import FaultProxy

    port = int(redis_srv.url.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy("127.0.0.1", port) as proxy:
        cache = f"redis://127.0.0.1:{proxy.port}?socket_timeout=0.2&socket_connect_timeout=0.2"
        with writethrough.open(source=f"sqlite:///{tmp_path}/wt.db", cache=cache,
                               namespace=unique_namespace(), repair_worker=False) as store:
            store.put_many({"a": 1, "b": 2})
            proxy.lose_replies()
            out = store.put_many({"a": 3, "b": 4})
            assert {r.cache for r in out.values()} == {PENDING}
            proxy.pass_through()
            store.repair_once()
            found = store.get_many_versioned(["a", "b"])
            assert {k: (v.value, v.version) for k, v in found.items()} == {
                "a": (3, out["a"].version), "b": (4, out["b"].version)}


def test_source_failure_changes_nothing(tmp_path: Path) -> None:
    """A key at its maximum version fails the batch: the transaction rolls back."""
    path = tmp_path / "wt.db"
    ns = unique_namespace()
    with writethrough.open(source=f"sqlite:///{path}", cache="memory://", namespace=ns) as store:
        store.put_many({"a": 1, "b": 2})
        with sqlite3.connect(path) as db:
            db.execute("UPDATE writethrough_items SET version = 9223372036854775807 "
                       "WHERE namespace = ? AND key = 'b'", (ns,))
        with pytest.raises(writethrough.SourceError, match="maximum"):
            store.put_many({"a": 10, "b": 20})
        assert store.source.read("a").version == 1  # rolled back
        assert store.get_many(["a"]) == {"a": 1}


@pytest.mark.postgres
def test_postgres_source_failure_changes_nothing(postgres_srv: Any) -> None:
    ns = unique_namespace()
    with writethrough.open(source=postgres_srv.url, cache="memory://", namespace=ns) as store:
        store.put_many({"a": 1, "b": 2})
        import psycopg

        with psycopg.connect(postgres_srv.url, autocommit=True) as conn:
            conn.execute("UPDATE writethrough_items SET version = 9223372036854775807 "
                         "WHERE namespace = %s AND key = 'b'", (ns,))
        with pytest.raises(writethrough.SourceError, match="maximum"):
            store.put_many({"a": 10, "b": 20})
        with pytest.raises(writethrough.SourceError, match="maximum"):
            store.delete_many(["a", "b"])
        assert store.source.read("a").version % 10**19 == 1  # rolled back
        assert store.get_many(["a"]) == {"a": 1}


# -- table sources -----------------------------------------------------------------


@pytest.mark.postgres
def test_pg_table_store_get_many(postgres_srv: Any) -> None:
    with pg_table(postgres_srv.url) as t:
        for i in (1, 2, 3):
            t.sql(f"INSERT INTO {{t}} (id, name, balance) VALUES ({i}, 'n{i}', {i})")
        with writethrough.open(postgres_srv.url, "memory://", namespace=t.namespace,
                               table=Table(t.name, value_column="name")) as store:
            assert store.get_many(["1", "2", "3", "4", "01"]) == {"1": "n1", "2": "n2", "3": "n3", "01": "n1"}
            assert store.get_many(["1", "2"]) == {"1": "n1", "2": "n2"}
            assert store.get_many_versioned(["2"])["2"].version == store.get_versioned("2").version
            with pytest.raises(writethrough.InvalidKeyError):
                store.get_many(["1", "not-a-number"])
            with pytest.raises(ReadOnlyTableError):
                store.put_many({"1": "x"})


def test_sqlite_table_store_get_many(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, version INTEGER NOT NULL DEFAULT 1)")
        db.executemany("INSERT INTO users (id, name) VALUES (?, ?)", [(1, "Ann"), (2, "Bo")])
    with writethrough.open(f"sqlite:///{path}", "memory://", namespace=unique_namespace(),
                           table=Table("users", value_column="name")) as store:
        assert store.get_many(["1", "2", "3", "01"]) == {"1": "Ann", "2": "Bo", "01": "Ann"}
        assert store.get_many(["1", "2"]) == {"1": "Ann", "2": "Bo"}
        assert store.stats.hits == 2
        with pytest.raises(ReadOnlyTableError):
            store.delete_many(["1"])
        from writethrough.observe import instrument

        observed = instrument(store, metrics=False)  # its source wrapper: batches only where the source has them
        assert observed.get_many(["2", "3"]) == {"2": "Bo"}
        with pytest.raises(ReadOnlyTableError):
            observed.put_many({"1": "x"})


# -- the protocol decisions, batch against one by one --------------------------------

_entries = st.one_of(
    st.none(),
    st.builds(Entry.value, st.integers(0, 6), st.sampled_from([b"p", b"q"])),
    st.builds(Entry.tombstone, st.integers(0, 6), st.booleans()),
    st.builds(Entry.lease, st.sampled_from([b"t1", b"t2"]), st.integers(0, 6), st.booleans()),
)
_writes = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from([Kind.VALUE, Kind.TOMBSTONE]),
              st.integers(0, 8), st.sampled_from([None, b"t1", b"w"])),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(start=st.dictionaries(st.sampled_from(["a", "b", "c"]), _entries), writes=_writes,
       floor=st.integers(0, 3))
def test_write_many_decides_each_key_as_write(start: dict[str, Entry | None], writes: list[Any],
                                              floor: int) -> None:
    """A batch of conditional writes (duplicates included) ends in the state, with the
    outcomes, of the protocol's pure decisions applied one by one in order."""
    cache = MemoryCache()
    model: dict[str, Entry | None] = {}
    for key, entry in start.items():
        if entry is not None:
            cache.set(key, entry, ttl=60)
        model[key] = entry
    answers = cache.write_many([(k, kind, v, b"x", tok, 60.0) for k, kind, v, tok in writes],
                               tombstone_ttl=60, floor=floor)
    for (key, kind, version, token), answer in zip(writes, answers, strict=True):
        decision = decide_write(visible(model.get(key), floor), kind, version, b"x", token)
        assert answer is decision.outcome
        if decision.store is not None:
            model[key] = decision.store
    assert cache.get_many(["a", "b", "c"]) == [model.get(k) for k in "abc"]
    leases = cache.lease_many([(k, b"t9") for k in ["a", "b", "c"]], lease_ttl=5, floor=floor)
    for key, answer in zip("abc", leases, strict=True):
        assert not isinstance(answer, Exception)
        assert answer[0] is decide_lease(visible(model.get(key), floor), b"t9", floor).outcome
    assert all(isinstance(a[0], LeaseOutcome) for a in leases if not isinstance(a, Exception))


@pytest.mark.redis
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.dictionaries(st.sampled_from(["a", "b", "c"]), _entries), writes=_writes,
       floor=st.integers(0, 3))
def test_redis_pipeline_agrees_with_memory(redis_client_cache: Any, start: dict[str, Entry | None],
                                           writes: list[Any], floor: int) -> None:
    """The Redis pipeline (Lua per key) and the in-process cache decide every batch alike."""
    redis_cache, prefix = redis_client_cache
    memory = MemoryCache()
    keys = {k: f"{prefix}:{k}" for k in "abc"}
    redis_cache.client.delete(*keys.values())
    redis_cache.renew(keys["a"], b"-", lease_ttl=1)  # makes the lifetime marker if missing
    tag = redis_cache.client.get(MARKER)
    for key, entry in start.items():
        if entry is not None:
            memory.set(keys[key], entry, ttl=60)
            redis_cache.client.set(keys[key], encode(entry, tag), px=60_000)
    batch = [(keys[k], kind, v, b"x", tok, 60.0) for k, kind, v, tok in writes]
    assert redis_cache.write_many(batch, tombstone_ttl=60, floor=floor) == memory.write_many(
        batch, tombstone_ttl=60, floor=floor)
    listed = list(keys.values())
    assert [_comparable(e) for e in redis_cache.get_many(listed)] == [
        _comparable(visible(e, 0)) for e in memory.get_many(listed)]


def _comparable(entry: Entry | None) -> Any:
    return None if entry is None else (entry.kind, entry.version, entry.fresh, entry.payload)


@pytest.fixture
def redis_client_cache(redis_srv: Any) -> Any:
    cache = writethrough.caches.open_cache(f"{redis_srv.url}?socket_timeout=0.5")
    yield cache, f"wt:{unique_namespace()}"
    cache.close()


def test_a_lease_held_elsewhere_is_waited_for_then_read_through(make_any_store: Any) -> None:
    store = make_any_store(lease_wait=0.05)
    store.put_many({"a": 1, "b": 2})
    store.delete_many(["a", "b"])
    store.put_many({"a": 3, "b": 4})  # over tombstones: cold again, filled by the writer
    ckey = "wt:" + store.namespace + ":a"
    store.cache.delete(ckey)
    outcome, _ = store.cache.lease(ckey, b"elsewhere", lease_ttl=5.0)
    assert outcome is LeaseOutcome.GRANTED  # another process is loading "a"
    before = store.stats.snapshot()
    assert store.get_many(["a", "b"]) == {"a": 3, "b": 4}
    after = store.stats.snapshot()
    assert after["lease_waits"] - before["lease_waits"] == 1
    assert after["read_through"] - before["read_through"] == 1
    assert store.cache.get(ckey).kind is Kind.LEASE  # its lease is left alone


@pytest.mark.redis
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.one_of(
           st.none(),
           st.builds(Entry, st.sampled_from(list(Kind)), st.sampled_from([0, 1, 9, 10, 99, 10**19, 5 * 10**19 + 3]),
                     st.booleans(), st.sampled_from([b"", b"p", b"1:2"]))),
           min_size=1, max_size=6),
       floor=st.sampled_from([0, 1, 10, 10**19, 5 * 10**19]), span=st.sampled_from([1, 9, 90, 10**19]))
def test_get_many_hits_is_get_many_within_the_epoch(redis_client_cache: Any, entries: list[Entry | None],
                                                    floor: int, span: int) -> None:
    """The hit path's shortcut: a fresh value within [floor, ceiling) comes back as its
    version's digits and payload; everything else exactly as get_many returns it."""
    cache, prefix = redis_client_cache
    keys = [f"{prefix}:{i}" for i in range(len(entries))]
    cache.renew(keys[0], b"-", lease_ttl=1)
    tag = cache.client.get(MARKER)
    cache.client.delete(*keys)
    for key, entry in zip(keys, entries, strict=True):
        if entry is not None:
            cache.client.set(key, encode(entry, tag), px=60_000)
    ceiling = floor + span
    plain = cache.get_many(keys)
    for entry, got, seen in zip(entries, cache.get_many_hits(keys, floor, ceiling), plain, strict=True):
        if entry is not None and entry.kind is Kind.VALUE and entry.fresh and floor <= entry.version < ceiling:
            assert got == (b"%d" % entry.version, entry.payload)
        else:
            assert got == seen


def test_an_ambiguous_source_failure_repairs_every_key(tmp_path: Path) -> None:
    """The database stayed locked (SourceTimeout: the batch may or may not have committed):
    every key gets a verifying repair, as put records one."""
    path = tmp_path / "wt.db"
    with writethrough.open(source=f"sqlite:///{path}?busy_timeout=0.05", cache="memory://",
                           namespace=unique_namespace(), repair_worker=False) as store:
        store.put_many({"a": 1, "b": 2})
        assert store.get_many(["a", "b"]) == {"a": 1, "b": 2}
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(writethrough.SourceTimeout):
                store.put_many({"a": 10, "b": 20})
            assert store.stats.repairs_recorded == 2
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert len(store.repairs.unsure) == 2  # each key's version is read back, then invalidated
        assert store.repair_once() == 2
        assert store.stats.source_reads >= 2
        assert store.get_many(["a", "b"]) == {"a": 1, "b": 2}
        out = store.put_many({"a": 3})
        assert out["a"].cache is UPDATED and store.get_many(["a"]) == {"a": 3}


@pytest.mark.redis
def test_async_batches_and_single_puts_interleaved(redis_srv: Any, tmp_path: Path) -> None:
    import asyncio

    async def run() -> None:
        async with writethrough.open_async(source=f"sqlite:///{tmp_path}/wt.db",
                                           cache=f"{redis_srv.url}?socket_timeout=0.5",
                                           namespace=unique_namespace()) as store:
            keys = [f"k{i}" for i in range(10)]

            async def reader() -> None:
                # Monotonic for each reader: its next read begins after its last one ended.
                # (Two readers' calls overlap: one may end with an older answer than the
                # other's, which is no violation -- a dict shared by both flaked on that.)
                seen: dict[str, int] = {}
                for _ in range(40):
                    for key, v in (await store.get_many_versioned(keys)).items():
                        assert v.version >= seen.get(key, 0)
                        seen[key] = v.version

            await asyncio.gather(
                *(store.put_many({k: i for k in keys}) for i in range(10)),
                *(store.put(keys[i % 10], -i) for i in range(30)),
                *(store.delete_many(keys[:2]) for _ in range(3)),
                reader(), reader(),
            )
            for key in keys:
                row = await store.source.read(key)
                found = (await store.get_many_versioned([key])).get(key)
                assert (found.version if found else row.version) == row.version

    asyncio.run(run())


class _SingleKeyOnly:
    """A backend without the batch methods (a third party's): the store drives it key by key."""

    def __init__(self, inner: Any, methods: tuple[str, ...]) -> None:
        self.name = inner.name
        for method in methods:
            setattr(self, method, getattr(inner, method))


def test_backends_without_batches_are_driven_key_by_key(tmp_path: Path) -> None:
    from writethrough.sources.sqlite import SQLiteSource

    cache = _SingleKeyOnly(MemoryCache(), ("open", "get", "write", "lease", "fill", "renew", "set",
                                           "delete", "close"))
    ns = unique_namespace()
    source = _SingleKeyOnly(SQLiteSource(str(tmp_path / "wt.db"), namespace=ns),
                            ("open", "read", "write", "delete", "close", "epoch", "bump_epoch"))
    with writethrough.Store(source, cache, namespace=ns) as store:  # type: ignore[arg-type]
        out = store.put_many({"a": 1, "b": 2})
        assert {r.cache for r in out.values()} == {UPDATED}
        assert store.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
        assert store.delete_many(["a"])["a"].cache is INVALIDATED
        assert store.get_many(["a", "b"]) == {"b": 2}
        assert store.get_many(["a", "b"]) == {"b": 2}
        assert store.stats.source_writes == 3


class _OneKeyFails(MemoryCache):
    """Every conditional write of one key fails (a per-key error in the pipeline's answer)."""

    def write_many(self, writes: Any, **kwargs: Any) -> Any:
        from writethrough.errors import CacheServerError

        answers = super().write_many([w for w in writes if not w[0].endswith(":bad")], **kwargs)
        it = iter(answers)
        return [CacheServerError("injected") if w[0].endswith(":bad") else next(it) for w in writes]


def test_mixed_outcomes_through_the_batched_ladder(tmp_path: Path) -> None:
    """Cold keys take writer leases and fill while one key's writes keep failing: the
    failing key goes round the ladder (retries, tombstone) to a repair, the others are
    UPDATED; the failing key is read from the database until its repair is applied."""
    from writethrough.sources.sqlite import SQLiteSource

    ns = unique_namespace()
    source = SQLiteSource(str(tmp_path / "wt.db"), namespace=ns)
    with writethrough.Store(source, _OneKeyFails(), namespace=ns, repair_worker=False) as store:
        out = store.put_many({"a": 1, "bad": 2, "c": 3})
        assert out["a"].cache is UPDATED and out["c"].cache is UPDATED
        assert out["bad"].cache is PENDING
        assert store.stats.cold_writes == 2 and store.stats.repairs_recorded == 1
        assert store.get_many(["a", "bad", "c"]) == {"a": 1, "bad": 2, "c": 3}
        assert store.stats.pending_repair_reads == 1


@pytest.mark.redis
def test_a_database_gone_back_is_detected_by_a_batch_for_every_key(redis_srv: Any, tmp_path: Path) -> None:
    """The SQLite file is copied back (a restore nobody announced): the batch's writes are
    superseded by the lost values in the cache. The first key bumps the epoch; every key of
    the batch is then written again in the new epoch, so another process that has not
    learnt the epoch yet never serves a lost value over an acknowledged write."""
    import shutil

    path, backup = tmp_path / "wt.db", tmp_path / "backup.db"
    cache = f"{redis_srv.url}?socket_timeout=0.5"
    ns = unique_namespace("back")
    keys = ["k1", "k2", "k3"]
    with writethrough.open(source=f"sqlite:///{path}", cache=cache, namespace=ns) as store:
        store.put_many(dict.fromkeys(keys, "v1"))
    shutil.copy(path, backup)
    with writethrough.open(source=f"sqlite:///{path}", cache=cache, namespace=ns) as store:
        store.put_many(dict.fromkeys(keys, "v2"))
        store.put_many(dict.fromkeys(keys, "lost"))
        assert store.get_many(keys) == dict.fromkeys(keys, "lost")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, path)
    with writethrough.open(source=f"sqlite:///{path}", cache=cache, namespace=ns,
                           repair_worker=False, epoch_refresh=3600) as other, \
            writethrough.open(source=f"sqlite:///{path}", cache=cache, namespace=ns) as store:
        out = store.put_many(dict.fromkeys(keys, "new"))
        assert store.stats.epoch_bumps_on_evidence == 1
        assert {r.cache for r in out.values()} <= {UPDATED, INVALIDATED}
        assert all(r.version >= store._epoch_floor > 0 for r in out.values())  # the new epoch
        assert other.get_many(keys) == dict.fromkeys(keys, "new"), "a lost value served"
        assert store.get_many(keys) == dict.fromkeys(keys, "new")
