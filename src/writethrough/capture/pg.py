"""PostgreSQL plumbing shared by change capture: connections, identifiers, table shapes.

No policy here: :mod:`.schema` installs, the listeners read. Every name that reaches SQL
is either checked against a plain-identifier pattern or composed with ``psycopg.sql``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from .. import checks
from ..checks import check_identifier
from ..errors import ConfigError
from ..sources.postgres import map_error

Connection = psycopg.Connection[TupleRow]
# Options of the store's postgresql:// source URLs that are not libpq's: ignored here.
_STORE_OPTIONS = {"table", "pool_min", "pool_max", "statement_timeout_ms", "connect_timeout"}

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
_UNIQUE = """
SELECT EXISTS (SELECT FROM pg_index i JOIN pg_attribute a
  ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
  WHERE i.indrelid = %s AND i.indisunique AND i.indnatts = 1
    AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = %s AND a.attnotnull)
"""
_RELATION = """
SELECT c.oid, n.nspname, c.relname, c.relreplident, pg_get_userbyid(c.relowner),
       c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')
"""
# The columns a DELETE's WAL record carries besides the key: the replica identity.
_IDENTITY = """
SELECT coalesce(array_agg(a.attname::text), '{}') FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
WHERE i.indrelid = %(t)s AND ((%(r)s = 'd' AND i.indisprimary) OR (%(r)s = 'i' AND i.indisreplident))
"""


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A parsed ``postgresql://`` URL: libpq conninfo, and how to name it in messages."""

    conninfo: str
    where: str
    password: str

    def __repr__(self) -> str:  # never the password
        return f"PgTarget({self.where!r})"

    @staticmethod
    def parse(url: str, *, connect_timeout: int = 5, application_name: str = "writethrough"
              ) -> PgTarget:
        """Accept the store's source URLs (its own options such as ``?table=`` are ignored)."""
        if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("expected a postgresql://user@host:port/db source URL")
        try:
            parts = urlsplit(url)
            query = parse_qsl(parts.query, keep_blank_values=True)
            timeout = next((v for k, v in query if k == "connect_timeout"), str(connect_timeout))
            kept = [(k, v) for k, v in query if k not in _STORE_OPTIONS]
            params: dict[str, Any] = conninfo_to_dict(urlunsplit(parts._replace(
                query=urlencode(kept))))
            params["connect_timeout"] = int(timeout)
        except (psycopg.Error, ValueError):
            raise ConfigError("malformed PostgreSQL source URL") from None
        if params["connect_timeout"] < 1:
            raise ConfigError("connect_timeout must be >= 1 second (0 would wait forever)")
        params.setdefault("application_name", application_name)
        user = f"{params['user']}@" if params.get("user") else ""
        port = f":{params['port']}" if params.get("port") else ""
        where = f"{user}{params.get('host') or 'localhost'}{port}/{params.get('dbname', '')}"
        return PgTarget(make_conninfo(**params), where, str(params.get("password") or ""))

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


# -- validation ----------------------------------------------------------------------


def identifier(name: object, what: str) -> str:
    return check_identifier(name, what)  # one rule for the package (checks.py)


def check_namespace(namespace: object) -> str:
    return checks.check_namespace(namespace)  # one rule for the package (checks.py)


def table_identifier(table: object) -> sql.Identifier:
    """``name`` or ``schema.name``, each part a plain identifier (used exactly, quoted)."""
    parts = table.split(".") if isinstance(table, str) else [table]
    if len(parts) > 2:
        raise ConfigError(f"table {table!r} must be name or schema.name")
    return sql.Identifier(*(identifier(part, "table name") for part in parts))


# -- the user's table ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableShape:
    oid: int
    schema: str
    name: str
    columns: dict[str, str]  # name -> SQL type (format_type)
    replica_identity: str  # d(efault: the primary key), f(ull), i(ndex), n(othing)
    identity_columns: frozenset[str]  # what a DELETE's WAL record carries
    owner: str
    owned: bool  # by the current user

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def tag(self) -> str:
        """Short and unique per table: names its functions and its publication."""
        return table_tag(self.schema, self.name)


def table_tag(schema: str, name: str) -> str:
    return f"wt_{name[:36]}_{hashlib.sha1(f'{schema}.{name}'.encode()).hexdigest()[:8]}"


def find_table(conn: Connection, table: str) -> TableShape | None:
    """The table's shape, or None if there is no such table."""
    ident = table_identifier(table).as_string(conn)
    found = conn.execute(_RELATION, (ident,)).fetchone()
    if found is None:
        return None
    oid, schema, name, identity, owner, owned = found
    columns = {str(n): str(t) for n, t in conn.execute(_COLUMNS, (oid,))}
    if identity == "f":
        carried = frozenset(columns)
    else:
        row = conn.execute(_IDENTITY, {"t": oid, "r": identity}).fetchone()
        carried = frozenset(row[0] if row else ())
    return TableShape(int(oid), str(schema), str(name), columns, str(identity), carried,
                      str(owner), bool(owned))


def inspect_table(conn: Connection, table: str, key_column: str) -> TableShape:
    """The table's shape; ConfigError unless it exists and ``key_column`` is unique."""
    shape = find_table(conn, table)
    if shape is None:
        raise ConfigError(f"no table {table!r}")
    if key_column not in shape.columns:
        raise ConfigError(f"table {table!r} has no column {key_column!r}")
    if conn.execute(_UNIQUE, (shape.oid, key_column)).fetchone() != (True,):
        raise ConfigError(
            f"key column {key_column!r} of {table!r} must be NOT NULL with a primary key or "
            "unique index of its own"
        )
    return shape


def row_queries(shape: TableShape, key_column: str, version_column: str,
                value_column: str | None) -> tuple[sql.Composed, sql.Composed]:
    """SQL reading ``(key::text, version, JSON payload)`` and ``(key::text, version)`` of the
    rows whose keys are in a text array (the one parameter)."""
    for column in (version_column, value_column):
        if column is not None and column not in shape.columns:
            raise ConfigError(f"table {shape.qualified!r} has no column {column!r}; "
                              "install change capture first (writethrough install)")
    names = {"t": shape.ident, "k": sql.Identifier(key_column),
             "v": sql.Identifier(version_column),
             # Cast the text keys to the key's type, so its index is used. format_type()
             # comes from the catalog, already quoted where needed.
             "a": sql.SQL("CAST(%s AS {}[])").format(sql.SQL(shape.columns[key_column])),
             "p": sql.SQL("row_to_json(t)::text") if value_column is None else
             sql.SQL("to_json(t.{})::text").format(sql.Identifier(value_column))}
    where = " FROM {t} AS t WHERE t.{k} = ANY({a})"
    return (sql.SQL("SELECT t.{k}::text, t.{v}, {p}" + where).format(**names),
            sql.SQL("SELECT t.{k}::text, t.{v}" + where).format(**names))
