"""The guarantee where production breaks things (issue 9), on real servers.

"Once put/delete returned UPDATED or INVALIDATED, no read in any process returns an
older version": across a Redis restart that reloads a snapshot, a failover to a replica
that missed the newest writes, a database restored from a backup, a commit whose reply
was lost, a tombstone on an empty key, versions past 2**53, a database read slower than
the lease, more read floors than fit in memory, and a circuit breaker whose probe never
reported. Each test here failed on the code before this change.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import writethrough
from conftest import unique_namespace
from servers import ServerUnavailable, own_redis, unavailable, wait_replica_synced
from writethrough import CacheOutcome, CacheUnavailable, SourceError
from writethrough.caches.memory import MemoryCache
from writethrough.cli import main as cli_main
from writethrough.core import Settings
from writethrough.protocol import Kind, WriteOutcome
from writethrough.repair import BreakerState, CircuitBreaker
from writethrough.sources.sqlite import SQLiteSource
from writethrough.store import AsyncStore, Store
from writethrough.tools.faultproxy import FaultProxy
from writethrough.tools.faults import FaultyCache, FaultySource, times

ROOMY = "socket_timeout=0.5&socket_connect_timeout=0.5"


def slow(seconds: float) -> Any:
    """An injected delay (and no failure) for every call."""
    return lambda: time.sleep(seconds)


@pytest.fixture
def redis_own() -> Iterator[Any]:
    try:
        with own_redis() as server:
            yield server
    except ServerUnavailable as exc:
        unavailable(f"Redis: {exc}")


def read_until_stable(store: Store, key: str, tries: int = 5) -> list[Any]:
    """Read ``key`` a few times (the first read after a restart may meet a dead connection)."""
    return [store.get(key) for _ in range(tries)]


# -- 1. Redis restart with persistence ---------------------------------------------------


def test_a_redis_restart_from_a_snapshot_never_serves_what_was_overwritten(
    redis_own: Any, tmp_path: Path
) -> None:
    url = f"{redis_own.url}?{ROOMY}"
    db = f"sqlite:///{tmp_path}/wt.db"
    with writethrough.open(source=db, cache=url, namespace="snap") as store:
        store.put("k", "v1")
        assert store.put("k", "v2").cache is CacheOutcome.UPDATED
        with redis_own.client() as c:
            c.save()  # the stock save schedule would take this snapshot on its own
        assert store.put("k", "v3").cache is CacheOutcome.UPDATED
        redis_own.crash()
        redis_own.start()  # loads the snapshot: the cache went back to v2
        with redis_own.client() as c:
            assert c.exists("wt:snap:k"), "the snapshot's entry is back on the server"
        assert set(read_until_stable(store, "k")) == {"v3"}
    with writethrough.open(source=db, cache=url, namespace="snap") as other:  # another process
        assert set(read_until_stable(other, "k")) == {"v3"}
        assert other.put("k", "v4").cache is CacheOutcome.UPDATED
        assert other.get("k") == "v4"


# -- 2. Failover to a lagging replica ----------------------------------------------------


def test_a_failover_to_a_replica_that_missed_a_write_never_serves_the_older_value(
    tmp_path: Path,
) -> None:
    try:
        primary_cm, replica_cm = own_redis(), None
        primary = primary_cm.__enter__()
    except ServerUnavailable as exc:
        unavailable(f"Redis: {exc}")
    link = FaultProxy("127.0.0.1", primary.port).start()  # the replication link
    front = FaultProxy("127.0.0.1", primary.port).start()  # the service's stable address
    try:
        replica_cm = own_redis("--replicaof", "127.0.0.1", str(link.port))
        replica = replica_cm.__enter__()
        url = f"redis://127.0.0.1:{front.port}/0?{ROOMY}"
        db = f"sqlite:///{tmp_path}/wt.db"
        with writethrough.open(source=db, cache=url, namespace="fo") as store:
            store.put("k", "v1")
            assert store.put("k", "v2").cache is CacheOutcome.UPDATED
            wait_replica_synced(primary, replica)
            link.blackhole()  # the replica stops receiving
            assert store.put("k", "v3").cache is CacheOutcome.UPDATED  # on the old primary only
            with replica.client() as c:
                c.execute_command("REPLICAOF", "NO", "ONE")  # promoted, as Sentinel would
                assert c.exists("wt:fo:k"), "the promoted replica holds the v2 entry"
            front.switch(replica.port)
            assert set(read_until_stable(store, "k")) == {"v3"}
        with writethrough.open(source=db, cache=url, namespace="fo") as other:
            assert set(read_until_stable(other, "k")) == {"v3"}
    finally:
        front.stop()
        link.stop()
        if replica_cm is not None:
            replica_cm.__exit__(None, None, None)
        primary_cm.__exit__(None, None, None)


def test_failing_back_to_the_first_primary_never_revives_its_old_entries(tmp_path: Path) -> None:
    """A promoted server keeps its run_id: a primary that comes back (fail-back) must not
    make the entries of its first reign current again -- the tag includes the replication
    id, which every promotion renews."""
    from writethrough.tools.redisproc import RedisProcess

    try:
        a = RedisProcess(save=False)
    except writethrough.ConfigError as exc:
        unavailable(f"Redis: {exc}")
    link = FaultProxy("127.0.0.1", a.port).start()
    front = FaultProxy("127.0.0.1", a.port).start()
    b = RedisProcess(save=False, replica_of=link.port)

    def synced(replica: RedisProcess, primary: RedisProcess) -> None:
        deadline = time.monotonic() + 20
        while not replica.synced_with(primary) and time.monotonic() < deadline:
            time.sleep(0.02)

    url = f"redis://127.0.0.1:{front.port}/0?{ROOMY}"
    try:
        with writethrough.open(source=f"sqlite:///{tmp_path}/wt.db", cache=url, namespace="fb") as store:
            store.put("j", "j1")  # A's first reign: cached on A, replicated to B
            synced(b, a)
            link.blackhole()
            assert store.put("j", "j2").cache is CacheOutcome.UPDATED  # on A only
            b.promote()  # fail over to B, which holds j1 of A's first reign (not current)
            front.switch(b.port)
            assert set(read_until_stable(store, "other")) == {None}  # j is left alone
            link.switch(b.port)
            link.pass_through()
            a.follow(link.port)  # A follows B and takes its data, j1 of A's first reign too
            synced(a, b)
            link.blackhole()
            a.promote()  # fail back to A: the same process, so the same run_id
            front.switch(a.port)
            assert set(read_until_stable(store, "j")) == {"j2"}
    finally:
        front.stop()
        link.stop()
        b.destroy()
        a.destroy()


# -- 3. A database restored from a backup -------------------------------------------------


def test_a_restored_sqlite_database_orders_after_the_lost_writes_once_its_epoch_is_bumped(
    redis_srv: Any, tmp_path: Path
) -> None:
    path = tmp_path / "app.db"
    url, cache = f"sqlite:///{path}", f"{redis_srv.url}?{ROOMY}"
    ns = unique_namespace("restore")
    with writethrough.open(source=url, cache=cache, namespace=ns) as store:
        store.put("k", "v1")
        store.put("k", "v2")
    shutil.copy(path, tmp_path / "backup.db")  # last night's backup, at v2
    with writethrough.open(source=url, cache=cache, namespace=ns) as store:
        store.put("k", "v3")
        assert store.put("k", "v4").cache is CacheOutcome.UPDATED
    shutil.copy(tmp_path / "backup.db", path)  # the disk died; restored: v3 and v4 are lost
    assert cli_main(["epoch", "--bump", "--source", url]) == 0  # the runbook step
    with writethrough.open(source=url, cache=cache, namespace=ns) as store:
        assert store.get("k") == "v2", "the lost v4 is not served"
        result = store.put("k", "v3 again")
        assert result.cache is CacheOutcome.UPDATED
        assert store.get("k") == "v3 again"
        assert result.version > 10**19, "the new epoch orders after every lost version"


def test_a_postgres_restore_to_a_new_timeline_is_detected_without_a_command(
    redis_srv: Any, tmp_path: Path
) -> None:
    from restorable import RestorableCluster

    try:
        cluster = RestorableCluster()
    except ServerUnavailable as exc:
        unavailable(f"PostgreSQL: {exc}")
    cache = f"{redis_srv.url}?{ROOMY}"
    ns = unique_namespace("pgrestore")
    try:
        with writethrough.open(source=cluster.url, cache=cache, namespace=ns) as store:
            store.put("k", "v1")
            store.put("k", "v2")
        cluster.backup()  # a base backup at v2
        with writethrough.open(source=cluster.url, cache=cache, namespace=ns) as store:
            store.put("k", "v3")
            assert store.put("k", "v4").cache is CacheOutcome.UPDATED
        cluster.restore()  # point-in-time recovery to the backup: a new timeline
        with writethrough.open(source=cluster.url, cache=cache, namespace=ns) as store:
            assert store.get("k") == "v2"
            assert store.put("k", "v3 again").cache is CacheOutcome.UPDATED
            assert store.get("k") == "v3 again"
    finally:
        cluster.destroy()


# -- 4. A lost commit reply -----------------------------------------------------------------


def test_a_commit_whose_reply_was_lost_is_repaired(postgres_srv: Any, redis_srv: Any) -> None:
    target = psycopg.conninfo.conninfo_to_dict(postgres_srv.url)
    proxy = FaultProxy(str(target.get("host") or "127.0.0.1"), int(target.get("port") or 5432)).start()
    ns = unique_namespace("lost")
    via = postgres_srv.url.replace(f":{target.get('port') or 5432}/", f":{proxy.port}/")
    assert via != postgres_srv.url
    via += "?statement_timeout_ms=500"  # a lost statement has run or died 0.5 s after the error
    direct = writethrough.open(source=postgres_srv.url, cache=f"{redis_srv.url}?{ROOMY}",
                               namespace=ns, repair_worker=False)
    try:
        with writethrough.open(source=via, cache=f"{redis_srv.url}?{ROOMY}", namespace=ns,
                               repair_worker=False) as store:
            store.put("k", "v1")
            assert store.get("k") == "v1"
            proxy.lose_replies()
            errors: list[BaseException] = []

            def put() -> None:
                try:
                    store.put("k", "v2")
                except BaseException as exc:
                    errors.append(exc)

            writer = threading.Thread(target=put)
            writer.start()
            deadline = time.monotonic() + 10
            while direct.source.read("k").version < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert direct.source.read("k").payload == b'"v2"', "the DB committed v2"
            proxy.reset()  # the connection dies before the reply gets through
            writer.join(10)
            assert len(errors) == 1 and isinstance(errors[0], SourceError)
            proxy.pass_through()
            assert direct.get("k") == "v1", "before the repair: another process reads v1"
            assert store.repair_once() == 0, "within the statement timeout: not yet"
            time.sleep(1.6)
            assert store.repair_once() == 1
            assert direct.get("k") == "v2", "after it: the committed v2"
    finally:
        direct.close()
        proxy.stop()


# -- 5. A tombstone landing on an empty key is never fresh ------------------------------------


def test_an_invalidation_on_an_empty_key_does_not_let_an_older_write_store_its_value(
    redis_srv: Any,
) -> None:
    cache = writethrough.caches.open_cache(f"{redis_srv.url}?{ROOMY}")
    key = f"wt:{unique_namespace('t5')}:k"
    try:
        cache.set(key, writethrough.protocol.Entry.value(4, b'"v4"'), ttl=60)  # v4 acknowledged
        cache.delete(key)  # evicted
        assert cache.write(key, Kind.TOMBSTONE, 2, b"", ttl=60, tombstone_ttl=10) \
            is WriteOutcome.STORED_TOMBSTONE  # an outbox repair / listener invalidation of v2
        late = cache.write(key, Kind.VALUE, 3, b'"v3"', ttl=60, tombstone_ttl=10)
        assert late is not WriteOutcome.STORED_VALUE, "v3 < the acknowledged v4"
        entry = cache.get(key)
        assert entry is not None and entry.kind is not Kind.VALUE
    finally:
        cache.close()


# -- 6. Versions beyond 2**53 ----------------------------------------------------------------


@pytest.mark.parametrize("start", [2**53 - 1, 2**53, 2**63 - 3])
def test_versions_past_two_to_the_53_compare_exactly(redis_srv: Any, tmp_path: Path, start: int) -> None:
    path = tmp_path / "big.db"
    with writethrough.open(source=f"sqlite:///{path}", cache=f"{redis_srv.url}?{ROOMY}",
                           namespace=unique_namespace("big")) as store:
        store.put("k", "old")
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE writethrough_items SET version = ?", (start,))
        store.cache.delete(f"wt:{store.namespace}:k")
        assert store.get_versioned("k") == writethrough.Versioned("old", start)  # filled
        result = store.put("k", "new")
        assert (result.version, result.cache) == (start + 1, CacheOutcome.UPDATED)
        reads = store.stats.source_reads
        assert store.get("k") == "new"
        assert store.stats.source_reads == reads, "a hit: the cache took start + 1 over start"


def test_a_version_at_the_bigint_maximum_is_refused_not_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "max.db"
    with writethrough.open(source=f"sqlite:///{path}") as store:
        store.put("k", "old")
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE writethrough_items SET version = ?", (2**63 - 1,))
        with pytest.raises(SourceError, match="maximum"):
            store.put("k", "new")
        assert store.get("k") == "old"


# -- 7. A database read slower than the lease --------------------------------------------------


@pytest.mark.parametrize("cache_kind", ["memory", "redis"])
def test_a_read_slower_than_the_lease_still_fills_the_cache(
    redis_srv: Any, tmp_path: Path, cache_kind: str
) -> None:
    url = "memory://" if cache_kind == "memory" else f"{redis_srv.url}?{ROOMY}"
    source = FaultySource(SQLiteSource(str(tmp_path / "slow.db"), namespace="slow"))
    source.inner.write("k", b'"v1"')
    cache = writethrough.caches.open_cache(url)
    settings = Settings(lease_ttl=0.5, repair_interval=0.02)
    with Store(source, cache, namespace=unique_namespace("slow"), settings=settings) as store:
        source.fail("read", slow(1.8))  # three and a half lease lifetimes
        assert store.get("k") == "v1"
        source.heal()
        assert store.stats.fills == 1 and store.stats.lease_renewals >= 2
        assert store.get("k") == "v1"
        assert store.stats.hits == 1, "the slow key is cached, not read from the DB forever"


# -- 8. Monotonic reads past the floor capacity ------------------------------------------------


def test_monotonic_reads_hold_past_ten_thousand_floors(tmp_path: Path) -> None:
    shared = MemoryCache(max_entries=None, max_bytes=None)
    path = str(tmp_path / "floors.db")
    ns = unique_namespace("floors")
    reader_cache = FaultyCache(shared)
    with Store(SQLiteSource(path, namespace=ns), shared, namespace=ns,
               repair_worker=False) as writer, \
         Store(SQLiteSource(path, namespace=ns), reader_cache, namespace=ns,  # type: ignore[arg-type]
               repair_worker=False) as reader:
        writer.put("k", "v1")
        assert reader.get("k") == "v1"  # cached
        broken = FaultyCache(shared)
        writer.cache = broken  # type: ignore[assignment]
        broken.fail("write", CacheUnavailable("injected"))
        assert writer.put("k", "v2").cache is CacheOutcome.PENDING_REPAIR  # the cache keeps v1
        writer.cache = shared
        reader_cache.fail("get", times(2, CacheUnavailable("injected")))  # a blip: to the DB
        assert reader.get("k") == "v2"
        for i in range(10_050):  # more keys read from the DB than floors fit in memory
            assert reader.get(f"other:{i}") is None
        assert "k" not in reader.floors, "the floor left memory..."
        assert reader.stats.floors_pushed >= 1, "...as a tombstone in the cache"
        assert reader.get("k") == "v2", "never back to v1"


# -- 9. The circuit breaker never wedges half-open ---------------------------------------------


def test_a_probe_that_never_reports_is_given_to_the_next_caller() -> None:
    now = [0.0]
    breaker = CircuitBreaker(threshold=1, reset_after=1.0, clock=lambda: now[0])
    breaker.failure()
    assert not breaker.allow()
    now[0] = 1.5
    assert breaker.allow(), "half-open: one probe"
    assert not breaker.allow(), "one at a time"
    now[0] = 2.6  # the probe never reported (a cancelled task, a caller with nothing to send)
    assert breaker.allow(), "its time is up: the next caller probes"
    breaker.release()
    assert breaker.allow(), "a released probe is free at once"
    breaker.success()
    assert breaker.state is BreakerState.CLOSED


def test_the_outbox_drain_does_not_take_the_probe(tmp_path: Path) -> None:
    cache = FaultyCache(MemoryCache())
    source = SQLiteSource(str(tmp_path / "ob.db"), namespace="ob")
    settings = Settings(durability="outbox", breaker_threshold=1, breaker_reset=0.05)
    with Store(source, cache, namespace="ob", settings=settings, repair_worker=False) as store:
        store.put("warm", 1)
        cache.fail("write", times(1, CacheUnavailable("injected")))
        assert store.put("k", 1).cache is CacheOutcome.PENDING_REPAIR
        assert store.breaker.state is BreakerState.OPEN
        time.sleep(0.1)
        store.repair_once()  # with nothing of its own to write, it must not keep the probe
        assert store.put("k", 2).cache is CacheOutcome.UPDATED
        assert store.breaker.state is BreakerState.CLOSED


def test_a_cancelled_async_probe_does_not_wedge_the_breaker(tmp_path: Path) -> None:
    async def main() -> None:
        inner = writethrough.caches.memory.AsyncMemoryCache(MemoryCache())
        source = writethrough.sources.open_async_source(f"sqlite:///{tmp_path}/c.db", namespace="c")
        settings = Settings(breaker_threshold=1, breaker_reset=0.05)
        hang = asyncio.Event()

        class Hanging:
            name = "hanging"

            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

            async def get(self, key: str) -> Any:
                if hang.is_set():
                    await asyncio.sleep(3600)
                return await inner.get(key)

        store = AsyncStore(source, Hanging(), namespace="c", settings=settings,  # type: ignore[arg-type]
                           repair_worker=False)
        await store.open()
        await store.put("k", 1)
        store.breaker.failure()  # opened by a failure elsewhere
        await asyncio.sleep(0.1)
        hang.set()
        probe = asyncio.ensure_future(store.get_versioned("k"))  # takes the half-open probe
        await asyncio.sleep(0.05)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        hang.clear()
        assert (await store.put("k", 2)).cache is CacheOutcome.UPDATED, "the probe was freed"
        await store.close()

    asyncio.run(main())
