"""Event-driven maintenance from the database (issue 4), against real PostgreSQL and Redis:
triggers record each committed change, listeners apply them to the cache.

Each test makes its own table and namespace; writes are plain SQL on other connections,
never through the library, so only the triggers + listener can bring them to the cache.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import writethrough
from conftest import unique_namespace
from servers import PostgresServer, RedisServer, free_port
from writethrough import CacheUnavailable, ConfigError, SourceUnavailable
from writethrough.caches import open_cache
from writethrough.caches.base import Cache
from writethrough.cli import main as cli_main
from writethrough.events import Keyspace, Listener, install_triggers, uninstall_triggers
from writethrough.protocol import Entry, Kind
from writethrough.tools.faults import FaultyCache

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@dataclass
class Table:
    url: str  # postgresql://... with an application_name of its own (to find its sessions)
    name: str
    namespace: str
    cache_url: str

    def sql(self, statement: str, params: Any = None) -> list[Any]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement.replace("{t}", self.name), params)
            return cur.fetchall() if cur.description else []

    def versions(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.sql("SELECT id, version FROM {t}")}

    def queued(self) -> int:
        found = self.sql("SELECT count(*) FROM writethrough_events WHERE namespace = %s",
                         (self.namespace,))
        return int(found[0][0])

    def keyspace(self, strategy: str = "write-through", **options: Any) -> dict[str, Keyspace]:
        space = Keyspace(self.namespace, self.name, "id", strategy, **options)  # type: ignore[arg-type]
        return {self.namespace: space}

    def listener(self, strategy: str = "write-through", **options: Any) -> Listener:
        return Listener(self.url, self.cache_url, self.keyspace(strategy),
                        poll_interval=0.2, **options)


@pytest.fixture
def table(postgres_srv: PostgresServer, redis_srv: RedisServer) -> Iterator[Table]:
    namespace = unique_namespace("ev")
    sep = "&" if "?" in postgres_srv.url else "?"
    t = Table(f"{postgres_srv.url}{sep}application_name=wt-{namespace}", f"ev_{namespace}",
              namespace, redis_srv.url)
    t.sql("CREATE TABLE {t} (id int PRIMARY KEY, name text, balance int)")
    installed = install_triggers(t.url, t.name, "id", namespace)
    assert installed.added_version_column and installed.table == f"public.{t.name}"
    yield t
    uninstall_triggers(t.url, t.name)  # drops the trigger functions too
    t.sql("DROP TABLE IF EXISTS {t}")
    t.sql("DELETE FROM writethrough_events WHERE namespace = %s", (namespace,))
    t.sql("DELETE FROM writethrough_version_floor WHERE tbl = %s", (f"public.{t.name}",))


@pytest.fixture
def cache(redis_srv: RedisServer) -> Iterator[Cache]:
    c = open_cache(redis_srv.url)
    yield c
    c.close()


@contextmanager
def running(listener: Listener) -> Iterator[Listener]:
    """The listener's run() in a thread, stopped and closed on exit."""
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "run() did not stop"
        listener.close()


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {check.__doc__ or check}")
        time.sleep(0.01)


def cached(cache: Cache, t: Table, key: object) -> Entry | None:
    return cache.get(f"wt:{t.namespace}:{key}")


def cache_matches_db(cache: Cache, t: Table, kind: Kind = Kind.VALUE) -> bool:
    for key, version in t.versions().items():
        entry = cached(cache, t, key)
        if entry is None or entry.kind is not kind or entry.version != version:
            return False
    return True


# -- plain SQL from another connection reaches the cache ---------------------------------


def test_a_plain_sql_update_reaches_the_cache_write_through(
    table: Table, cache: Cache, tmp_path: Path
) -> None:
    table.sql("INSERT INTO {t} (id, name, balance) VALUES (1, 'Ann', 500), (2, 'Bob', 10)")
    with running(table.listener("write-through")):
        wait_for(lambda: cache_matches_db(cache, table))
        table.sql("UPDATE {t} SET balance = 400 WHERE id = 1")
        wait_for(lambda: (e := cached(cache, table, 1)) is not None and e.version == 2)
    entry = cached(cache, table, 1)
    assert entry == Entry.value(2, entry.payload if entry else b"")
    assert json.loads(entry.payload if entry else b"") == {
        "id": 1, "name": "Ann", "balance": 400, "version": 2}
    # A store in the same namespace sees the same entries: key wt:<ns>:<key>, JSON payload.
    with writethrough.open(source=f"sqlite:///{tmp_path}/r.db", cache=table.cache_url,
                           namespace=table.namespace, repair_worker=False) as store:
        assert store.cache.get(f"wt:{table.namespace}:1") == entry
        assert store.get("1") == {"id": 1, "name": "Ann", "balance": 400, "version": 2}
        assert (found := store.get_versioned("2")) is not None and found.version == 1


