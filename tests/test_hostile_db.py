"""Hostile database roles, on a real PostgreSQL server.

A role that may only write a table with change capture must not be able to use the
capture's functions or tables for anything else: attach the trigger functions to a table
of its own, or record changes of tables it may not write.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from writethrough.capture import install, uninstall

pytestmark = pytest.mark.postgres


@pytest.fixture
def setting(postgres_srv: Any) -> Iterator[tuple[str, str, str]]:
    """(admin URL, a table with trigger capture, a login role that may write it and create
    tables of its own)."""
    url = str(postgres_srv.url)
    tag = f"wtsec{uuid.uuid4().hex[:8]}"
    role, table = f"{tag}_writer", f"{tag}_items"
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test user may not create roles")
        schema = conn.execute("SELECT current_schema()").fetchone()
        assert schema is not None
        ident = {"r": sql.Identifier(role), "t": sql.Identifier(table),
                 "s": sql.Identifier(schema[0])}
        conn.execute(sql.SQL("CREATE TABLE {t} (id int PRIMARY KEY, v int)").format(**ident))
        conn.execute(sql.SQL("GRANT INSERT, UPDATE, DELETE, SELECT ON {t} TO {r}").format(**ident))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {s} TO {r}").format(**ident))
        try:
            install(url, table, "id", capture="triggers")
            yield url, table, role
        finally:
            conn.execute("RESET ROLE")
            conn.execute("DELETE FROM writethrough_changes WHERE tbl = %s::regclass", (table,))
            uninstall(url, table)
            conn.execute(sql.SQL("DROP OWNED BY {r}").format(**ident))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(**ident))
            conn.execute(sql.SQL("DROP ROLE {r}").format(**ident))


def test_a_writer_cannot_reuse_the_capture_for_anything_else(
        setting: tuple[str, str, str]) -> None:
    url, table, role = setting
    with psycopg.connect(url, autocommit=True) as conn:
        functions = [row[0] for row in conn.execute(
            "SELECT DISTINCT p.oid::regprocedure::text FROM pg_trigger t "
            "JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = %s::regclass "
            "AND NOT t.tgisinternal", (table,))]
        assert functions, "capture installed its triggers"
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        # What the role is meant to do still works: its writes are recorded.
        conn.execute(sql.SQL("INSERT INTO {} (id, v) VALUES (1, 1)").format(sql.Identifier(table)))
        own = sql.Identifier(f"{role}_own")
        conn.execute(sql.SQL("CREATE TABLE {} (id int, version bigint)").format(own))
        for function in functions:  # EXECUTE is revoked from PUBLIC: no attaching elsewhere
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("CREATE TRIGGER planted BEFORE INSERT ON {} "
                                     "FOR EACH ROW EXECUTE FUNCTION {}").format(
                    own, sql.SQL(function)))
        # Row-level security: it records changes only of tables it may write.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO writethrough_changes (tbl, key) "
                         "VALUES ('writethrough_epochs'::regclass, 'x')")
        conn.execute("RESET ROLE")
        changes = conn.execute("SELECT count(*) FROM writethrough_changes "
                               "WHERE tbl = %s::regclass AND key = '1'", (table,)).fetchone()
        assert changes is not None and changes[0] >= 1


def test_the_key_value_source_needs_only_select_insert_update(postgres_srv: Any) -> None:
    """The least privilege SECURITY.md promises: a role with SELECT, INSERT, UPDATE on a
    table an owner created and on writethrough_epochs (and no CREATE on the schema) can use
    the store."""
    import writethrough

    url = str(postgres_srv.url)
    tag = f"wtlp{uuid.uuid4().hex[:8]}"
    ident = {"r": sql.Identifier(tag), "t": sql.Identifier(f"{tag}_items")}
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {r} LOGIN").format(**ident))
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test user may not create roles")
        try:
            conn.execute(sql.SQL(
                "CREATE TABLE {t} (namespace text NOT NULL, key text NOT NULL, value bytea, "
                "version bigint NOT NULL, PRIMARY KEY (namespace, key))").format(**ident))
            conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON {t} TO {r}").format(**ident))
            with writethrough.open(source=url, namespace="lp"):  # creates writethrough_epochs
                pass
            conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON writethrough_epochs TO {r}")
                         .format(**ident))
            schema = conn.execute("SELECT current_schema()").fetchone()
            assert schema is not None
            conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM {r}").format(
                sql.Identifier(schema[0]), **ident))
            own = psycopg.conninfo.conninfo_to_dict(url)
            own["user"] = tag
            as_role = (f"postgresql://{tag}@{own.get('host', '127.0.0.1')}:{own.get('port', 5432)}"
                       f"/{own['dbname']}?table={tag}_items")
            with writethrough.open(source=as_role, namespace="lp") as store:
                assert store.put("k", 1).version == 1
                assert store.get("k") == 1
                assert store.delete("k").version == 2
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(**ident))
            conn.execute(sql.SQL("DROP OWNED BY {r}").format(**ident))
            conn.execute(sql.SQL("DROP ROLE {r}").format(**ident))
