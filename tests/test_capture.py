"""Change capture (issue 11), against real PostgreSQL and Redis: logical decoding on a
throwaway cluster with ``wal_level=logical``, triggers on the shared server.

Each test makes its own table, namespace and (logical) listener group; writes are plain
SQL on other connections, never through the library, so only capture can bring them to
the cache. The same behaviour suite runs for both modes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import redis

from conftest import unique_namespace
from servers import PostgresServer, RedisServer
from writethrough import (
    CacheUnavailable,
    ConfigError,
    SourceError,
    SourceUnavailable,
)
from writethrough.caches import open_cache
from writethrough.caches.base import Cache
from writethrough.capture import (
    Keyspace,
    LogicalListener,
    TriggerListener,
    cache_version,
    drop_slot,
    install,
    slot_status,
    uninstall,
)
from writethrough.capture.listener import BaseListener
from writethrough.errors import CacheServerError
from writethrough.protocol import Entry, Kind
from writethrough.tools.faults import FaultyCache

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
# Roomier than the 50 ms default: the 2 shared cores stall for longer under load, and a
# timeout is not what these tests are about (the failure tests inject their own).
ROOMY = "?socket_timeout=1&socket_connect_timeout=1"
Listener = LogicalListener | TriggerListener


@dataclass
class Captured:
    """A table with capture installed, and how to make listeners for it."""

    mode: str  # logical | triggers
    url: str
    name: str
    namespace: str
    cache_url: str
    group: str
    made: list[BaseListener] = field(default_factory=list)

    def sql(self, statement: str, params: Any = None) -> list[Any]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement.replace("{t}", self.name), params)
            return cur.fetchall() if cur.description else []

    def rows(self) -> dict[str, tuple[int, str]]:
        """key -> (version, the row as JSON), as the listener caches it."""
        return {str(k): (int(v), str(p)) for k, v, p in self.sql(
            "SELECT id::text, version, row_to_json(t)::text FROM {t} AS t")}

    def epoch(self) -> int:
        found = self.sql("SELECT max(epoch) FROM writethrough_epochs WHERE namespace IN ('', %s)",
                         (self.namespace,))
        return int(found[0][0] or 0)

    def keyspace(self, strategy: str = "write-through", **options: Any) -> dict[str, Keyspace]:
        space = Keyspace(self.namespace, self.name, "id", strategy, **options)  # type: ignore[arg-type]
        return {self.namespace: space}

    def listener(self, strategy: str = "write-through", cache: Cache | None = None,
                 **options: Any) -> Listener:
        spaces = self.keyspace(strategy)
        target = cache if cache is not None else self.cache_url
        made: Listener
        if self.mode == "logical":
            made = LogicalListener(self.url, target, spaces, group=self.group,
                                   standby_interval=0.2, **options)
        else:
            made = TriggerListener(self.url, target, spaces, poll_interval=0.05, **options)
        self.made.append(made)
        return made


def _drop_slot(url: str, group: str) -> None:
    deadline = time.monotonic() + 10
    while True:  # the walsender of a closed stream may take a moment to exit
        try:
            drop_slot(url, group)
            return
        except SourceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def captured_table(mode: str, url: str, cache_url: str, columns: str = "") -> Iterator[Captured]:
    namespace = unique_namespace("cp")
    t = Captured(mode, url, f"cp_{namespace}", namespace, cache_url, f"g_{namespace}")
    t.sql("CREATE TABLE {t} (id int PRIMARY KEY, name text, balance int" + columns + ")")
    done = install(url, t.name, "id", capture="logical" if mode == "logical" else "triggers")
    assert done.added_version_column and done.table == f"public.{t.name}"
    if mode == "logical":  # the group's slot: changes from now on are captured
        LogicalListener(url, "memory://", t.keyspace(), group=t.group).close()
    try:
        yield t
    finally:
        for listener in t.made:
            listener.close()
        uninstall(url, t.name)
        t.sql("DROP TABLE IF EXISTS {t}")
        t.sql("DELETE FROM writethrough_parked WHERE namespace = %s", (namespace,))
        t.sql("DELETE FROM writethrough_namespaces WHERE namespace = %s", (namespace,))
        if mode == "logical":
            _drop_slot(url, t.group)


@pytest.fixture(params=["logical", "triggers"])
def table(request: pytest.FixtureRequest, redis_srv: RedisServer) -> Iterator[Captured]:
    server: PostgresServer = request.getfixturevalue(
        "logical_pg" if request.param == "logical" else "postgres_srv")
    with captured_table(request.param, server.url, redis_srv.url + ROOMY) as t:
        yield t


@pytest.fixture
def logical_table(logical_pg: PostgresServer, redis_srv: RedisServer) -> Iterator[Captured]:
    with captured_table("logical", logical_pg.url, redis_srv.url + ROOMY) as t:
        yield t


@pytest.fixture
def cache(redis_srv: RedisServer) -> Iterator[Cache]:
    c = open_cache(redis_srv.url + ROOMY)
    yield c
    c.close()


@contextmanager
def running(listener: Listener) -> Iterator[Listener]:
    """The listener's run() in a thread, stopped on exit."""
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "run() did not stop"


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {check.__doc__ or check}")
        time.sleep(0.02)


