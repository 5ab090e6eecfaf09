"""Life cycle around your own table (issue 10): backfill, flush, and entries that must not
outlive a TRUNCATE, a re-created table or an ALTER TABLE ... ADD COLUMN. Real PostgreSQL
and Redis."""

from __future__ import annotations

from typing import Any

import pytest

import writethrough
from servers import PostgresServer, RedisServer
from tables import pg_table, roomy
from writethrough import Table, lifecycle
from writethrough.events import install_triggers
from writethrough.sources.registry import Verdict

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _open(t: Any, cache: str, **kw: Any) -> writethrough.Store:
    return writethrough.open(t.url, cache, namespace=t.namespace, table=Table(t.name), **kw)


def test_backfill_then_every_read_is_a_hit(postgres_srv: PostgresServer,
                                           redis_srv: RedisServer) -> None:
    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name) SELECT g, 'u' || g FROM generate_series(1, 1203) g")
        with _open(t, roomy(redis_srv.url)) as store:
            store.get("5")  # already cached: left alone
            report = lifecycle.backfill(store, batch=250)
            assert (report.rows, report.filled, report.cached) == (1203, 1202, 1)
            reads = store.stats.source_reads
            assert all(store.get(str(i))["name"] == f"u{i}" for i in range(1, 1204))
            assert store.stats.source_reads == reads  # every read a hit
            again = lifecycle.backfill(store, batch=500)
            assert (again.filled, again.cached) == (0, 1203)


def test_backfill_never_overwrites_a_newer_write(postgres_srv: PostgresServer,
                                                 redis_srv: RedisServer) -> None:
    """A row updated after backfill's first scan but before its fill: the fill holds the
    lease taken before the re-read, so what lands is the newer row, never the scanned one."""
    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name) SELECT g, 'old' FROM generate_series(1, 10) g")
        with _open(t, roomy(redis_srv.url)) as store:
            scan = store.source.scan
            calls = []

            def scan_then_write(after: Any, limit: int) -> Any:
                page = scan(after, limit)
                if not calls:  # between the first scan and the leases
                    t.sql("UPDATE {t} SET name = 'new' WHERE id = 3")
                calls.append(after)
                return page

            store.source.scan = scan_then_write  # type: ignore[method-assign]
            lifecycle.backfill(store)
            store.source.scan = scan  # type: ignore[method-assign]
            v3 = t.version(3)
            assert store.get_versioned("3") == writethrough.Versioned(
                {"id": 3, "name": "new", "balance": None, "version": v3}, v3)


def test_flush_removes_only_its_namespace(postgres_srv: PostgresServer,
                                          redis_srv: RedisServer) -> None:
    with pg_table(postgres_srv.url) as t, pg_table(postgres_srv.url) as other:
        for table in (t, other):
            table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a'), (2, 'b')")
        with _open(t, roomy(redis_srv.url)) as store, _open(other, roomy(redis_srv.url)) as kept:
            for s in (store, kept):
                s.get("1"), s.get("2")
            epoch = store.source.last_epoch
            assert lifecycle.flush(store) == 2
            assert store.source.last_epoch > epoch
            reads = store.stats.source_reads
            assert store.get("1")["name"] == "a" and store.stats.source_reads == reads + 1
            reads = kept.stats.source_reads
            assert kept.get("1")["name"] == "a" and kept.stats.source_reads == reads


def test_truncate_then_reinsert_serves_the_new_rows(postgres_srv: PostgresServer,
                                                    redis_srv: RedisServer) -> None:
    """TRUNCATE fires no row triggers: the old entry would be served for the re-inserted id
    until its TTL. Change capture sees the TRUNCATE and calls lifecycle.truncated()."""
    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'before')")
        for i in range(4):
            t.sql("UPDATE {t} SET name = %s WHERE id = 1", (f"before{i}",))
        with _open(t, roomy(redis_srv.url)) as store:
            assert store.get("1")["name"] == "before3"
            t.sql("TRUNCATE {t}")
            t.sql("INSERT INTO {t} (id, name) VALUES (1, 'after')")
            assert store.get("1")["name"] == "before3"  # what a TRUNCATE leaves behind
            epoch = store.source.last_epoch
            lifecycle.truncated(store)
            assert store.get("1")["name"] == "after" and store.source.last_epoch > epoch


@pytest.mark.parametrize("change", ["recreate", "add-column"])
def test_reopened_store_flushes_a_changed_table(postgres_srv: PostgresServer,
                                                redis_srv: RedisServer, change: str) -> None:
    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name) VALUES (1, 'old')")
        with _open(t, roomy(redis_srv.url)) as running:  # another process, still running
            assert running.get("1")["name"] == "old"
            if change == "recreate":
                t.sql("DROP TABLE {t}")
                t.sql("CREATE TABLE {t} (id bigint PRIMARY KEY, name text, "
                      "balance numeric(12,2))")
                install_triggers(t.url, t.name, "id", t.namespace)
                t.sql("INSERT INTO {t} (id, name) VALUES (1, 'new')")
            else:
                t.sql("ALTER TABLE {t} ADD COLUMN email text DEFAULT 'e@x'")
            with _open(t, roomy(redis_srv.url)) as deployed:  # the new deploy opens its store
                assert deployed.source.claim_verdict is Verdict.CHANGED
                want = ({"id": 1, "name": "new", "balance": None, "version": t.version(1)}
                        if change == "recreate" else
                        {"id": 1, "name": "old", "balance": None, "version": t.version(1),
                         "email": "e@x"})
                assert deployed.get("1") == want
                assert running.get("1") == want  # the old entry is gone for everyone


def test_writethrough_table_command(postgres_srv: PostgresServer, redis_srv: RedisServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from writethrough.cli import main as cli_main

    with pg_table(postgres_srv.url) as t:
        t.sql("INSERT INTO {t} (id, name) SELECT g, 'u' || g FROM generate_series(1, 30) g")
        common = ["--source", t.url, "--cache", roomy(redis_srv.url), "--table", t.name,
                  "--key-column", "id", "--namespace", t.namespace]
        assert cli_main(["table", "backfill", *common, "--batch", "7"]) == 0
        assert "30 row(s), 30 filled, 0 already cached" in capsys.readouterr().out
        with _open(t, roomy(redis_srv.url)) as store:
            assert store.get("30")["name"] == "u30" and store.stats.source_reads == 0
        assert cli_main(["table", "flush", *common]) == 0
        assert "flushed 30 key(s)" in capsys.readouterr().out
        assert cli_main(["table", "check", *common]) == 0
        assert f"-> public.{t.name} (key id), epoch " in capsys.readouterr().out
        assert cli_main(["table", "check", *common[:-1], "other-ns", "--table", "nope"]) == 2
        assert "no table 'nope'" in capsys.readouterr().err
