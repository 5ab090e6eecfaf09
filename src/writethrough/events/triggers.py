"""Triggers that record every committed change of a user's table as a versioned event.

    from writethrough.events import install_triggers
    install_triggers("postgresql://app@db/app", table="profiles", key_column="id",
                     namespace="profiles")

What gets installed on the table (idempotent; run it again after a change):

* a bigint ``version`` column, added if missing
  (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 0``);
* ``BEFORE INSERT OR UPDATE``: ``NEW.version := greatest(floor, OLD.version) + 1``, where
  the floor is the version of the key's last delete (``writethrough_version_floor``), so a
  re-insert never goes back. Versions set by the application are overwritten;
* ``AFTER INSERT OR UPDATE OR DELETE``: one row in ``writethrough_events`` per changed
  row -- ``(namespace, key::text, version, action)``, a delete's version being
  ``OLD.version + 1`` (recorded as the floor) -- then ``pg_notify('writethrough_events',
  namespace)``. Both happen inside the writer's transaction: an event exists iff its
  change committed. An update that changes the key is a delete of the old key plus an
  upsert of the new one.

The functions run as the role that installed them (``SECURITY DEFINER``, search_path
pinned, every name schema-qualified, EXECUTE revoked from PUBLIC so no other role can
attach them to a table of its own), so roles that write the table need no rights on the
events tables; those live in the installer's current schema (usually ``public``), where the
listener, connecting as the same role, finds them. The key column must be NOT NULL and
unique on its own; it becomes the cache key as ``key::text``.

A re-insert racing the delete of the same key (its BEFORE trigger ran before the delete
committed) is caught by the AFTER trigger, which bumps the row once more past the floor.
TRUNCATE fires no row triggers: it records no events (the TTL bounds what the cache keeps).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from ..checks import check_count, check_identifier, check_namespace
from ..errors import ConfigError
from ..sources.postgres import map_error
from ..sources.postgres_sql import describe, validate
from ..urls import parse_url

Connection = psycopg.Connection[TupleRow]
EVENTS_TABLE = "writethrough_events"
FLOOR_TABLE = "writethrough_version_floor"
CHANNEL = "writethrough_events"

# claimed_until is reserved for lease-style claims; the listener claims with row locks
# (FOR UPDATE SKIP LOCKED inside its transaction) and leaves it NULL.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS writethrough_events (id bigserial PRIMARY KEY, "
    "namespace text NOT NULL, key text NOT NULL, version bigint NOT NULL, action text NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT clock_timestamp(), claimed_until timestamptz)",
    "CREATE INDEX IF NOT EXISTS writethrough_events_namespace_id "
    "ON writethrough_events (namespace, id)",
    "CREATE TABLE IF NOT EXISTS writethrough_version_floor (tbl text NOT NULL, "
    "key text NOT NULL, version bigint NOT NULL, PRIMARY KEY (tbl, key))",
)

_BEFORE = """
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $wt$
DECLARE floor_version bigint;
BEGIN
  SELECT f.version INTO floor_version FROM {floor} f
    WHERE f.tbl = {tbl} AND f.key = NEW.{key}::text;
  NEW.{ver} := greatest(coalesce(floor_version, 0),
    CASE WHEN TG_OP = 'UPDATE' THEN coalesce(OLD.{ver}, 0) ELSE 0 END) + 1;
  RETURN NEW;
END $wt$
"""

_AFTER = """
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $wt$
DECLARE floor_version bigint;
BEGIN
  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND NEW.{key} IS DISTINCT FROM OLD.{key}) THEN
    INSERT INTO {floor} AS f (tbl, key, version)
      VALUES ({tbl}, OLD.{key}::text, coalesce(OLD.{ver}, 0) + 1)
      ON CONFLICT (tbl, key) DO UPDATE SET version = greatest(f.version, EXCLUDED.version);
    INSERT INTO {events} (namespace, key, version, action)
      VALUES ({ns}, OLD.{key}::text, coalesce(OLD.{ver}, 0) + 1, 'delete');
  END IF;
  IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.{key} IS DISTINCT FROM OLD.{key}) THEN
    -- The BEFORE trigger may have read the floor before a concurrent delete of this key
    -- committed (our insert then waited for it on the unique index): bump past it.
    SELECT f.version INTO floor_version FROM {floor} f
      WHERE f.tbl = {tbl} AND f.key = NEW.{key}::text;
    IF floor_version >= NEW.{ver} THEN
      UPDATE {table} SET {ver} = {ver} WHERE {key} = NEW.{key};  -- fires both triggers again
      RETURN NULL;
    END IF;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    INSERT INTO {events} (namespace, key, version, action)
      VALUES ({ns}, NEW.{key}::text, NEW.{ver}, lower(TG_OP));
  END IF;
  PERFORM pg_notify('writethrough_events', {ns});
  RETURN NULL;
END $wt$
"""

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""
_UNIQUE = """
SELECT EXISTS (SELECT FROM pg_index i JOIN pg_attribute a
  ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
  WHERE i.indrelid = %s::regclass AND i.indisunique AND i.indnatts = 1
    AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = %s AND a.attnotnull)