def cached(cache: Cache, t: Captured, key: object) -> Entry | None:
    return cache.get(f"wt:{t.namespace}:{key}")


def divergences(cache: Cache, t: Captured, keys: range | None = None) -> list[str]:
    """Keys whose cache entry a reader would take for something other than the row: a
    value must be the row's, at the current epoch; a tombstone, an entry of an older epoch
    (the protocol treats it as gone) or no entry is fine for a key without a row or any
    key (a miss reads the database)."""
    rows, epoch, wrong = t.rows(), t.epoch(), []
    for key in {str(k) for k in (keys or ())} | set(rows):
        entry = cached(cache, t, key)
        if entry is None or entry.kind is not Kind.VALUE or entry.version < cache_version(
                epoch, 0):
            continue  # a miss: the reader goes to the database
        row = rows.get(key)
        if row is None or entry.version != cache_version(epoch, row[0]) or \
                json.loads(entry.payload) != json.loads(row[1]):
            wrong.append(f"{key}: cache {entry}, row {row}")
    return wrong


def matches(cache: Cache, t: Captured) -> bool:
    """Every row is cached as a value at its version (current epoch)."""
    epoch = t.epoch()
    for key, (version, _) in t.rows().items():
        entry = cached(cache, t, key)
        if entry is None or entry.kind is not Kind.VALUE or entry.version != cache_version(
                epoch, version):
            return False
    return not divergences(cache, t)


# -- the same behaviour in both modes --------------------------------------------------


def test_plain_sql_reaches_the_cache_write_through(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, name, balance) VALUES (1, 'Ann', 500), (2, 'Bob', 10)")
    with running(table.listener()):
        wait_for(lambda: matches(cache, table))
        table.sql("UPDATE {t} SET balance = 400 WHERE id = 1")
        table.sql("DELETE FROM {t} WHERE id = 2")
        wait_for(lambda: matches(cache, table) and (e := cached(cache, table, 2)) is not None
                 and e.kind is Kind.TOMBSTONE)
    entry = cached(cache, table, 1)
    assert entry is not None and json.loads(entry.payload) == {
        "id": 1, "name": "Ann", "balance": 400, "version": table.rows()["1"][0]}


def test_delete_and_reinsert_never_go_back(table: Captured, cache: Cache) -> None:
    seen: list[int] = []
    with running(table.listener()):
        table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a')")
        seen.append(table.rows()["1"][0])
        table.sql("UPDATE {t} SET name = 'b' WHERE id = 1")
        seen.append(table.rows()["1"][0])
        table.sql("DELETE FROM {t} WHERE id = 1")
        wait_for(lambda: (e := cached(cache, table, 1)) is not None and e.kind is Kind.TOMBSTONE
                 and e.version > cache_version(table.epoch(), seen[-1]))
        tombstone = cached(cache, table, 1)
        assert tombstone is not None
        table.sql("INSERT INTO {t} (id, name, version) VALUES (1, 'c', 0)")  # version is ours
        seen.append(table.rows()["1"][0])
        wait_for(lambda: matches(cache, table))
    assert seen == sorted(seen) and len(set(seen)) == 3
    assert cache_version(table.epoch(), seen[-1]) > tombstone.version, "the re-insert is above the delete"
    assert (e := cached(cache, table, 1)) is not None and json.loads(e.payload)["name"] == "c"


def _last_drawn(t: Captured) -> int:
    (last,), = t.sql("SELECT pg_sequence_last_value('writethrough_versions')")
    return int(last)


def test_an_update_that_sets_the_version_itself_skips_the_draw(table: Captured,
                                                                cache: Cache) -> None:
    """``SET version = version + 1`` is kept (no per-row function call, no nextval: the
    bulk-UPDATE path); a version the statement did not raise, lowered, nulled or set above
    the sequence is replaced by a drawn one. Either way a row's versions rise and none is
    above the sequence, and the cache follows the rows."""
    t = table
    t.sql("INSERT INTO {t} (id, name) SELECT g, 'n' FROM generate_series(1, 6) g")
    before, last = t.rows(), _last_drawn(t)
    t.sql("UPDATE {t} SET balance = 1, version = version + 1 WHERE id IN (1, 2, 3)")
    after = t.rows()
    assert [after[k][0] for k in "123"] == [before[k][0] + 1 for k in "123"], "kept"
    assert _last_drawn(t) == last, "nothing drawn"
    writes = {
        "4": "UPDATE {t} SET balance = 2 WHERE id = 4",  # forgot the version
        "5": "UPDATE {t} SET version = version - 7 WHERE id = 5",  # lowered it
        "6": "UPDATE {t} SET version = 9000000000000000000 WHERE id = 6",  # above the sequence
        "1": "UPDATE {t} SET version = NULL WHERE id = 1",  # nulled it
    }
    for key, statement in writes.items():
        old = t.rows()[key][0]
        t.sql(statement)
        new = t.rows()[key][0]
        assert old < new == _last_drawn(t), f"{key}: a drawn version"
    assert all(v <= _last_drawn(t) for v, _ in t.rows().values()), "none above the sequence"
    with running(t.listener()):
        wait_for(lambda: matches(cache, t))
        t.sql("UPDATE {t} SET name = 'bulk', version = version + 1")
        wait_for(lambda: matches(cache, t))
    assert divergences(cache, t) == []


