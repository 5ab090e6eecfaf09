"""A store over the application's own table (issue 10): reads by key with the table's own
versions, refuses writes, ties a namespace to its table; one row encoding for every writer.
Real PostgreSQL (and SQLite) and Redis."""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

import writethrough
from conftest import unique_namespace
from servers import PostgresServer, RedisServer
from tables import pg_table, roomy
from writethrough import ConfigError, ReadOnlyTableError, Table
from writethrough.events import Keyspace, Listener
from writethrough.integrations.pending import row_value
from writethrough.sources.registry import Claim, Verdict, cache_version, judge
from writethrough.sources.rowcodec import json_value


def test_table_spec_checks() -> None:
    with pytest.raises(ConfigError):
        Table("users; drop")
    with pytest.raises(ConfigError):
        Table("users", key="version")
    with pytest.raises(ConfigError):
        Table("users", columns=("a", "a"))
    with pytest.raises(ConfigError):
        Table("users", columns=("a",), value_column="b")
    assert Table("app.users", columns=["id", "name"]).columns == ("id", "name")


def test_registry_judges_claims() -> None:
    mine = Claim("users", "public.users", "id", 10, "id bigint, name text")
    assert judge(None, mine) is Verdict.NEW
    assert judge(mine, mine) is Verdict.SAME
    assert judge(mine, Claim("users", "public.users", "id", 11, mine.signature)) is Verdict.CHANGED
    assert judge(mine, Claim("users", "public.users", "id", 10, "id bigint")) is Verdict.CHANGED
    assert cache_version(0, 7) == 7
    with pytest.raises(ConfigError, match=r"holds rows of table 'public\.users'"):
        judge(mine, Claim("users", "public.orders", "id", 12, "x"))


@pytest.mark.postgres
def test_pg_table_store_reads_rows_by_key(postgres_srv: PostgresServer) -> None:
    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name, balance) VALUES (42, 'Alice', 400.50)")
        t.sql("UPDATE {t} SET balance = 500 WHERE id = 42")
        with writethrough.open(postgres_srv.url, "memory://", namespace=t.namespace,
                               table=Table(t.name, columns=("id", "name", "balance"))) as store:
            found = store.get_versioned("42")
            v42 = t.version(42)
            assert found == writethrough.Versioned({"id": 42, "name": "Alice", "balance": 500.0},
                                                   v42)
            assert store.get("42") == found.value  # the fill landed: a hit
            assert store.stats.hits == 1 and store.stats.source_reads == 1
            assert store.get("7") is None
            with pytest.raises(writethrough.InvalidKeyError, match="not a bigint"):
                store.get("not-a-number")
            with pytest.raises(ReadOnlyTableError, match="apply_write"):
                store.put("42", {"name": "Bob"})
            with pytest.raises(ReadOnlyTableError):
                store.delete("42")
            assert t.version(42) == v42  # nothing written
        with writethrough.open(postgres_srv.url, "memory://", namespace=t.namespace,
                               table=Table(t.name, value_column="name")) as one:
            assert one.get("42") == "Alice"


@pytest.mark.postgres
def test_pg_table_store_async(postgres_srv: PostgresServer, loop_thread: Any) -> None:
    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'Ann')")

        async def run() -> Any:
            async with writethrough.open_async(postgres_srv.url, "memory://",
                                               namespace=t.namespace, table=Table(t.name)) as s:
                first = await s.get("1")
                with pytest.raises(ReadOnlyTableError):
                    await s.put("1", {})
                return first, await s.get("1"), s.stats.source_reads

        first, second, reads = loop_thread.run(run())
        assert first == second == {"id": 1, "name": "Ann", "balance": None,
                                   "version": t.version(1)}
        assert reads == 1


@pytest.mark.postgres
def test_namespace_of_another_table_is_refused(postgres_srv: PostgresServer) -> None:
    with pg_table(postgres_srv.url) as users, pg_table(postgres_srv.url) as orders:
        with writethrough.open(postgres_srv.url, "memory://", namespace=users.namespace,
                               table=Table(users.name)):
            pass
        with pytest.raises(ConfigError, match="holds rows of table"):
            writethrough.open(postgres_srv.url, "memory://", namespace=users.namespace,
                              table=Table(orders.name))
        with pytest.raises(ConfigError, match="key"):
            writethrough.open(postgres_srv.url, "memory://", namespace=users.namespace,
                              table=Table(users.name, key="name"))


