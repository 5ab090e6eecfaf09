"""After-commit write-through for your own psycopg transactions (issue 10): commit,
rollback, savepoints, nesting, a failed cache -- real PostgreSQL and Redis (the failed
cache is the project's fault proxy in front of the real Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

import writethrough
from servers import PostgresServer, RedisServer
from tables import PgTable, pg_table, roomy
from writethrough import CacheOutcome, ConfigError, Table
from writethrough.integrations.psycopg import async_cache_transaction, cache_transaction
from writethrough.tools.faultproxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def table(postgres_srv: PostgresServer) -> Iterator[PgTable]:
    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name, balance) VALUES (42, 'Alice', 500)")
        yield t


def _store(t: PgTable, cache: str, **options: Any) -> writethrough.Store:
    return writethrough.open(t.url, cache, namespace=t.namespace,
                             table=Table(t.name, columns=("id", "name", "balance")), **options)


def _update(conn: psycopg.Connection[Any], tx: Any, t: PgTable, balance: int) -> None:
    row = conn.execute(sql.SQL("UPDATE {} SET balance = %s WHERE id = 42 RETURNING {}").format(
        sql.Identifier(t.name), tx.returning()), (balance,)).fetchone()
    tx.returned(row)


def test_commit_updates_the_cache_with_the_committed_version(table: PgTable,
                                                              redis_srv: RedisServer) -> None:
    with _store(table, roomy(redis_srv.url)) as store, psycopg.connect(table.url) as conn:
        assert store.get("42")["balance"] == 500  # cached, version 1
        with cache_transaction(conn, store) as tx:
            _update(conn, tx, table, 400)
            assert store.get("42")["balance"] == 500  # not committed: nothing applied yet
        assert [(r.key, r.version, r.cache) for r in tx.results] == [
            ("42", table.version(42), CacheOutcome.UPDATED)]
        last = table.version(42)
        assert last is not None
        reads = store.stats.source_reads
        assert store.get("42") == {"id": 42, "name": "Alice", "balance": 400}
        assert store.stats.source_reads == reads  # a hit: no DB query after the write
        # a delete: DELETE ... RETURNING version; the delete's own version is one more
        with cache_transaction(conn, store) as tx:
            row = conn.execute(f"DELETE FROM {table.name} WHERE id = 42 RETURNING version"
                               ).fetchone()
            tx.deleted(42, row[0])  # type: ignore[index]
        assert tx.results[0].version == last + 1  # the delete's own version
        assert tx.results[0].cache is CacheOutcome.INVALIDATED
        assert store.get("42") is None


def test_rollback_applies_nothing(table: PgTable, redis_srv: RedisServer) -> None:
    with _store(table, roomy(redis_srv.url)) as store, psycopg.connect(table.url) as conn:
        store.get("42")
        before = table.version(42)
        writes = store.stats.cache_writes
        with pytest.raises(RuntimeError), cache_transaction(conn, store) as tx:
            _update(conn, tx, table, 1)
            raise RuntimeError("the application changes its mind")
        assert tx.results == [] and store.stats.cache_writes == writes
        assert store.get("42")["balance"] == 500 and table.version(42) == before


def test_savepoints_and_nesting(table: PgTable, redis_srv: RedisServer) -> None:
    with _store(table, roomy(redis_srv.url)) as store, psycopg.connect(table.url) as conn:
        store.get("42")  # cached: a write-through onto it stores the value
        with cache_transaction(conn, store) as outer:
            _update(conn, outer, table, 450)  # version 2
            with pytest.raises(RuntimeError), outer.savepoint() as inner:
                _update(conn, inner, table, 1)  # version 3, rolled back with the savepoint
                raise RuntimeError
            with cache_transaction(conn, store) as kept:  # a savepoint that is released
                row = conn.execute(f"UPDATE {table.name} SET name = 'Al' WHERE id = 42 "
                                   "RETURNING id, version, name, balance").fetchone()
                assert row is not None
                kept.wrote(row[0], row[1], {"id": row[0], "name": row[2], "balance": row[3]})
            assert kept.results == []  # applied by the outermost block only
            # a plain psycopg savepoint the integration cannot follow is refused
            with pytest.raises(ConfigError, match="savepoint"), conn.transaction():
                _update(conn, outer, table, 2)
        assert [(r.version, r.cache) for r in outer.results] == [
            (table.version(42), CacheOutcome.UPDATED)]
        assert store.get("42") == {"id": 42, "name": "Al", "balance": 450}
        # opened inside a transaction it did not start: refused (it would miss the COMMIT)
        with conn.transaction(), pytest.raises(ConfigError, match="outermost"), \
                cache_transaction(conn, store):
            pass


def test_failed_cache_is_pending_repair_and_read_your_writes(table: PgTable,
                                                             redis_srv: RedisServer) -> None:
    port = urlsplit(redis_srv.url).port
    assert port is not None
    with FaultProxy("127.0.0.1", port) as proxy:
        cache = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.05"
        with _store(table, cache, write_budget=0.05, repair_interval=0.05) as store, \
                writethrough.open(table.url, roomy(redis_srv.url), namespace=table.namespace,
                                  table=Table(table.name, columns=("id", "name", "balance"))
                                  ) as other, psycopg.connect(table.url) as conn:
            assert store.get("42")["balance"] == 500
            proxy.blackhole()
            with cache_transaction(conn, store) as tx:
                _update(conn, tx, table, 400)
            assert tx.results[0].cache is CacheOutcome.PENDING_REPAIR
            assert store.get("42")["balance"] == 400  # this process reads its own write
            assert other.get("42")["balance"] == 500  # others: until the repair lands
            proxy.pass_through()
            for _ in range(200):
                if other.get("42")["balance"] == 400:
                    break
                store.repair_once()
            assert other.get("42")["balance"] == 400


def test_async_cache_transaction(table: PgTable, redis_srv: RedisServer) -> None:
    async def run() -> tuple[Any, Any, Any]:
        async with writethrough.open_async(
                table.url, roomy(redis_srv.url), namespace=table.namespace,
                table=Table(table.name, columns=("id", "name", "balance"))) as store, \
                await psycopg.AsyncConnection.connect(table.url) as conn:
            await store.get("42")
            async with async_cache_transaction(conn, store) as tx:
                cur = await conn.execute(sql.SQL(
                    "UPDATE {} SET balance = 7 WHERE id = 42 RETURNING {}").format(
                    sql.Identifier(table.name), tx.returning()))
                tx.returned(await cur.fetchone())
            with pytest.raises(RuntimeError):
                async with async_cache_transaction(conn, store) as rolled:
                    cur = await conn.execute(sql.SQL(
                        "UPDATE {} SET balance = 8 WHERE id = 42 RETURNING {}").format(
                        sql.Identifier(table.name), rolled.returning()))
                    rolled.returned(await cur.fetchone())
                    raise RuntimeError
            return tx.results, rolled.results, await store.get("42")

    results, rolled, value = asyncio.run(run())
    assert [(r.version, r.cache) for r in results] == [(table.version(42), CacheOutcome.UPDATED)]
    assert rolled == [] and value == {"id": 42, "name": "Alice", "balance": 7}