def test_a_key_change_that_sets_the_version_draws_one(table: Captured, cache: Cache) -> None:
    """An UPDATE that moves a row to another key starts that key's history again: the key
    may have held a higher version before a DELETE, so ``version + 1`` of the moved row is
    not kept but drawn (found by review: the deleted row's value stayed cached)."""
    t = table
    t.sql("INSERT INTO {t} (id, name) VALUES (1, 'one')")
    t.sql("INSERT INTO {t} (id, name) VALUES (2, 'two')")
    options = {"remember_keys": 0} if t.mode == "logical" else {}
    with running(t.listener(**options)):
        wait_for(lambda: matches(cache, t))
        higher = t.rows()["2"][0]
        t.sql("BEGIN; DELETE FROM {t} WHERE id = 2; "
              "UPDATE {t} SET id = 2, version = version + 1 WHERE id = 1; COMMIT")
        assert t.rows()["2"][0] > higher, "the moved row drew a version above the key's"
        wait_for(lambda: matches(cache, t))
    entry = cached(cache, t, 2)
    assert entry is not None and json.loads(entry.payload)["name"] == "one"
    assert divergences(cache, t, range(1, 3)) == []


def test_deletes_after_statement_set_versions_are_never_stale(table: Captured,
                                                              cache: Cache) -> None:
    """Rows whose last version a statement set (``version + 1``), deleted with the
    listener knowing nothing of them (no memory of keys: a DELETE without the old version
    takes the tombstone "above everything drawn"): every key ends a tombstone or a miss,
    none keeps its deleted value; re-inserted keys are cached at their new rows."""
    t = table
    t.sql("INSERT INTO {t} (id, name) SELECT g, 'n' FROM generate_series(1, 50) g")
    options = {"remember_keys": 0} if t.mode == "logical" else {}
    with running(t.listener(**options)):
        for _ in range(3):
            t.sql("UPDATE {t} SET balance = balance + 1, version = version + 1")
        wait_for(lambda: matches(cache, t))
        t.sql("DELETE FROM {t} WHERE id <= 40")
        t.sql("INSERT INTO {t} (id, name) SELECT g, 'again' FROM generate_series(31, 40) g")
        wait_for(lambda: all((e := cached(cache, t, k)) is None or e.kind is not Kind.VALUE
                             for k in range(1, 31)))

        def settled() -> bool:
            """Each re-inserted key cached at its row, or (the re-insert race of the
            README: its version drawn before the delete's tombstone) a miss above it."""
            rows, epoch = t.rows(), t.epoch()
            for k in range(31, 41):
                e, version = cached(cache, t, k), cache_version(epoch, rows[str(k)][0])
                if e is None or e.version < version or (
                        e.kind is Kind.VALUE and e.version != version):
                    return False
            return True

        wait_for(settled)
    assert divergences(cache, t, range(1, 51)) == []
    for key in range(31, 41):
        entry = cached(cache, t, key)
        assert entry is None or entry.kind is not Kind.VALUE or \
            json.loads(entry.payload)["name"] == "again"