"""
_RELATION = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')
"""


@dataclass(frozen=True, slots=True)
class Installed:
    """What :func:`install_triggers` did."""

    table: str  # schema.table
    namespace: str
    key_column: str
    version_column: str
    added_version_column: bool


# -- connections ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A parsed ``postgresql://`` URL: libpq conninfo, and how to name it in messages.

    ``repr()`` shows ``where`` only: the conninfo and the password are secrets.
    """

    conninfo: str = field(repr=False)
    where: str
    password: str = field(repr=False)

    @staticmethod
    def parse(url: str, *, connect_timeout: int = 5, application_name: str = "writethrough"
              ) -> PgTarget:
        """Accept the store's source URLs, parsed and checked as the store does (its own
        options such as ``?table=`` are checked, then ignored here)."""
        from ..sources.postgres import _parse

        parsed = parse_url(url, kind="source", schemes={"postgresql": "", "postgres": ""})
        conninfo, options = _parse(parsed, {})
        validate(**options)  # the store's options, checked as the store checks them
        timeout = options["connect_timeout"] if "connect_timeout" in parsed.query else connect_timeout
        check_count("connect_timeout", timeout, least=1, most=3600)  # 0: libpq waits forever
        params: dict[str, Any] = conninfo_to_dict(conninfo)
        params["connect_timeout"] = timeout
        params.setdefault("application_name", application_name)
        return PgTarget(make_conninfo(**params), describe(params), str(params.get("password") or ""))

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Map psycopg errors into the SourceError family (the password scrubbed)."""
        try:
            yield
        except psycopg.Error as exc:
            raise map_error(exc, self.where, self.password) from exc

    def connect(self, *, autocommit: bool, setup: sql.Composed | None = None) -> Connection:
        """A new connection, ``setup`` run on it (and committed) first."""
        with self.errors():
            conn = psycopg.connect(self.conninfo, autocommit=autocommit)
            try:
                if setup is not None:
                    conn.execute(setup)
                    conn.commit()
            except BaseException:
                conn.close()
                raise
            return conn


def ensure_schema(conn: Connection) -> None:
    """Create the events and version-floor tables if missing (autocommit connection)."""
    for statement in _SCHEMA:
        # Concurrent CREATE ... IF NOT EXISTS can lose the race on a catalog index.
        with suppress(pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject):
            conn.execute(statement)


# -- validation ----------------------------------------------------------------------


def identifier(name: object, what: str) -> str:
    return check_identifier(name, what)


def table_identifier(table: object) -> sql.Identifier:
    """``name`` or ``schema.name``, each part a plain identifier (used exactly, quoted)."""
    parts = table.split(".") if isinstance(table, str) else [table]
    if len(parts) > 2:
        raise ConfigError(f"table {table!r} must be name or schema.name")
    return sql.Identifier(*(identifier(part, "table name") for part in parts))


@dataclass(frozen=True, slots=True)
class TableShape:
    schema: str
    name: str
    columns: dict[str, str]  # name -> SQL type (format_type)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def inspect_table(conn: Connection, table: str, key_column: str) -> TableShape:
    """The table's schema, name and columns; ConfigError unless ``key_column`` is unique."""
    ident = table_identifier(table).as_string(conn)
    found = conn.execute(_RELATION, (ident,)).fetchone()
    if found is None:
        raise ConfigError(f"no table {table!r}")
    schema, name = str(found[0]), str(found[1])
    columns = {str(n): str(t) for n, t in conn.execute(_COLUMNS, (ident,))}
    if key_column not in columns:
        raise ConfigError(f"table {table!r} has no column {key_column!r}")
    if conn.execute(_UNIQUE, (ident, key_column)).fetchone() != (True,):
        raise ConfigError(
            f"key column {key_column!r} of {table!r} must be NOT NULL with a primary key or "
            "unique index of its own"
        )
    return TableShape(schema, name, columns)


def row_queries(conn: Connection, table: str, key_column: str, version_column: str,
                value_column: str | None) -> tuple[sql.Composed, sql.Composed]:
    """SQL reading ``(key::text, version, JSON payload)`` and ``(key::text, version)`` of the
    rows whose keys are in a text array (the one parameter)."""
    shape = inspect_table(conn, table, key_column)
    for column in (version_column, value_column):
        if column is not None and column not in shape.columns:
            raise ConfigError(f"table {table!r} has no column {column!r}; "
                              "install the triggers first (install_triggers)")
    names = {"t": sql.Identifier(shape.schema, shape.name), "k": sql.Identifier(key_column),
             "v": sql.Identifier(version_column),
             # Cast the text keys to the key's type, so its index is used. format_type()
             # comes from the catalog, already quoted where needed.
             "a": sql.SQL("CAST(%s AS {}[])").format(sql.SQL(shape.columns[key_column])),
             "p": sql.SQL("row_to_json(t)::text") if value_column is None else
             sql.SQL("to_json(t.{})::text").format(sql.Identifier(value_column))}
    where = " FROM {t} AS t WHERE t.{k} = ANY({a})"
    return (sql.SQL("SELECT t.{k}::text, t.{v}, {p}" + where).format(**names),
            sql.SQL("SELECT t.{k}::text, t.{v}" + where).format(**names))


