"""Change capture and the stores over one table, together (issues 10 and 11): a namespace
belongs to one table whoever opens it, the listener caches a row exactly as the table
source and the ORM integrations do, and a TRUNCATE leaves nothing of the old table to
serve. Real PostgreSQL (logical decoding on a throwaway cluster, triggers on the shared
server) and Redis; both capture modes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import writethrough
from conftest import unique_namespace
from servers import PostgresServer, RedisServer
from tables import pg_table
from test_capture import (
    ROOMY,
    Captured,
    Listener,
    cached,
    captured_table,
    running,
    wait_for,
)
from writethrough import ConfigError, Table
from writethrough.caches import open_cache
from writethrough.caches.base import Cache
from writethrough.capture import Keyspace, LogicalListener, TriggerListener, install
from writethrough.capture.pg import PgTarget
from writethrough.cli import main as cli_main
from writethrough.epochs import split
from writethrough.integrations.pending import row_value
from writethrough.sources.registry import Verdict
from writethrough.sources.rowcodec import pg_session_options

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
REFUSED = "holds rows of table"


@pytest.fixture(params=["logical", "triggers"])
def captured(request: pytest.FixtureRequest, redis_srv: RedisServer) -> Iterator[Captured]:
    server: PostgresServer = request.getfixturevalue(
        "logical_pg" if request.param == "logical" else "postgres_srv")
    columns = ", ts timestamptz, tsn timestamp, f float8, by bytea, d date, n numeric(12,2)"
    with captured_table(request.param, server.url, redis_srv.url + ROOMY, columns) as t:
        yield t


@pytest.fixture
def cache(redis_srv: RedisServer) -> Iterator[Cache]:
    c = open_cache(redis_srv.url + ROOMY)
    yield c
    c.close()


def listen(t: Captured, spaces: dict[str, Keyspace], url: str | None = None) -> Listener:
    """A listener of ``t``'s mode (and group) over ``spaces``."""
    made: Listener
    if t.mode == "logical":
        made = LogicalListener(url or t.url, t.cache_url, spaces, group=t.group,
                               standby_interval=0.2)
    else:
        made = TriggerListener(url or t.url, t.cache_url, spaces, poll_interval=0.05)
    t.made.append(made)
    return made


def registry_row(t: Captured, namespace: str) -> list[Any]:
    return t.sql("SELECT table_name, key_column FROM writethrough_namespaces "
                 "WHERE namespace = %s", (namespace,))


# -- 1. a namespace belongs to one table ---------------------------------------------------


def test_a_store_on_a_listeners_namespace_is_refused(captured: Captured) -> None:
    t = captured
    with t.listener():
        assert registry_row(t, t.namespace) == [(f"public.{t.name}", "id")]
        # the key-value store (table writethrough_items, key "key") on the listener's
        # namespace: before, a hit returned the listener's row and a miss read the
        # library's own table
        with pytest.raises(ConfigError, match=REFUSED):
            writethrough.open(t.url, "memory://", namespace=t.namespace)
        # a table store over another table
        with pg_table(t.url) as other, pytest.raises(ConfigError, match=REFUSED):
            writethrough.open(t.url, "memory://", namespace=t.namespace,
                              table=Table(other.name))
        with pytest.raises(ConfigError, match="key"):  # the same table, another key
            writethrough.open(t.url, "memory://", namespace=t.namespace,
                              table=Table(t.name, key="name"))

        async def kv() -> None:
            async with writethrough.open_async(t.url, "memory://", namespace=t.namespace):
                pass  # pragma: no cover - refused

        with pytest.raises(ConfigError, match=REFUSED):
            asyncio.run(kv())
    assert registry_row(t, t.namespace) == [(f"public.{t.name}", "id")], "nothing changed"


def test_a_listener_on_a_stores_namespace_is_refused(captured: Captured) -> None:
    t = captured
    epoch = t.epoch()
    # the namespace of a key-value store
    kv = unique_namespace("kv")
    with writethrough.open(t.url, "memory://", namespace=kv) as store:
        store.put("a", 1)
    with pytest.raises(ConfigError, match=REFUSED):
        listen(t, {kv: Keyspace(kv, t.name, "id", "write-through")})
    # the namespace of a table store over another table
    with pg_table(t.url) as other:
        with writethrough.open(t.url, "memory://", namespace=other.namespace,
                               table=Table(other.name)):
            pass
        with pytest.raises(ConfigError, match=REFUSED):
            listen(t, {other.namespace: Keyspace(other.namespace, t.name, "id")})
        # one keyspace refused: the listener starts with none of them
        mixed = {t.namespace: Keyspace(t.namespace, t.name, "id"),
                 other.namespace: Keyspace(other.namespace, t.name, "id")}
        with pytest.raises(ConfigError, match=REFUSED):
            listen(t, mixed)
        assert registry_row(t, other.namespace) == [(f"public.{other.name}", "id")]
    assert t.epoch() == epoch
    t.sql("DELETE FROM writethrough_namespaces WHERE namespace = %s", (kv,))