def test_a_key_change_is_a_delete_plus_an_insert(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a')")
    with table.listener() as listener:
        listener.drain_once()
        table.sql("UPDATE {t} SET id = 2 WHERE id = 1")
        listener.drain_once()
    old = cached(cache, table, 1)
    assert old is not None and old.kind is Kind.TOMBSTONE
    assert matches(cache, table) and set(table.rows()) == {"2"}


def test_a_value_column_is_cached_alone(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, name) VALUES (7, 'Ann'), (8, NULL)")
    listener = table.listener()
    listener.close()
    spaces = table.keyspace("write-through", value_column="name")
    with (LogicalListener(table.url, table.cache_url, spaces, group=table.group)
          if table.mode == "logical" else TriggerListener(table.url, table.cache_url, spaces)
          ) as only_name:
        assert only_name.drain_once() == 2
    versions = {k: v for k, (v, _) in table.rows().items()}
    epoch = table.epoch()
    assert cached(cache, table, 7) == Entry.value(cache_version(epoch, versions["7"]), b'"Ann"')
    assert cached(cache, table, 8) == Entry.value(cache_version(epoch, versions["8"]), b"null")


def test_truncate_bumps_the_epoch_and_nothing_older_is_served(table: Captured,
                                                              cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, name) SELECT g, 'old' FROM generate_series(1, 20) g")
    with table.listener() as listener:
        listener.drain_once()
        assert matches(cache, table)
        before = table.epoch()
        table.sql("TRUNCATE {t}")
        table.sql("INSERT INTO {t} (id, name) VALUES (3, 'new')")
        listener.drain_once()
        assert listener.stats.truncates == 1
    assert table.epoch() > before
    fresh = cached(cache, table, 3)
    assert fresh is not None and fresh.version == cache_version(table.epoch(),
                                                                table.rows()["3"][0])
    assert cached(cache, table, 4) is None, \
        "the truncated rows' entries are flushed (a store that has not read the new epoch " \
        "yet would still serve them)"
    assert listener.stats.flushed == 20
    assert divergences(cache, table, range(1, 21)) == []


def test_a_restarted_listener_resumes(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 20) g")
    with table.listener() as first:
        first.drain_once()
    assert matches(cache, table)
    for _ in range(3):  # nobody listening
        table.sql("UPDATE {t} SET balance = balance + 1")
    with running(table.listener()) as second:
        wait_for(lambda: matches(cache, table))
    assert second.stats.applied == 60, "exactly the changes made while it was stopped"


class OneBadKey:
    """A real Redis cache in front of which one key always fails, as a key on a cluster
    shard that is down, or one the server refuses (a fault wrapper, not a mock)."""

    def __init__(self, inner: Cache, bad: str) -> None:
        self.inner, self.bad, self.name, self.broken = inner, bad, inner.name, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if key == self.bad and self.broken:
            raise CacheServerError("injected: this key's shard refuses writes")
        return self.inner.write(key, *args, **kwargs)

    def fill(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if key == self.bad and self.broken:
            raise CacheServerError("injected: this key's shard refuses writes")
        return self.inner.fill(key, *args, **kwargs)

    # The pipelined forms: the bad key's answer is an error in its place, as Redis gives.
    def write_many(self, writes: Any, **kwargs: Any) -> Any:
        return self._many(writes, lambda good: self.inner.write_many(good, **kwargs))

    def fill_many(self, fills: Any, **kwargs: Any) -> Any:
        return self._many(fills, lambda good: self.inner.fill_many(good, **kwargs))

    def _many(self, items: Any, call: Any) -> list[Any]:
        bad = [self.broken and item[0] == self.bad for item in items]
        answers = iter(call([item for item, b in zip(items, bad, strict=True) if not b]))
        return [CacheServerError("injected: this key's shard refuses writes") if b
                else next(answers) for b in bad]


def test_one_key_that_always_fails_does_not_block_the_others(table: Captured,
                                                             cache: Cache) -> None:
    bad = OneBadKey(open_cache(table.cache_url), f"wt:{table.namespace}:5")
    table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 10) g")
    try:
        with running(table.listener(cache=bad)) as listener:  # type: ignore[arg-type]
            wait_for(lambda: all(cached(cache, table, k) is not None for k in (1, 2, 3, 4, 6)))
            table.sql("UPDATE {t} SET balance = 1 WHERE id IN (1, 5)")
            wait_for(lambda: (e := cached(cache, table, 1)) is not None
                     and json.loads(e.payload)["balance"] == 1)
            parked = table.sql("SELECT key, error FROM writethrough_parked WHERE namespace = %s",
                               (table.namespace,))
            assert [p[0] for p in parked] == ["5"] and "shard refuses" in parked[0][1]
            bad.broken = False  # fixed: the parked key lands on its next retry
            wait_for(lambda: matches(cache, table))
            wait_for(lambda: not table.sql("SELECT FROM writethrough_parked WHERE namespace = %s",
                                           (table.namespace,)))
    finally:
        bad.inner.close()
    print(f"\n{table.mode}: {listener.stats}")
    assert listener.stats.parked >= 1
    assert (e := cached(cache, table, 5)) is not None and json.loads(e.payload)["balance"] == 1


def test_a_wrongtype_entry_is_overwritten(table: Captured, cache: Cache,
                                          redis_srv: RedisServer) -> None:
    """Garbage under a key (a hash where an entry belongs) is a miss to the backend: the
    listener's write replaces it, nothing is parked."""
    with redis.Redis.from_url(redis_srv.url) as raw:
        raw.hset(f"wt:{table.namespace}:5", "planted", "x")
    with table.listener() as listener:
        table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 10) g")
        listener.drain_once()
    assert matches(cache, table) and listener.stats.parked == 0


def test_a_cache_that_is_down_stops_the_batch_and_loses_nothing(
        table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id) SELECT g FROM generate_series(1, 50) g")
    faulty = FaultyCache(open_cache(table.cache_url))
    listener = table.listener(cache=faulty)  # type: ignore[arg-type]
    try:
        faulty.fail("write", CacheUnavailable("injected: cache down"))
        with pytest.raises(CacheUnavailable):
            listener.drain_once()
        # One pipeline, then key by key (one shard may be down): three more, then it stops.
        assert faulty.calls["write"] <= 4, "gives up after a few writes, not one per key"
        assert not table.sql("SELECT FROM writethrough_parked WHERE namespace = %s",
                             (table.namespace,)), "a cache that is down parks nothing"
        faulty.heal()
        listener.drain_once()
    finally:
        listener.close()
        faulty.close()
    assert matches(cache, table)