@pytest.mark.postgres
def test_missing_table_or_columns_are_config_errors(postgres_srv: PostgresServer) -> None:
    with pytest.raises(ConfigError, match="no table"):
        writethrough.open(postgres_srv.url, "memory://", namespace=unique_namespace(),
                          table=Table("t10_no_such_table"))
    with pg_table(postgres_srv.url) as t:
        with pytest.raises(ConfigError, match="no column"):
            writethrough.open(postgres_srv.url, "memory://", namespace=t.namespace,
                              table=Table(t.name, columns=("id", "nope")))
        with pytest.raises(ConfigError, match="install the triggers"):
            writethrough.open(postgres_srv.url, "memory://", namespace=t.namespace,
                              table=Table(t.name, version="row_version"))


@pytest.mark.postgres
@pytest.mark.parametrize("change", ["recreate", "add-column"])
def test_recreated_or_altered_table_bumps_the_epoch(postgres_srv: PostgresServer,
                                                    change: str) -> None:
    """A re-create (versions restart at 1) or an ADD COLUMN (old entries lack it) is seen
    by the registry when a store opens: the namespace's epoch goes up."""
    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'old')")
        t.sql("UPDATE {t} SET name = 'old2' WHERE id = 1")
        cache = writethrough.caches.open_cache("memory://")
        spec = Table(t.name)
        with writethrough.open(postgres_srv.url, "memory://", namespace=t.namespace,
                               table=spec) as before:
            assert before.get_versioned("1").version == t.version(1)  # type: ignore[union-attr]
        if change == "recreate":
            t.sql("DROP TABLE {t}")
            t.sql("CREATE TABLE {t} (id bigint PRIMARY KEY, name text, balance numeric(12,2))")
            from writethrough.events import install_triggers

            install_triggers(postgres_srv.url, t.name, "id", t.namespace)
            t.sql("INSERT INTO {t} (id, name) VALUES (1, 'new')")
        else:
            t.sql("ALTER TABLE {t} ADD COLUMN email text")
        with writethrough.open(postgres_srv.url, "memory://", namespace=t.namespace,
                               table=spec) as after:
            assert after.source.claim_verdict is Verdict.CHANGED
            assert after.source.last_epoch > before.source.last_epoch
            found = after.get_versioned("1")
            assert found is not None
            assert found.value["name"] == ("new" if change == "recreate" else "old2")
            assert ("email" in found.value) == (change == "add-column")
        cache.close()