def test_a_plain_sql_update_invalidates(table: Table, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'Ann')")
    with table.listener("write-through") as warm:
        assert warm.drain_once() == 1
    assert (e := cached(cache, table, 1)) is not None and e.kind is Kind.VALUE
    with running(table.listener("invalidate")) as listener:
        table.sql("UPDATE {t} SET name = 'Anna' WHERE id = 1")
        wait_for(lambda: cached(cache, table, 1) == Entry.tombstone(2))
        table.sql("DELETE FROM {t} WHERE id = 1")
        wait_for(lambda: cached(cache, table, 1) == Entry.tombstone(3))
    assert listener.stats.applied == 2 and listener.stats.tombstones == 2


def test_a_value_column_is_cached_alone(table: Table, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, name) VALUES (7, 'Ann'), (8, NULL)")
    spaces = table.keyspace("write-through", value_column="name")
    with Listener(table.url, table.cache_url, spaces) as listener:
        assert listener.drain_once() == 2
    assert cached(cache, table, 7) == Entry.value(1, b'"Ann"')
    assert cached(cache, table, 8) == Entry.value(1, b"null")


def test_delete_and_reinsert_never_go_back(table: Table, cache: Cache) -> None:
    with running(table.listener("write-through")):
        table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a')")
        table.sql("UPDATE {t} SET name = 'b' WHERE id = 1")
        table.sql("DELETE FROM {t} WHERE id = 1")
        wait_for(lambda: cached(cache, table, 1) == Entry.tombstone(3))
        table.sql("INSERT INTO {t} (id, name, version) VALUES (1, 'c', 0)")  # version is ours
        wait_for(lambda: (e := cached(cache, table, 1)) is not None and e.kind is Kind.VALUE)
    assert table.versions() == {"1": 4}
    assert (e := cached(cache, table, 1)) is not None and e.version == 4
    assert json.loads(e.payload)["name"] == "c"


def test_a_key_change_is_a_delete_plus_an_insert(table: Table, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a')")
    table.sql("UPDATE {t} SET id = 2 WHERE id = 1")
    with table.listener() as listener:
        assert listener.drain_once() == 3
    # Never fresh: the key was not cached, a newer entry may have been evicted (issue 9.5).
    assert cached(cache, table, 1) == Entry.tombstone(2, fresh=False), "the old key: deleted at v2"
    assert (e := cached(cache, table, 2)) is not None and (e.kind, e.version) == (Kind.VALUE, 2)
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'b')")
    assert table.versions() == {"1": 3, "2": 2}, "the old key comes back above its delete"


def test_a_writer_role_needs_no_rights_on_the_events_tables(table: Table, cache: Cache) -> None:
    role = f"wt_writer_{table.namespace}"
    table.sql(f"CREATE ROLE {role} LOGIN")
    try:
        table.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table.name} TO {role}")
        parts = urlsplit(table.url)
        as_role = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        try:
            writer = psycopg.connect(as_role, autocommit=True)
        except psycopg.OperationalError as exc:
            pytest.skip(f"cannot log in as a new role here: {exc}")
        with writer:
            writer.execute(f"INSERT INTO {table.name} (id, name) VALUES (1, 'a')")
            writer.execute(f"DELETE FROM {table.name} WHERE id = 1")
            writer.execute(f"INSERT INTO {table.name} (id, name) VALUES (1, 'b')")
    finally:
        table.sql(f"DROP OWNED BY {role}")
        table.sql(f"DROP ROLE {role}")
    with table.listener() as listener:
        assert listener.drain_once() == 3
    assert (e := cached(cache, table, 1)) is not None and (e.kind, e.version) == (Kind.VALUE, 3)


def test_a_reinsert_racing_the_delete_still_moves_past_it(table: Table) -> None:
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a')")
    table.sql("UPDATE {t} SET name = 'b' WHERE id = 1")
    with psycopg.connect(table.url) as deleter:
        deleter.execute(f"DELETE FROM {table.name} WHERE id = 1")  # version 3, not committed
        inserter = threading.Thread(target=table.sql,
                                    args=("INSERT INTO {t} (id, name) VALUES (1, 'c')",))
        inserter.start()  # its BEFORE trigger reads no floor yet; it waits on the unique index
        time.sleep(0.3)
        deleter.commit()
        inserter.join(10)
    assert table.versions() == {"1": 4}
    events = table.sql("SELECT version FROM writethrough_events WHERE namespace = %s "
                       "ORDER BY id", (table.namespace,))
    assert [v for (v,) in events] == [1, 2, 3, 4], "no event with a version that goes back"