def test_several_listeners_never_double_apply(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 50) g")
    one, two = table.listener(batch_size=20), table.listener(batch_size=20)
    with running(one), running(two):
        for _ in range(10):
            table.sql("UPDATE {t} SET balance = balance + 1")
        try:
            wait_for(lambda: matches(cache, table)
                     and one.stats.applied + two.stats.applied >= 550)
        finally:
            print(f"one {one.stats} standby {getattr(one, 'standby', '-')}\n"
                  f"two {two.stats} standby {getattr(two, 'standby', '-')}\n"
                  f"divergences {divergences(cache, table)[:3]}")
        time.sleep(0.3)
    print(f"\n{table.mode}: applied {one.stats.applied} + {two.stats.applied}")
    assert one.stats.applied + two.stats.applied == 550, "each change applied once"
    if table.mode == "logical":  # one streams, the other waits as a standby
        assert 0 in (one.stats.applied, two.stats.applied)


def test_stop_between_batches_with_a_big_backlog(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 120000) g")
    listener = table.listener(batch_size=500)
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    wait_for(lambda: listener.stats.batches >= 2, timeout=60)
    asked = time.monotonic()
    stop.set()
    thread.join(10)
    took = time.monotonic() - asked
    print(f"\n{table.mode}: stopped {took:.2f} s after asked, {listener.stats.applied:,} of "
          f"120,000 applied")
    assert not thread.is_alive() and took < 2.0
    assert listener.stats.applied < 120_000, "it stopped with a backlog left"


def test_lag_is_measured(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 100) g")
    with running(table.listener()) as listener:
        for i in range(200):
            table.sql("UPDATE {t} SET balance = balance + 1 WHERE id = %s", (i % 100 + 1,))
        wait_for(lambda: matches(cache, table) and listener.stats.applied >= 300)
    lag = listener.lag_percentiles()
    print(f"\n{table.mode}: lag p50 {lag.p50 * 1000:.1f} ms, p99 {lag.p99 * 1000:.1f} ms")
    assert lag.count >= 300 and 0 <= lag.p50 <= lag.p99 < 10


# -- logical decoding only --------------------------------------------------------------


def test_slot_retention_is_visible(logical_table: Captured, cache: Cache) -> None:
    t = logical_table
    with t.listener() as listener:
        listener.drain_once()
    status = slot_status(t.url, t.group)
    assert status is not None and not status.active
    t.sql("INSERT INTO {t} (id, name) SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g")
    behind = slot_status(t.url, t.group)
    assert behind is not None and behind.behind_bytes > 2000 * 200
    assert behind.retained_bytes >= behind.behind_bytes
    with t.listener() as listener:
        listener.drain_once()
    caught_up = slot_status(t.url, t.group)
    assert caught_up is not None and caught_up.behind_bytes < behind.behind_bytes


def test_a_standby_takes_over_where_the_leader_stopped(logical_table: Captured,
                                                       cache: Cache) -> None:
    t = logical_table
    t.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 30) g")
    leader, standby = t.listener(), t.listener()
    with running(leader):
        wait_for(lambda: matches(cache, t))
        with running(standby):
            wait_for(lambda: standby.standby)
            t.sql("UPDATE {t} SET balance = 1")
            wait_for(lambda: matches(cache, t))
            leader.close()  # the leader goes away
            t.sql("UPDATE {t} SET balance = 2")
            wait_for(lambda: matches(cache, t) and standby.stats.applied == 30)
    assert leader.stats.applied == 60 and standby.stats.applied == 30