def test_stores_and_listeners_on_the_same_table_share_its_namespace(captured: Captured,
                                                                    cache: Cache) -> None:
    """Allowed, and no claim takes the table for a changed one: the listener and the
    table source describe the table alike (no epoch bump, no flush)."""
    t = captured
    t.sql("INSERT INTO {t} (id, name) VALUES (1, 'a')")
    epoch = t.epoch()
    with t.listener() as first, t.listener() as second, \
            writethrough.open(t.url, t.cache_url, namespace=t.namespace,
                              table=Table(t.name)) as store, \
            writethrough.open(t.url, t.cache_url, namespace=t.namespace,
                              table=Table(t.name, value_column="name")) as names:
        assert store.source.claim_verdict is Verdict.SAME
        assert names.source.claim_verdict is Verdict.SAME
        first.drain_once()
        assert store.get("1")["name"] == "a" and store.stats.source_reads == 0
        t.sql("UPDATE {t} SET name = 'b' WHERE id = 1")
        if t.mode == "logical":
            first.close()  # one listener of a group streams at a time: hand over
        second.drain_once()
        assert store.get("1")["name"] == "b"
        assert first.stats.flushed == second.stats.flushed == 0
    assert t.epoch() == epoch, "nobody bumped the epoch"
    assert cached(cache, t, 1) is not None


def test_a_listener_started_on_a_recreated_table_bumps_the_epoch_and_flushes(
        captured: Captured, cache: Cache) -> None:
    t = captured
    t.sql("INSERT INTO {t} (id, name) SELECT g, 'old' FROM generate_series(1, 3) g")
    with t.listener() as listener:
        listener.drain_once()
    assert all(cached(cache, t, k) is not None for k in (1, 2, 3))
    before = t.epoch()
    recreate(t)
    with t.listener() as again:
        assert t.epoch() > before
        assert [cached(cache, t, k) for k in (1, 2, 3)] == [None, None, None]
        assert again.stats.flushed == 3
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'new')")
        again.drain_once()
    entry = cached(cache, t, 1)
    assert entry is not None and split(entry.version)[0] == t.epoch()
    assert json.loads(entry.payload)["name"] == "new"


def recreate(t: Captured) -> None:
    """DROP the table, CREATE it again (the same name and columns), install capture again."""
    t.sql("DROP TABLE {t}")
    t.sql("CREATE TABLE {t} (id int PRIMARY KEY, name text, balance int, ts timestamptz, "
          "tsn timestamp, f float8, by bytea, d date, n numeric(12,2))")
    install(t.url, t.name, "id", capture="logical" if t.mode == "logical" else "triggers")


def test_a_running_listener_follows_a_recreated_table(captured: Captured,
                                                      cache: Cache) -> None:
    """Dropped and created again under a running listener: logical capture sees the new
    OID in the stream, triggers capture at its next full scan; either claims the
    namespace anew (the epoch bumped), flushes it, and applies the new table's changes."""
    t = captured
    t.sql("INSERT INTO {t} (id, name) SELECT g, 'old' FROM generate_series(1, 3) g")
    with t.listener(rescan_interval=0.05) if t.mode == "triggers" else t.listener() as listener:
        listener.drain_once()
        assert all(cached(cache, t, k) is not None for k in (1, 2, 3))
        before = t.epoch()
        recreate(t)
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'new')")
        time.sleep(0.1)  # past the rescan interval
        listener.drain_once()
        assert t.epoch() > before
        assert [cached(cache, t, k) for k in (2, 3)] == [None, None]
        assert listener.stats.flushed == 3
        entry = cached(cache, t, 1)
        assert entry is not None and split(entry.version)[0] == t.epoch()
        assert json.loads(entry.payload)["name"] == "new"
        t.sql("UPDATE {t} SET name = 'newer' WHERE id = 1")
        listener.drain_once()
        entry = cached(cache, t, 1)
        assert entry is not None and json.loads(entry.payload)["name"] == "newer"
    assert registry_row(t, t.namespace) == [(f"public.{t.name}", "id")]


# -- 2. one encoding, whatever the session's settings ---------------------------------------

# A role or a database may set these (ALTER ROLE ... SET TimeZone ...); here PGOPTIONS
# does, for every libpq session of this process that does not set options itself.
HOSTILE = ("-c TimeZone=Asia/Kolkata -c extra_float_digits=0 -c bytea_output=escape "
           "-c DateStyle=SQL,DMY -c IntervalStyle=sql_standard")


