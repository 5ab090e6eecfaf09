"""Least privilege (issue 11, S1-S3): low-privileged roles try the three ways the first
trigger design let them become superuser, and fail. Also: uninstall after DROP TABLE,
and listeners running as roles with only what ``install(listener_role=...)`` grants.

Roles get unique names and are dropped afterwards; a test acts as a role with
``SET ROLE`` on a superuser connection (no login needed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from conftest import unique_namespace
from servers import PostgresServer, RedisServer
from writethrough import ConfigError, SourceError
from writethrough.caches.memory import MemoryCache
from writethrough.capture import (
    Keyspace,
    LogicalListener,
    TriggerListener,
    drop_slot,
    install,
    uninstall,
)
from writethrough.capture.schema import function_names

pytestmark = pytest.mark.postgres


class Db:
    def __init__(self, url: str) -> None:
        self.url = url
        self.roles: list[str] = []
        self.tables: list[str] = []
        self.schemas: list[str] = []

    def sql(self, statement: str, params: object = None, *, role: str | None = None) -> list:
        with psycopg.connect(self.url, autocommit=True) as conn:
            if role is not None:
                conn.execute(f"SET ROLE {role}")
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def role(self, prefix: str, *attributes: str) -> str:
        name = f"{prefix}_{unique_namespace('r')}"
        self.sql(f"CREATE ROLE {name} {' '.join(attributes)}")
        self.roles.append(name)
        return name

    def table(self, owner: str | None = None) -> str:
        name = f"sec_{unique_namespace('t')}"
        self.sql(f"CREATE TABLE {name} (id int PRIMARY KEY, name text)")
        if owner:
            self.sql(f"ALTER TABLE {name} OWNER TO {owner}")
        self.tables.append(name)
        return name

    def as_url(self, role: str, **query: str) -> str:
        """A URL logging in as ``role`` (trust authentication on the test servers)."""
        parts = urlsplit(self.url)
        extra = "&".join(f"{k}={v}" for k, v in query.items())
        return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}",
                                         query=extra))

    def cleanup(self) -> None:
        for table in self.tables:
            with suppress(ConfigError, SourceError):
                uninstall(self.url, table)
            self.sql(f"DROP TABLE IF EXISTS {table} CASCADE")
        for schema in self.schemas:
            self.sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        for role in self.roles:
            self.sql(f"DROP OWNED BY {role} CASCADE")
            self.sql(f"DROP ROLE {role}")


@pytest.fixture
def db(postgres_srv: PostgresServer) -> Iterator[Db]:
    d = Db(postgres_srv.url)
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def ldb(logical_pg: PostgresServer) -> Iterator[Db]:
    d = Db(logical_pg.url)
    try:
        yield d
    finally:
        d.cleanup()


def _denied(db: Db, statement: str, role: str) -> str:
    with pytest.raises(psycopg.Error) as caught:
        db.sql(statement, role=role)
    return str(caught.value)


# -- S1: anyone could attach the function elsewhere and forge events --------------------


def test_s1_a_low_role_cannot_attach_the_functions_or_forge_changes(db: Db) -> None:
    table = db.table()
    install(db.url, table, "id", capture="triggers")
    version_fn, change_fn = (f.as_string(None) for f in function_names("public", table))
    mallory = db.role("mallory")
    db.sql(f"GRANT CREATE ON SCHEMA public TO {mallory}")
    db.sql(f"CREATE TABLE {table}_m (id int PRIMARY KEY, version bigint)", role=mallory)
    db.tables.append(f"{table}_m")
    for fn in (version_fn, change_fn):
        message = _denied(db, f"CREATE TRIGGER t BEFORE INSERT ON {table}_m FOR EACH ROW "
                              f"EXECUTE FUNCTION {fn}()", mallory)
        assert "permission denied for function" in message
    # Forged change rows for a table it cannot write: refused by the row-level policy.
    message = _denied(db, f"INSERT INTO writethrough_changes (tbl, key) VALUES "
                          f"('{table}'::regclass, 'x')", mallory)
    assert "row-level security" in message
    # The version sequence: drawing is harmless, setting it is not allowed.
    message = _denied(db, "SELECT setval('writethrough_versions', 9223372036854775806)", mallory)
    assert "permission denied" in message
    # Even the installer cannot fire the change function from another table.
    db.sql(f"CREATE TRIGGER misuse AFTER INSERT ON {table}_m REFERENCING NEW TABLE AS new_rows "
           f"FOR EACH STATEMENT EXECUTE FUNCTION {change_fn}()")
    with pytest.raises(psycopg.Error, match="records changes of table"):
        db.sql(f"INSERT INTO {table}_m VALUES (1, 0)")


def test_s1_a_writer_cannot_choose_a_version(db: Db) -> None:
    table = db.table()
    install(db.url, table, "id", capture="triggers")
    writer = db.role("writer")
    db.sql(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {writer}")
    db.sql(f"INSERT INTO {table} (id, version) VALUES (1, 9223372036854775807)", role=writer)
    db.sql(f"UPDATE {table} SET version = 9223372036854775807 WHERE id = 1", role=writer)
    (version,), = db.sql(f"SELECT version FROM {table}")
    assert version < 2**62, "the trigger sets the version, whatever the writer wrote"
    db.sql(f"INSERT INTO {table} (id) VALUES (2)", role=writer)  # no 'bigint out of range'


def test_s1_a_malformed_change_does_not_stop_the_listener(db: Db) -> None:
    table = db.table()
    install(db.url, table, "id", capture="triggers")
    db.sql(f"INSERT INTO {table} (id, name) VALUES (1, 'a'), (2, 'b')")
    # Only a writer of the table can record a change for it; an odd key is still handled.
    db.sql(f"INSERT INTO writethrough_changes (tbl, key) VALUES ('{table}'::regclass, 'x1'), "
           f"('{table}'::regclass, repeat('9', 2000))")
    cache = MemoryCache()
    space = Keyspace(table, table, "id", "write-through")
    with TriggerListener(db.url, cache, {table: space}) as listener:
        assert listener.drain_once() == 4
        assert listener.stats.skipped == 2 and listener.queued() == 0
    assert {k for k in ("1", "2") if cache.get(f"wt:{table}:{k}") is not None} == {"1", "2"}


# -- S2: the function ran DML on the user's table as the definer ------------------------


def test_s2_a_table_owners_trigger_never_runs_as_the_installer(db: Db) -> None:
    alice = db.role("alice")
    db.sql(f"GRANT CREATE ON SCHEMA public TO {alice}")
    table = db.table(owner=alice)
    db.sql(f"CREATE TABLE {table}_who (who text, super boolean)")
    db.sql(f"ALTER TABLE {table}_who OWNER TO {alice}")
    db.tables.append(f"{table}_who")
    db.sql(f"""
        CREATE FUNCTION {table}_spy() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          BEGIN
            EXECUTE format('ALTER ROLE %I SUPERUSER', '{alice}');
          EXCEPTION WHEN insufficient_privilege THEN NULL;
          END;
          INSERT INTO {table}_who VALUES (current_user,
            (SELECT rolsuper FROM pg_roles WHERE rolname = '{alice}'));
          RETURN NEW;
        END $$""", role=alice)
    db.sql(f"CREATE TRIGGER a_spy BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW "
           f"EXECUTE FUNCTION {table}_spy()", role=alice)
    install(db.url, table, "id", capture="triggers")  # as superuser, on alice's table
    db.sql(f"INSERT INTO {table} (id, name) VALUES (1, 'a')", role=alice)
    db.sql(f"UPDATE {table} SET name = 'b'", role=alice)
    cache = MemoryCache()
    with TriggerListener(db.url, cache, {table: Keyspace(table, table, "id",
                                                         "write-through")}) as listener:
        assert listener.drain_once() == 2
    seen = db.sql(f"SELECT who, super FROM {table}_who")
    assert seen and all(row == (alice, False) for row in seen), seen
    assert db.sql("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (alice,)) == [(False,)]


# -- S3: adopting a table another role created first --------------------------------------


@pytest.mark.parametrize("planted", ["writethrough_changes", "writethrough_versions",
                                     "writethrough_epochs", "writethrough_parked"])
def test_s3_install_refuses_objects_another_role_created(db: Db, planted: str) -> None:
    bob = db.role("bob")
    schema = f"s3_{unique_namespace('s')}"
    db.sql(f"CREATE SCHEMA {schema}")
    db.schemas.append(schema)
    db.sql(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {bob}")
    if planted == "writethrough_versions":
        db.sql(f"CREATE SEQUENCE {schema}.{planted}", role=bob)
    else:
        db.sql(f"CREATE TABLE {schema}.{planted} (id bigint, tbl oid, key text, "
               "namespace text, epoch bigint)", role=bob)
    table = f"{schema}.t"
    db.sql(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    with pytest.raises(ConfigError, match=f"owned by role '{bob}'"):
        install(db.as_url("postgres", options=f"-csearch_path%3D{schema}"), table, "id",
                capture="triggers")
    assert db.sql("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass",
                  (table,)) == [(0,)], "nothing installed"


# -- uninstall -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["triggers", "logical"])
def test_uninstall_after_drop_table_leaves_nothing(ldb: Db, mode: str) -> None:
    owner = ldb.role("owner", "LOGIN")
    ldb.sql(f"GRANT CREATE ON SCHEMA public TO {owner}")
    ldb.sql(f"GRANT CREATE ON DATABASE postgres TO {owner}")
    table = ldb.table(owner=owner)
    as_owner = ldb.as_url(owner)
    ldb.sql("CREATE TABLE IF NOT EXISTS sec_shared (id int PRIMARY KEY)")  # shared objects
    install(ldb.url, "sec_shared", "id", capture=mode)  # type: ignore[arg-type]
    install(as_owner, table, "id", capture=mode)  # type: ignore[arg-type]
    ldb.sql(f"DROP TABLE {table}", role=owner)
    assert uninstall(as_owner, table), "something was left to remove"
    left = ldb.sql("SELECT proname FROM pg_proc WHERE proname LIKE %s", (f"{_tag(table)}%",))
    assert left == [], "no functions behind"
    assert ldb.sql("SELECT FROM pg_publication WHERE pubname = %s", (_tag(table),)) == []
    assert not uninstall(as_owner, table), "nothing left the second time"


def _tag(table: str) -> str:
    from writethrough.capture.pg import table_tag
    return table_tag("public", table)


# -- listeners with only what they need ------------------------------------------------------


def test_listeners_run_with_only_the_granted_rights(ldb: Db, redis_srv: RedisServer) -> None:
    table = ldb.table()
    listener_role = ldb.role("listener", "LOGIN", "REPLICATION")
    install(ldb.url, table, "id", listener_role=listener_role)
    group = f"sec_{unique_namespace('g')}"
    as_listener = ldb.as_url(listener_role)
    space = {table: Keyspace(table, table, "id", "write-through")}
    cache = MemoryCache()
    try:
        with LogicalListener(as_listener, cache, space, group=group) as listener:
            ldb.sql(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
            ldb.sql(f"DELETE FROM {table} WHERE id = 1")
            ldb.sql(f"INSERT INTO {table} (id, name) VALUES (1, 'b')")
            assert listener.drain_once() == 3
        entry = cache.get(f"wt:{table}:1")
        assert entry is not None and b'"b"' in entry.payload
        # Without REPLICATION: a clear error, not a hang.
        plain = ldb.role("plain", "LOGIN")
        install(ldb.url, table, "id", listener_role=plain)
        with pytest.raises(SourceError, match=r"(?i)permission|replication"):
            LogicalListener(ldb.as_url(plain), cache, space, group=f"{group}x")
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                drop_slot(ldb.url, group)
                break
            except SourceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_trigger_listener_needs_no_replication(db: Db) -> None:
    table = db.table()
    role = db.role("tlisten", "LOGIN")
    writer = db.role("twriter")
    install(db.url, table, "id", capture="triggers", listener_role=role)
    db.sql(f"GRANT INSERT, UPDATE, DELETE ON {table} TO {writer}")
    db.sql(f"INSERT INTO {table} (id, name) VALUES (1, 'a')", role=writer)
    cache = MemoryCache()
    with TriggerListener(db.as_url(role), cache, {table: Keyspace(
            table, table, "id", "write-through")}) as listener:
        assert listener.drain_once() == 1
    assert cache.get(f"wt:{table}:1") is not None


def test_reinsert_racing_a_delete_never_goes_back(db: Db) -> None:
    """The re-insert's BEFORE trigger runs while the delete is not committed yet (it then
    waits on the unique index): the version it drew is still above the deleted row's."""
    table = db.table()
    install(db.url, table, "id", capture="triggers")
    db.sql(f"INSERT INTO {table} (id, name) VALUES (1, 'a')")
    db.sql(f"UPDATE {table} SET name = 'b' WHERE id = 1")
    (old,), = db.sql(f"SELECT version FROM {table}")
    with psycopg.connect(db.url) as deleter:
        deleter.execute(f"DELETE FROM {table} WHERE id = 1")
        inserter = threading.Thread(target=db.sql, args=(
            f"INSERT INTO {table} (id, name) VALUES (1, 'c')",))
        inserter.start()
        time.sleep(0.3)
        deleter.commit()
        inserter.join(10)
    (new,), = db.sql(f"SELECT version FROM {table}")
    assert new > old + 1, "above the delete's version (old + 1)"