def test_install_needs_wal_level_logical(postgres_srv: PostgresServer) -> None:
    level = psycopg.connect(postgres_srv.url, autocommit=True).execute("SHOW wal_level")
    if level.fetchone() == ("logical",):
        pytest.skip("this server has wal_level=logical")
    name = f"cp_{unique_namespace('wl')}"
    with psycopg.connect(postgres_srv.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        try:
            with pytest.raises(ConfigError, match="wal_level=logical"):
                install(postgres_srv.url, name, "id")
        finally:
            conn.execute(f"DROP TABLE {name}")


def test_install_refuses_a_table_whose_deletes_would_not_carry_the_key(
        logical_pg: PostgresServer) -> None:
    name = f"cp_{unique_namespace('ri')}"
    with psycopg.connect(logical_pg.url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (pk int PRIMARY KEY, id int NOT NULL UNIQUE)")
        try:
            with pytest.raises(ConfigError, match="REPLICA IDENTITY"):
                install(logical_pg.url, name, "id")
            conn.execute(f"ALTER TABLE {name} REPLICA IDENTITY FULL")
            done = install(logical_pg.url, name, "id")
            assert done.delete_versions, "FULL: a delete carries the old version"
        finally:
            uninstall(logical_pg.url, name)
            conn.execute(f"DROP TABLE {name}")


def test_deletes_use_the_old_version_when_the_wal_carries_it(logical_table: Captured,
                                                             cache: Cache) -> None:
    t = logical_table
    t.sql("ALTER TABLE {t} REPLICA IDENTITY FULL")
    t.sql("INSERT INTO {t} (id) VALUES (1)")
    version = t.rows()["1"][0]
    t.sql("DELETE FROM {t} WHERE id = 1")
    with t.listener("invalidate") as listener:
        listener.drain_once()
    entry = cached(cache, t, 1)
    assert entry is not None and (entry.kind, entry.version) == (
        Kind.TOMBSTONE, cache_version(t.epoch(), version + 1))


def test_invalidate_tombstones(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a'), (2, 'b')")
    with table.listener("invalidate") as listener:
        listener.drain_once()
        versions = {k: v for k, (v, _) in table.rows().items()}
        for key in ("1", "2"):
            entry = cached(cache, table, key)
            assert entry is not None and (entry.kind, entry.version) == (
                Kind.TOMBSTONE, cache_version(table.epoch(), versions[key]))
        table.sql("DELETE FROM {t} WHERE id = 1")
        listener.drain_once()
    gone = cached(cache, table, 1)
    assert gone is not None and gone.kind is Kind.TOMBSTONE and gone.version > versions["1"]


def test_a_closed_listener_is_a_typed_error_and_bad_settings_are_config_errors(
        logical_table: Captured) -> None:
    t = logical_table
    spaces = t.keyspace()
    with pytest.raises(ConfigError):
        LogicalListener(t.url, t.cache_url, spaces, group="no spaces; allowed")
    with pytest.raises(ConfigError):
        LogicalListener(t.url, t.cache_url, {})
    with pytest.raises(ConfigError):
        TriggerListener(t.url, t.cache_url, spaces, poll_interval=float("nan"))
    with pytest.raises(ConfigError, match="no table"):
        LogicalListener(t.url, t.cache_url, {"x": Keyspace("x", "no_such_table", "id")})


# -- failures, settings, the first listener's command line ------------------------------


def test_a_lost_connection_is_reconnected_and_caught_up(table: Captured, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, balance) VALUES (1, 0)")
    with running(table.listener()) as listener:
        wait_for(lambda: matches(cache, table))
        name = listener.application_name
        killed = table.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = %s AND pid <> pg_backend_pid()", (name,))
        assert killed, "the listener's connections"
        for _ in range(5):
            table.sql("UPDATE {t} SET balance = balance + 1 WHERE id = 1")
        wait_for(lambda: matches(cache, table) and listener.stats.reconnects >= 1)
    assert (e := cached(cache, table, 1)) is not None and json.loads(e.payload)["balance"] == 5


def test_an_older_value_landing_on_an_evicted_key_is_corrected(
        postgres_srv: PostgresServer, redis_srv: RedisServer, cache: Cache) -> None:
    """Race 6 with two trigger listeners: L1 read v1 and stalls; L2 stores v2, which is
    evicted; L1's v1 then reaches the empty key -- as a writer lease, and L1 fills what
    the row holds now: v2."""
    with captured_table("triggers", postgres_srv.url, redis_srv.url + ROOMY) as t:
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'v1')")
        stalled = FaultyCache(open_cache(t.cache_url))
        one, two = t.listener(cache=stalled), t.listener()  # type: ignore[arg-type]
        try:
            gate = stalled.pause("write")
            drain = threading.Thread(target=one.drain_once)
            drain.start()
            assert gate.wait_reached(), "L1 claimed the change, read the row, and stalls"
            t.sql("UPDATE {t} SET name = 'v2' WHERE id = 1")
            assert two.drain_once() == 1, "L2 skips L1's locked row and applies v2"
            cache.delete(f"wt:{t.namespace}:1")  # evicted
            gate.release()
            drain.join(10)
        finally:
            stalled.close()
        assert (e := cached(cache, t, 1)) is not None and e.kind is Kind.VALUE
        assert json.loads(e.payload)["name"] == "v2" and matches(cache, t)


def test_bad_settings_and_unreachable_servers_are_typed_errors(
        table: Captured, redis_srv: RedisServer) -> None:
    from servers import free_port
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    spaces = table.keyspace()
    kind = LogicalListener if table.mode == "logical" else TriggerListener
    with pytest.raises(SourceUnavailable):
        kind(down, redis_srv.url, spaces)
    with pytest.raises(SourceUnavailable):
        install(down, "t", "id")
    with pytest.raises(ConfigError):
        kind("mysql://x/y", redis_srv.url, spaces)
    with pytest.raises(ConfigError):
        kind(table.url, redis_srv.url, {"other": spaces[table.namespace]})
    with pytest.raises(ConfigError):
        Keyspace("ns", "t; DROP TABLE x", "id")
    with pytest.raises(ConfigError):
        Keyspace("ns", "t", "id", "sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no table"):
        install(table.url, "no_such_table", "id")
    with pytest.raises(ConfigError, match="unique"):
        install(table.url, table.name, "name")
    with pytest.raises(ConfigError, match="no column"):
        install(table.url, table.name, "nope")
    with pytest.raises(ConfigError, match="connect_timeout"):
        install(f"{table.url}?connect_timeout=0", table.name, "id")


def test_install_is_idempotent_and_uninstall_stops_capture(table: Captured,
                                                           cache: Cache) -> None:
    again = install(table.url, table.name, "id", capture=table.mode)  # type: ignore[arg-type]
    assert not again.added_version_column
    with table.listener() as listener:
        table.sql("INSERT INTO {t} (id) VALUES (1)")
        assert listener.drain_once() == 1, "one change per change, not one per install"
    assert uninstall(table.url, table.name)
    table.sql("UPDATE {t} SET name = 'x' WHERE id = 1")
    assert table.sql("SELECT version FROM {t}") == [(table.rows()["1"][0],)], "no versions"
    if table.mode == "logical":
        with pytest.raises(ConfigError, match="no publication"):
            table.listener()
    else:
        with table.listener() as listener:
            assert listener.drain_once() == 0
    assert (e := cached(cache, table, 1)) is not None and json.loads(e.payload)["name"] is None
    if table.mode == "triggers":
        assert not table.sql("SELECT FROM writethrough_changes WHERE tbl = %s::regclass",
                             (table.name,))
    assert not uninstall(table.url, table.name)


def test_cli_install_triggers_and_listen_once(
        postgres_srv: PostgresServer, redis_srv: RedisServer, cache: Cache,
        capsys: pytest.CaptureFixture[str]) -> None:
    from writethrough.cli import main as cli_main
    with captured_table("triggers", postgres_srv.url, redis_srv.url + ROOMY) as t:
        uninstall(t.url, t.name)
        common = ["--source", postgres_srv.url, "--table", t.name, "--key-column", "id",
                  "--namespace", t.namespace]
        assert cli_main(["install-triggers", *common]) == 0
        assert "triggers installed on public." in capsys.readouterr().out
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'a'), (2, 'b')")
        t.sql("UPDATE {t} SET name = 'c' WHERE id = 2")
        assert cli_main(["listen", *common, "--cache", t.cache_url, "--strategy",
                         "write-through", "--once"]) == 0
        out = capsys.readouterr().out
        assert "applied 3 change(s)" in out and "lag p50" in out
        assert matches(cache, t)
        bad = ["listen", *common, "--cache", t.cache_url, "--once", "--table", "x;y"]
        assert cli_main(bad) == 2
        assert "not a plain SQL identifier" in capsys.readouterr().err


def test_cli_logical_install_listen_status_uninstall(
        logical_pg: PostgresServer, redis_srv: RedisServer, cache: Cache,
        capsys: pytest.CaptureFixture[str]) -> None:
    from writethrough.cli import main as cli_main
    namespace = unique_namespace("cl")
    t = Captured("logical", logical_pg.url, f"cl_{namespace}", namespace,
                 redis_srv.url + ROOMY, f"g_{namespace}")
    t.sql("CREATE TABLE {t} (id int PRIMARY KEY, name text)")
    source = ["--source", t.url, "--table", t.name]
    listen = ["listen", *source, "--key-column", "id", "--namespace", namespace, "--cache",
              t.cache_url, "--strategy", "write-through", "--group", t.group]
    try:
        assert cli_main(["install", *source, "--key-column", "id"]) == 0
        assert "logical capture installed" in capsys.readouterr().out
        assert cli_main([*listen, "--once"]) == 0  # creates the group's slot
        t.sql("INSERT INTO {t} (id, name) SELECT g, 'x' FROM generate_series(1, 50) g")
        assert cli_main([*listen, "--status"]) == 0
        assert "kB behind" in capsys.readouterr().out
        assert cli_main([*listen, "--once"]) == 0
        out = capsys.readouterr().out
        assert "applied 50 change(s)" in out and f"slot writethrough_{t.group}" in out
        assert matches(cache, t)
        # The cache cannot be reached: --once fails, with the reason, and loses nothing.
        t.sql("UPDATE {t} SET name = 'y'")
        down = ["listen", *listen[1:-2], "--group", t.group]
        down[down.index("--cache") + 1] = "redis://127.0.0.1:1/0?socket_connect_timeout=0.2"
        assert cli_main([*down, "--once"]) == 1
        assert "error:" in (err := capsys.readouterr().err) and "nothing was lost" in err
        assert cli_main([*listen, "--once"]) == 0
        assert "applied 50 change(s)" in capsys.readouterr().out and matches(cache, t)
    finally:
        t.sql("DROP TABLE {t}")
        assert cli_main(["uninstall", *source, "--slot", t.group]) == 0
        assert "removed from" in (out := capsys.readouterr().out) and "dropped" in out


@pytest.mark.parametrize("mode", ["logical", "triggers"])
def test_cli_listen_stops_on_sigterm_with_a_big_backlog(
        mode: str, request: pytest.FixtureRequest, redis_srv: RedisServer) -> None:
    import os
    import signal
    import subprocess
    import sys
    server: PostgresServer = request.getfixturevalue(
        "logical_pg" if mode == "logical" else "postgres_srv")
    with captured_table(mode, server.url, redis_srv.url + ROOMY) as t:
        t.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 120000) g")
        args = [sys.executable, "-m", "writethrough", "listen", "--source", t.url, "--table",
                t.name, "--key-column", "id", "--namespace", t.namespace, "--cache",
                t.cache_url, "--strategy", "write-through", "--group", t.group,
                "--capture", mode]
        child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            assert child.stderr is not None
            assert "listening" in child.stderr.readline()
            time.sleep(2.0)  # well into the backlog
            asked = time.monotonic()
            child.send_signal(signal.SIGTERM)
            out, _ = child.communicate(timeout=30)
            took = time.monotonic() - asked
        finally:
            if child.poll() is None:
                child.kill()
        print(f"\n{mode}: exited {took:.2f} s after SIGTERM: {out.strip()}")
        assert child.returncode == 0 and took < 2.0
        applied = int(out.split("applied ")[1].split(" ")[0].replace(",", ""))
        assert applied < 120_000, "it stopped with a backlog left"