def test_the_listener_caches_a_row_as_the_table_source_and_the_integrations_do(
        captured: Captured, cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    t = captured
    monkeypatch.setenv("PGOPTIONS", HOSTILE)
    with psycopg.connect(t.url) as conn:  # the settings do reach a session
        assert conn.execute("SELECT to_json('2026-12-02 10:00+00'::timestamptz)::text, "
                            "to_json(0.1::float8 + 0.2::float8)::text").fetchone() == (
            '"2026-12-02T15:30:00+05:30"', "0.3")
    t.sql("INSERT INTO {t} (id, name, ts, tsn, f, by, d, n) VALUES (1, 'x', "
          "'2026-12-02 10:00:00.5+05:30', '2026-12-02 10:00:00.12', 0.1::float8 + 0.2::float8, "
          "'\\x00ff41', '2026-12-02', 400.50)")
    with t.listener() as listener:
        listener.drain_once()
    entry = cached(cache, t, 1)
    assert entry is not None
    by_listener = orjson.loads(entry.payload)
    assert by_listener["ts"] == "2026-12-02T04:30:00.5+00:00"  # UTC, as rowcodec says
    assert by_listener["f"] == 0.1 + 0.2  # exact, not 0.3
    assert by_listener["by"] == "\\x00ff41"
    assert by_listener["d"] == "2026-12-02" and by_listener["tsn"] == "2026-12-02T10:00:00.12"
    with writethrough.open(t.url, t.cache_url, namespace=t.namespace,
                           table=Table(t.name)) as store:
        cache.delete(f"wt:{t.namespace}:1")
        reads = store.stats.source_reads
        by_table_source = store.get("1")
        assert store.stats.source_reads == reads + 1
        assert by_table_source == by_listener
        # What the psycopg / SQLAlchemy / Django integrations hand to apply_write: the
        # Python values of the application's own session (another time zone).
        with psycopg.connect(t.url, options="-c TimeZone=America/New_York") as app:
            cur = app.execute(f"SELECT * FROM {t.name} WHERE id = 1")
            names = [c.name for c in cur.description or ()]
            typed = dict(zip(names, cur.fetchone() or (), strict=True))
        assert orjson.loads(orjson.dumps(row_value(store, typed))) == by_listener


def test_capture_connections_keep_the_urls_options_and_pin_the_encodings() -> None:
    target = PgTarget.parse("postgresql://u@db/app?options=-c%20search_path%3Dapp%2Cpublic"
                            "%20-c%20TimeZone%3DEurope/Paris&table=ignored")
    options = conninfo_to_dict(target.conninfo)["options"]
    assert options.startswith("-c search_path=app,public -c TimeZone=Europe/Paris ")
    assert options.endswith(pg_session_options()), "last: over the URL's own"
    assert "TimeZone=UTC" in pg_session_options() and "bytea_output=hex" in options


# -- 3. TRUNCATE: nothing of the old table is served ----------------------------------------


def test_truncate_and_reinsert_a_store_reads_the_new_rows(captured: Captured,
                                                          cache: Cache) -> None:
    """The store checks the epoch rarely (epoch_refresh=600 s): it has not seen the
    TRUNCATE's new epoch, and would serve the old entries it still takes for current --
    unless the listener flushed them."""
    t = captured
    t.sql("INSERT INTO {t} (id, name) SELECT g, 'old' FROM generate_series(1, 5) g")
    with writethrough.open(t.url, t.cache_url, namespace=t.namespace, table=Table(t.name),
                           epoch_refresh=600) as store, running(t.listener()) as listener:
        wait_for(lambda: all(cached(cache, t, k) is not None for k in range(1, 6)))
        assert [store.get(str(k))["name"] for k in range(1, 6)] == ["old"] * 5
        assert store.stats.hits == 5, "the listener's entries, read as current"
        before = t.epoch()
        t.sql("TRUNCATE {t}")
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'new1'), (2, 'new2')")

        def applied() -> bool:
            """the TRUNCATE and the re-insert applied"""
            entry = cached(cache, t, 2)
            return listener.stats.truncates == 1 and entry is not None and \
                json.loads(entry.payload)["name"] == "new2"

        wait_for(applied)
        assert t.epoch() > before
        assert listener.stats.flushed >= 5
        # The keys without a new row first: a read of a re-inserted key finds an entry of
        # the new epoch, reads the row and so learns the epoch.
        found = [store.get(str(k)) for k in (3, 4, 5, 1, 2)]
        assert [row and row["name"] for row in found] == [None, None, None, "new1", "new2"]


def test_the_epoch_command_bumps_a_tables_namespace_without_claiming_it(
        captured: Captured) -> None:
    """``writethrough epoch --namespace`` (after a TRUNCATE by hand) opens no store: it
    neither claims the namespace for the key-value table nor is refused."""
    t = captured
    with t.listener():
        pass  # the namespace is the table's
    before = t.epoch()
    assert cli_main(["epoch", "--source", t.url, "--namespace", t.namespace, "--bump"]) == 0
    assert t.epoch() > before
    assert registry_row(t, t.namespace) == [(f"public.{t.name}", "id")]