def test_an_older_value_landing_on_an_evicted_key_is_corrected(table: Table, cache: Cache) -> None:
    """Race 6 with two listeners: L1 read v1 and stalls; L2 stores v2, which is evicted;
    L1's v1 then reaches the empty key -- it takes a writer lease there, reads the row
    again and fills what it finds: v2."""
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'v1')")
    stalled = FaultyCache(open_cache(table.cache_url))
    one = Listener(table.url, stalled, table.keyspace())  # type: ignore[arg-type]
    two = table.listener()
    try:
        gate = stalled.pause("write")
        drain = threading.Thread(target=one.drain_once)
        drain.start()
        assert gate.wait_reached(), "L1 claimed the v1 event, read the row, and stalls"
        table.sql("UPDATE {t} SET name = 'v2' WHERE id = 1")
        assert two.drain_once() == 1, "L2 skips L1's locked event and applies v2"
        assert (e := cached(cache, table, 1)) is not None and e.version == 2
        cache.delete(f"wt:{table.namespace}:1")  # evicted
        gate.release()
        drain.join(10)
        assert one.stats.values == 1 and one.stats.rechecked == 0
    finally:
        one.close()
        two.close()
        stalled.close()
    assert (e := cached(cache, table, 1)) is not None and e.kind is Kind.VALUE
    assert e.version == 2 and json.loads(e.payload)["name"] == "v2"


# -- durability: restarts, lost connections, a cache that is down -------------------------


def test_a_restarted_listener_catches_up(table: Table, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, 20) g")
    with running(table.listener()):
        wait_for(lambda: cache_matches_db(cache, table))
    for _ in range(3):  # nobody listening: NOTIFY goes nowhere, the events stay
        table.sql("UPDATE {t} SET balance = balance + 1")
    assert table.queued() == 60
    with running(table.listener()) as listener:
        wait_for(lambda: table.queued() == 0 and cache_matches_db(cache, table))
    assert listener.stats.applied == 60
    assert all(e is not None and e.version == 4 for e in (cached(cache, table, k)
                                                         for k in range(1, 21)))


def test_a_lost_connection_is_reconnected_and_caught_up(table: Table, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id, balance) VALUES (1, 0)")
    with running(table.listener()) as listener:
        wait_for(lambda: cache_matches_db(cache, table))
        app = f"wt-{table.namespace}"
        killed = table.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = %s AND pid <> pg_backend_pid()", (app,))
        assert len(killed) == 2, "the listening and the working connection"
        for _ in range(5):
            table.sql("UPDATE {t} SET balance = balance + 1 WHERE id = 1")
        wait_for(lambda: cache_matches_db(cache, table) and table.queued() == 0)
    assert listener.stats.reconnects >= 1
    assert (e := cached(cache, table, 1)) is not None and e.version == 6


def test_drain_raises_typed_errors_and_recovers(table: Table, cache: Cache) -> None:
    table.sql("INSERT INTO {t} (id) VALUES (1)")
    faulty = FaultyCache(open_cache(table.cache_url))
    listener = Listener(table.url, faulty, table.keyspace())  # type: ignore[arg-type]
    try:
        faulty.fail("write", CacheUnavailable("injected: cache down"))
        with pytest.raises(CacheUnavailable):
            listener.drain_once()
        assert table.queued() == 1, "rolled back: the event stays for the next try"
        faulty.heal()
        table.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name = %s AND pid <> pg_backend_pid()",
                  (f"wt-{table.namespace}",))
        with pytest.raises(SourceUnavailable):  # the database connection was lost
            listener.drain_once()
        assert listener.drain_once() == 1  # reconnected
    finally:
        listener.close()
        faulty.close()
    assert cache_matches_db(cache, table)


def test_bad_dsn_and_bad_settings_are_typed_errors(table: Table, redis_srv: RedisServer) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    spaces = table.keyspace()
    with pytest.raises(SourceUnavailable):
        Listener(down, redis_srv.url, spaces)
    with pytest.raises(SourceUnavailable):
        install_triggers(down, "t", "id", "ns")
    with pytest.raises(SourceUnavailable):
        Listener(urlunsplit(urlsplit(table.url)._replace(path="/no_such_db")), redis_srv.url,
                 spaces)
    with pytest.raises(ConfigError):
        Listener("mysql://x/y", redis_srv.url, spaces)
    with pytest.raises(ConfigError):
        Listener(table.url, redis_srv.url, {"other": spaces[table.namespace]})
    with pytest.raises(ConfigError):
        Keyspace("ns", "t; DROP TABLE x", "id")
    with pytest.raises(ConfigError):
        Keyspace("ns", "t", "id", "sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no table"):
        install_triggers(table.url, "no_such_table", "id", "ns")
    with pytest.raises(ConfigError, match="unique"):
        install_triggers(table.url, table.name, "name", table.namespace)
    with pytest.raises(ConfigError, match="no column"):
        install_triggers(table.url, table.name, "nope", table.namespace)