def test_a_reinsert_drawn_before_an_update_and_delete_goes_back_but_is_never_stale(
        logical_table: Captured, cache: Cache) -> None:
    """The race a BEFORE INSERT trigger cannot close: the re-insert draws its version, then
    an UPDATE (a newer version) and a DELETE of the key commit before its unique check.
    Its version is then below the delete's. The listener counts it and leaves a tombstone
    (a miss, the reader goes to the database): never the deleted row's value."""
    t = logical_table
    t.sql("""CREATE FUNCTION {t}_pause() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$""")
    # Fires after writethrough_version (triggers fire in name order): the version is drawn.
    t.sql("CREATE TRIGGER zz_pause BEFORE INSERT ON {t} FOR EACH ROW "
          "EXECUTE FUNCTION {t}_pause()")
    t.sql("INSERT INTO {t} (id, name) VALUES (1, 'first')")  # lock free: no wait
    with t.listener() as listener:
        listener.drain_once()
        with psycopg.connect(t.url, autocommit=True) as holder:
            holder.execute("BEGIN")
            holder.execute("SELECT pg_advisory_xact_lock(4242)")
            late = threading.Thread(target=lambda: _ignore_unique(
                t, "INSERT INTO {t} (id, name) VALUES (1, 'late')"))
            late.start()
            time.sleep(0.3)  # its version is drawn; it waits on the lock
            t.sql("UPDATE {t} SET name = 'updated' WHERE id = 1")
            updated = t.rows()["1"][0]
            t.sql("DELETE FROM {t} WHERE id = 1")
            holder.execute("COMMIT")
            late.join(10)
        row = t.rows()["1"]
        assert json.loads(row[1])["name"] == "late" and row[0] < updated, "went back"
        listener.drain_once()
        assert listener.stats.went_back == 1
    entry = cached(cache, t, 1)
    assert entry is not None and entry.kind is Kind.TOMBSTONE
    assert entry.version >= cache_version(t.epoch(), updated + 1), "a miss, not 'updated' or 'first'"
    assert divergences(cache, t) == []
    t.sql("DROP TRIGGER zz_pause ON {t}")
    t.sql("DROP FUNCTION {t}_pause()")