@pytest.mark.postgres
def test_types_encode_alike_from_the_table_and_from_python(postgres_srv: PostgresServer) -> None:
    """One encoding: the value the table source reads (server-side JSON) equals the value
    built from the Python objects psycopg returns for the same row (what the after-commit
    integrations hand to apply_write)."""
    cols = ("n numeric(12,2), n0 numeric, i int, f float8, b bool, ts timestamptz, "
            "tsn timestamp, d date, tm time, by bytea, u uuid, j jsonb, a int[], txt text")
    with pg_table(postgres_srv.url, cols) as t:
        t.sql("SET TimeZone = 'Asia/Kolkata'")
        rows = [
            "(1, 400.50, 12, 7, 1.25, true, '2026-12-02 10:00:00.5+05:30', "
            "'2026-12-02 10:00:00.120', '2026-12-02', '10:11:12.5', '\\x00ff41', "
            "'6f1c3c58-0000-4000-8000-000000000001', '{\"a\": [1, 2.5, null]}', '{1,2}', 'x')",
            "(2, NULL, NULL, NULL, 'NaN', false, '2026-12-02 10:00:00+00', "
            "'2026-12-02 00:00:00', NULL, NULL, '', NULL, 'null', '{}', '')",
        ]
        for values in rows:
            t.sql(f"INSERT INTO {{t}} (id, n, n0, i, f, b, ts, tsn, d, tm, by, u, j, a, txt) "
                  f"VALUES {values}")
        with writethrough.open(postgres_srv.url, "memory://", namespace=t.namespace,
                               table=Table(t.name)) as store, \
                psycopg.connect(postgres_srv.url) as conn:
            conn.execute("SET TimeZone = 'America/New_York'")  # the app's own session
            for key in (1, 2):
                cur = conn.execute(f"SELECT * FROM {t.name} WHERE id = %s", (key,))
                names = [c.name for c in cur.description or ()]
                typed = dict(zip(names, cur.fetchone() or (), strict=True))
                assert store.get(str(key)) == orjson.loads(orjson.dumps(row_value(store, typed)))
    assert json_value(Decimal("400")) == 400 and json_value(Decimal("400.00")) == 400.0
    assert json_value(dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC)) == "2026-01-01T10:00:00+00:00"
    assert json_value(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    with pytest.raises(writethrough.InvalidValueError):
        json_value(object())


@pytest.mark.postgres
@pytest.mark.redis
def test_listener_and_store_share_entries(postgres_srv: PostgresServer,
                                          redis_srv: RedisServer) -> None:
    """Listener writes -> store reads; store writes -> listener supersedes; eviction ->
    the store refills from the real row."""
    with pg_table(postgres_srv.url) as t:
        spaces = {t.namespace: Keyspace(t.namespace, t.name, "id", "write-through")}
        with writethrough.open(postgres_srv.url, roomy(redis_srv.url), namespace=t.namespace,
                               table=Table(t.name)) as store, \
                Listener(postgres_srv.url, roomy(redis_srv.url), spaces) as listener:
            # 1. a raw SQL write, applied by the listener; the store reads it as a hit
            t.sql("INSERT INTO {t} (id, name, balance) VALUES (5, 'raw', 1.5)")
            listener.drain_once()
            assert store.get("5") == {"id": 5, "name": "raw", "balance": 1.5,
                                      "version": t.version(5)}
            assert store.stats.hits == 1 and store.stats.source_reads == 0
            # 2. the application's own write (after commit); the listener then sees an
            #    event of the same version and supersedes nothing newer
            with psycopg.connect(postgres_srv.url) as conn:
                with conn.transaction():
                    row = conn.execute(f"UPDATE {t.name} SET name = 'app' WHERE id = 5 "
                                       "RETURNING *").fetchone()
                    cols = [c.name for c in conn.execute(
                        f"SELECT * FROM {t.name} LIMIT 0").description or ()]
                version = int(row[cols.index("version")])  # type: ignore[index]
                result = store.apply_write("5", version, row_value(
                    store, dict(zip(cols, row or (), strict=True))))
            assert result.cache is writethrough.CacheOutcome.UPDATED and version == t.version(5)
            before = listener.stats.superseded
            listener.drain_once()
            assert listener.stats.superseded == before + 1
            assert store.get("5") == {"id": 5, "name": "app", "balance": 1.5, "version": version}
            # 3. eviction: the key is gone; the store refills from the table
            store.cache.delete(f"wt:{t.namespace}:5")
            reads = store.stats.source_reads
            assert store.get("5")["name"] == "app"
            assert store.stats.source_reads == reads + 1
            assert store.get("5")["name"] == "app" and store.stats.source_reads == reads + 1


def test_sqlite_table_store(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, pic BLOB, "
                   "version INTEGER NOT NULL DEFAULT 1)")
        db.execute("INSERT INTO users (id, name, pic) VALUES (1, 'Ann', x'4142')")
    ns = unique_namespace()
    with writethrough.open(f"sqlite:///{path}", "memory://", namespace=ns,
                           table=Table("users")) as store:
        assert store.get("1") == {"id": 1, "name": "Ann", "pic": "\\x4142", "version": 1}
        assert store.get("2") is None
        with pytest.raises(ReadOnlyTableError):
            store.put("1", {"name": "x"})
        with sqlite3.connect(path) as db:
            version = db.execute("UPDATE users SET name = 'Bo', version = version + 1 "
                                 "WHERE id = 1 RETURNING version").fetchone()[0]
        assert store.apply_write("1", version, {"id": 1, "name": "Bo", "pic": "\\x4142",
                                                "version": version}).cache.value == "updated"
        assert store.get("1")["name"] == "Bo"
    with pytest.raises(ConfigError, match="holds rows of table"):
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE other (id INTEGER PRIMARY KEY, version INTEGER)")
        writethrough.open(f"sqlite:///{path}", "memory://", namespace=ns, table=Table("other"))
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE users ADD COLUMN email TEXT")
    with writethrough.open(f"sqlite:///{path}", "memory://", namespace=ns,
                           table=Table("users")) as again:
        assert again.source.claim_verdict is Verdict.CHANGED and again.source.last_epoch > 0
        assert again.get("1")["email"] is None