def test_install_is_idempotent_and_uninstall_stops_events(table: Table) -> None:
    again = install_triggers(table.url, table.name, "id", table.namespace)
    assert not again.added_version_column
    table.sql("INSERT INTO {t} (id) VALUES (1)")
    assert table.queued() == 1, "one event per change, not one per install"
    assert uninstall_triggers(table.url, table.name)
    table.sql("UPDATE {t} SET name = 'x' WHERE id = 1")
    assert table.queued() == 1
    assert not uninstall_triggers(table.url, table.name)


# -- several listeners, and the lag under load ---------------------------------------------


def _write_load(t: Table, updates: int, keys: int, rate: float, writers: int = 1) -> None:
    """``updates`` single-row UPDATEs at a fixed total ``rate``/s from ``writers`` threads."""
    counter = itertools.count()
    start = time.monotonic()

    def write() -> None:
        with psycopg.connect(t.url, autocommit=True) as conn:
            while (i := next(counter)) < updates:
                if (delay := start + i / rate - time.monotonic()) > 0:
                    time.sleep(delay)
                conn.execute(f"UPDATE {t.name} SET balance = balance + 1 WHERE id = %s",
                             (i % keys + 1,))

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_listeners_share_the_work(table: Table, cache: Cache) -> None:
    keys, updates = 50, 1500
    table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, %s) g", (keys,))
    one, two = table.listener(batch_size=20), table.listener(batch_size=20)
    with running(one), running(two):
        _write_load(table, updates, keys, rate=1500, writers=3)
        wait_for(lambda: table.queued() == 0 and cache_matches_db(cache, table), timeout=20)
    print(f"\nconcurrent listeners applied {one.stats.applied} + {two.stats.applied} events; "
          f"superseded {one.stats.superseded} + {two.stats.superseded}; "
          f"re-checked {one.stats.rechecked} + {two.stats.rechecked}")
    assert one.stats.applied + two.stats.applied == keys + updates, "each event exactly once"
    assert sum(table.versions().values()) == keys + updates


def test_lag_under_a_steady_write_load(table: Table, cache: Cache) -> None:
    keys, updates, rate = 100, 2000, 500.0
    table.sql("INSERT INTO {t} (id, balance) SELECT g, 0 FROM generate_series(1, %s) g", (keys,))
    with table.listener() as warm:
        assert warm.drain_once() == keys  # the inserts: not part of the steady load
    with running(table.listener()) as listener:
        _write_load(table, updates, keys, rate)
        wait_for(lambda: table.queued() == 0 and cache_matches_db(cache, table))
    lag = listener.lag_percentiles()
    print(f"\nlag from commit to cache write, {updates} updates at {rate:.0f}/s over {keys} keys: "
          f"p50 {lag.p50 * 1000:.2f} ms, p99 {lag.p99 * 1000:.2f} ms, max {lag.max * 1000:.2f} ms "
          f"({listener.stats.batches} batches)")
    assert listener.stats.applied == updates == lag.count


# -- the command line ----------------------------------------------------------------------


def test_cli_install_triggers_and_listen_once(
    postgres_srv: PostgresServer, table: Table, cache: Cache, capsys: pytest.CaptureFixture[str]
) -> None:
    uninstall_triggers(table.url, table.name)
    common = ["--source", postgres_srv.url, "--table", table.name, "--key-column", "id",
              "--namespace", table.namespace]
    assert cli_main(["install-triggers", *common]) == 0
    assert "triggers installed on public." in capsys.readouterr().out
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a'), (2, 'b')")
    table.sql("UPDATE {t} SET name = 'c' WHERE id = 2")
    assert cli_main(["listen", *common, "--cache", table.cache_url, "--strategy",
                     "write-through", "--once"]) == 0
    out = capsys.readouterr().out
    assert "applied 3 event(s)" in out and "lag p50" in out
    assert cache_matches_db(cache, table)
    bad = ["listen", *common, "--cache", table.cache_url, "--once", "--table", "x;y"]
    assert cli_main(bad) == 2
    assert "not a plain SQL identifier" in capsys.readouterr().err