def _ignore_unique(t: Captured, statement: str) -> None:
    with suppress(psycopg.errors.UniqueViolation):
        t.sql(statement)


def test_a_slot_that_lost_its_wal_is_recreated_and_the_epoch_bumped(
        logical_table: Captured, logical_pg: PostgresServer, cache: Cache) -> None:
    """``max_slot_wal_keep_size`` invalidated the slot of a stopped group: changes were
    lost, so the listener makes a new slot and bumps the epoch (older entries invalid)."""
    if logical_pg.pid is None:
        pytest.skip("changes a server setting: only on a server the tests started")
    t = logical_table
    t.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    t.sql("SELECT pg_reload_conf()")
    try:
        with t.listener() as listener:
            listener.drain_once()
        before = t.epoch()
        for _ in range(4):
            t.sql("INSERT INTO {t} (id, name) SELECT g, repeat('x', 500) "
                  "FROM generate_series(1, 3000) g ON CONFLICT (id) DO UPDATE SET name = 'y'")
            t.sql("SELECT pg_switch_wal()")
            t.sql("CHECKPOINT")
        status = slot_status(t.url, t.group)
        assert status is not None and status.wal_status == "lost"
        with t.listener() as listener:
            listener.drain_once()
        assert t.epoch() > before, "what was lost can no longer be served"
        status = slot_status(t.url, t.group)
        assert status is not None and status.wal_status != "lost"
    finally:
        t.sql("ALTER SYSTEM RESET max_slot_wal_keep_size")
        t.sql("SELECT pg_reload_conf()")


def test_install_on_current_shared_tables_takes_no_lock_a_listener_holds(
        logical_pg: PostgresServer) -> None:
    """A trigger listener mid-batch holds its claimed change rows and reads the epochs; an
    install of another table then ran ALTER TABLE on both shared tables anyway (epochs
    first): a deadlock, seen on the shared server. Tables that are already current are
    left alone now. (On the throwaway cluster: this holds locks on shared tables.)"""
    url = logical_pg.url
    names = [f"cp_{unique_namespace('lk')}" for _ in range(2)]
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, name text)")
    try:
        install(url, names[0], "id", capture="triggers")  # the shared tables are current
        with psycopg.connect(url) as listener:  # what a listener's batch holds
            listener.execute("SELECT FROM writethrough_changes FOR UPDATE")
            listener.execute("SELECT FROM writethrough_epochs")
            done = threading.Event()

            def second() -> None:
                install(url, names[1], "id", capture="triggers")
                done.set()

            thread = threading.Thread(target=second, daemon=True)
            thread.start()
            finished = done.wait(10)
            listener.rollback()
            thread.join(30)
        assert finished, "install waited for the listener's locks on the shared tables"
    finally:
        for name in names:
            uninstall(url, name)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {name}")