def function_names(shape: TableShape) -> tuple[sql.Identifier, sql.Identifier]:
    """Per-table trigger functions, in the table's schema (short, unique per table)."""
    tag = f"wt_{shape.name[:36]}_{hashlib.sha1(shape.qualified.encode()).hexdigest()[:8]}"
    return (sql.Identifier(shape.schema, f"{tag}_version"),
            sql.Identifier(shape.schema, f"{tag}_event"))


# -- install / uninstall ---------------------------------------------------------------


def install_triggers(source_url: str, table: str, key_column: str, namespace: str, *,
                     version_column: str = "version", connect_timeout: int = 5) -> Installed:
    """Install (or replace) the version and event triggers on ``table``, in one transaction.

        >>> install_triggers("postgresql://app@db/app", "profiles", "id", "profiles")
        Installed(table='public.profiles', namespace='profiles', key_column='id', ...)

    Creates ``writethrough_events`` and ``writethrough_version_floor`` if missing, and adds
    the version column if the table lacks it. Needs the rights to ALTER the table and to
    create functions in its schema; takes a short exclusive lock on the table.
    """
    check_namespace(namespace)
    table_identifier(table)  # before connecting: a bad name is a ConfigError, not a wait
    identifier(key_column, "key column")
    identifier(version_column, "version column")
    target = PgTarget.parse(source_url, connect_timeout=connect_timeout)
    with target.connect(autocommit=True) as conn, target.errors():
        ensure_schema(conn)
        with conn.transaction():
            shape = inspect_table(conn, table, key_column)
            ident = sql.Identifier(shape.schema, shape.name)
            ver = sql.Identifier(version_column)
            if version_column == key_column:
                raise ConfigError("the key column cannot be the version column")
            added = version_column not in shape.columns
            if added:
                conn.execute(sql.SQL(
                    "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} bigint NOT NULL DEFAULT 0"
                ).format(ident, ver))
            elif shape.columns[version_column] not in ("bigint", "integer"):
                raise ConfigError(f"column {version_column!r} of {table!r} is "
                                  f"{shape.columns[version_column]}, not bigint")
            before, after = function_names(shape)
            home = conn.execute("SELECT current_schema()").fetchone()
            if home is None or home[0] is None:
                raise ConfigError("no schema on the search_path for writethrough_events")
            names = {"table": ident, "key": sql.Identifier(key_column), "ver": ver,
                     "tbl": sql.Literal(shape.qualified), "ns": sql.Literal(namespace),
                     "events": sql.Identifier(home[0], EVENTS_TABLE),
                     "floor": sql.Identifier(home[0], FLOOR_TABLE)}
            conn.execute(sql.SQL(_BEFORE).format(fn=before, **names))
            conn.execute(sql.SQL(_AFTER).format(fn=after, **names))
            # Functions are executable by PUBLIC by default, and these run as their owner:
            # any role that may create a table could attach them to it and write events and
            # version floors as the owner (e.g. a floor of 2**63-1 that makes every insert
            # of that key fail). Firing a trigger needs no EXECUTE right; attaching one does.
            for fn in (before, after):
                conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(fn))
            for statement in (
                "DROP TRIGGER IF EXISTS writethrough_version ON {t}",
                "DROP TRIGGER IF EXISTS writethrough_event ON {t}",
                "CREATE TRIGGER writethrough_version BEFORE INSERT OR UPDATE ON {t} "
                "FOR EACH ROW EXECUTE FUNCTION {b}()",
                "CREATE TRIGGER writethrough_event AFTER INSERT OR UPDATE OR DELETE ON {t} "
                "FOR EACH ROW EXECUTE FUNCTION {a}()",
            ):
                conn.execute(sql.SQL(statement).format(t=ident, b=before, a=after))
    return Installed(shape.qualified, namespace, key_column, version_column, added)


def uninstall_triggers(source_url: str, table: str, *, connect_timeout: int = 5) -> bool:
    """Drop the triggers and their functions from ``table``; True if there were any.

    Keeps the version column, the events still queued and the version floor (so a later
    install continues from the same versions).
    """
    table_identifier(table)
    target = PgTarget.parse(source_url, connect_timeout=connect_timeout)
    with target.connect(autocommit=True) as conn, target.errors(), conn.transaction():
        ident = table_identifier(table).as_string(conn)
        found = conn.execute(_RELATION, (ident,)).fetchone()
        if found is None:
            raise ConfigError(f"no table {table!r}")
        shape = TableShape(str(found[0]), str(found[1]), {})
        t = sql.Identifier(shape.schema, shape.name)
        had = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname IN "
            "('writethrough_version', 'writethrough_event')", (ident,)).fetchone()
        for name in ("writethrough_version", "writethrough_event"):
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                sql.Identifier(name), t))
        for fn in function_names(shape):
            conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fn))
    return bool(had and had[0])
