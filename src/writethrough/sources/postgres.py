"""PostgreSQL as the source of truth (psycopg 3, a psycopg_pool.ConnectionPool).

Versions come from the statement that writes the row
(``INSERT ... ON CONFLICT (namespace, key) DO UPDATE SET version = t.version + 1
RETURNING version``), each statement its own transaction (autocommit). Under READ
COMMITTED a conflicting upsert waits for the row lock, then updates the newest
committed row, so versions follow commit order. A delete keeps the row with a NULL
value and a new version, so a re-insert never goes back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg import errors as pg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from ..errors import (
    ConfigError,
    InvalidKeyError,
    SourceConflict,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from ..urls import ParsedURL
from .base import Row

Connection = psycopg.Connection[TupleRow]
DEFAULT_TABLE = "writethrough_items"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
EXPECTED_TYPES = {
    "namespace": ("text", "character varying"),
    "key": ("text", "character varying"),
    "value": ("bytea",),
    "version": ("bigint",),
}
# SQLSTATE classes meaning "cannot use the server now": connection, authorization, unknown
# database, resources, operator intervention, system error ("" = client-side failure).
_UNREACHABLE = ("", "08", "28", "3D", "53", "57", "58")
OPTIONS = {"table", "pool_min", "pool_max", "connect_timeout", "statement_timeout_ms"}
# libpq parameters passed through from the URL query as they are.
LIBPQ_OPTIONS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "application_name"}
_SQL_COLUMNS = """
SELECT a.attname, a.atttypid::regtype::text, a.attnotnull OR a.atthasdef
FROM pg_attribute a WHERE a.attrelid = to_regclass(%(t)s) AND a.attnum > 0 AND NOT a.attisdropped
"""
_SQL_UNIQUE = """
SELECT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = to_regclass(%(t)s) AND i.indisunique
  AND i.indnatts = 2 AND i.indpred IS NULL AND i.indexprs IS NULL
  AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
       WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])) = '{key,namespace}')
"""


class PostgresSource:
    """Rows of one namespace in a PostgreSQL table, over a pool of connections.

        >>> src = PostgresSource("postgresql://app@127.0.0.1:5432/app", namespace="profiles")
        >>> src.write("user:1", b'{"name":"Ann"}')
        1
        >>> src.read("user:1")
        Row(version=1, payload=b'{"name":"Ann"}')
        >>> src.close()

    Opening connects once (a bad DSN or a server that is down raises SourceUnavailable
    within ``connect_timeout`` seconds), creates the table or adopts it, and fills the
    pool. Thread-safe: each call borrows a pooled connection for one statement.
    """

    name = "postgres"

    def __init__(
        self,
        conninfo: str,
        *,
        namespace: str,
        table: str = DEFAULT_TABLE,
        pool_min: int = 1,
        pool_max: int = 10,
        connect_timeout: int = 5,
        statement_timeout_ms: int = 5000,
    ) -> None:
        if not isinstance(table, str) or not _IDENTIFIER.match(table):
            raise ConfigError(f"table name {table!r} is not a plain SQL identifier")
        _check_int("pool_min", pool_min, 0)
        _check_int("pool_max", pool_max, max(1, pool_min))
        _check_int("connect_timeout", connect_timeout, 1)
        _check_int("statement_timeout_ms", statement_timeout_ms, 0)
        try:
            params: dict[str, Any] = conninfo_to_dict(conninfo)
        except psycopg.Error:
            raise ConfigError("malformed PostgreSQL connection string") from None
        params.setdefault("application_name", "writethrough")
        params["connect_timeout"] = connect_timeout
        self._conninfo = make_conninfo(**params)
        self._password = str(params.get("password") or "")
        self.where = _describe(params)
        self.namespace = namespace
        self.table = table
        self.statement_timeout_ms = statement_timeout_ms
        t = sql.Identifier(table)
        self._sql_read = sql.SQL(
            "SELECT version, value FROM {} WHERE namespace = %s AND key = %s"
        ).format(t)
        upsert = (
            "INSERT INTO {} AS t (namespace, key, value, version) VALUES (%s, %s, %s, 1) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, "
            "version = t.version + 1 RETURNING version"
        )
        self._sql_write = sql.SQL(upsert).format(t)
        self._sql_truncate = sql.SQL("DELETE FROM {} WHERE namespace = %s").format(t)
        with self._boundary(), psycopg.connect(self._conninfo, autocommit=True) as conn:
            self._configure(conn)
            self._create_or_adopt(conn)
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            self._conninfo,
            min_size=pool_min,
            max_size=pool_max,
            kwargs={"autocommit": True},  # each statement is its own transaction
            configure=self._configure,
            timeout=connect_timeout,  # longest wait for a free connection
            name=f"writethrough-{namespace}",
            open=False,
        )
        try:
            with self._boundary():
                self._pool.open(wait=True, timeout=connect_timeout)
        except BaseException:
            self._pool.close(timeout=0)
            raise

    def read(self, key: str) -> Row:
        with self._connection() as conn:
            found = conn.execute(self._sql_read, (self.namespace, _key(key))).fetchone()
        if found is None:
            return Row(0, None)
        return Row(int(found[0]), None if found[1] is None else bytes(found[1]))

    def write(self, key: str, payload: bytes) -> int:
        return self._upsert(key, payload)

    def delete(self, key: str) -> int:
        return self._upsert(key, None)

    def truncate_namespace(self) -> int:
        """Delete every row of this namespace; returns how many went.

        Versions then restart at 1, below what a cache may still hold: clear this
        namespace in the cache too, or never use it again (tests, cleanup tools).
        """
        with self._connection() as conn:
            return conn.execute(self._sql_truncate, (self.namespace,)).rowcount

    def close(self) -> None:
        self._pool.close()

    # -- I/O boundary ------------------------------------------------------------

    def _upsert(self, key: str, payload: bytes | None) -> int:
        with self._connection() as conn:
            found = conn.execute(self._sql_write, (self.namespace, _key(key), payload)).fetchone()
        if found is None:  # pragma: no cover - RETURNING always returns the row
            raise SourceError(f"PostgreSQL {self.where}: the upsert returned no version")
        return int(found[0])

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self._boundary(), self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _boundary(self) -> Iterator[None]:
        """Map psycopg and pool errors into SourceError (the password scrubbed)."""
        try:
            yield
        except psycopg.Error as exc:
            raise map_error(exc, self.where, self._password) from exc

    def _configure(self, conn: Connection) -> None:
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false)", (f"{self.statement_timeout_ms}ms",)
        )

    def _create_or_adopt(self, conn: Connection) -> None:
        name = {"t": sql.Identifier(self.table).as_string(conn)}
        if not conn.execute(_SQL_COLUMNS, name).fetchall():
            create = sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (namespace text NOT NULL, key text NOT NULL, "
                "value bytea, version bigint NOT NULL, PRIMARY KEY (namespace, key))"
            ).format(sql.Identifier(self.table))
            try:
                conn.execute(create)
            except (pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject):
                pass  # a concurrent CREATE TABLE IF NOT EXISTS won the race on pg_type
        columns = {n: (t, required) for n, t, required in conn.execute(_SQL_COLUMNS, name)}
        problems = [
            f"{column} is not {' or '.join(types)}"
            for column, types in EXPECTED_TYPES.items()
            if columns.get(column, ("missing",))[0] not in types
        ]
        problems += [
            f"extra column {column} is NOT NULL without a default"
            for column, (_, required) in columns.items()
            if column not in EXPECTED_TYPES and required
        ]
        row = conn.execute(_SQL_UNIQUE, name).fetchone()
        if not (row and row[0]):
            problems.append("no primary key or unique index on exactly (namespace, key)")
        if problems:
            raise ConfigError(
                f"table {self.table!r} on {self.where} has the wrong shape: "
                f"{'; '.join(problems)}; use another table (?table=...)"
            )


def _key(key: str) -> str:
    if "\x00" in key:
        raise InvalidKeyError("PostgreSQL text cannot hold a NUL character; the key has one")
    return key


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")


def _describe(params: dict[str, Any]) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"{user}{params.get('host') or 'localhost'}{port}/{params.get('dbname', '')}"


def map_error(exc: psycopg.Error, where: str, password: str = "") -> SourceError:
    """The SourceError family for a psycopg (or pool) error, without the password."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if password:
        text = text.replace(password, "***")
    state = exc.sqlstate or ""
    if isinstance(exc, PoolClosed):
        return SourceUnavailable(f"the PostgreSQL source {where} is closed")
    if isinstance(exc, PoolTimeout):
        return SourceUnavailable(f"no PostgreSQL connection to {where} in time: {text}")
    if isinstance(exc, pg.QueryCanceled | pg.LockNotAvailable):
        return SourceTimeout(f"PostgreSQL {where} did not answer in time: {text}")
    if isinstance(exc, pg.TransactionRollback | psycopg.IntegrityError):
        return SourceConflict(f"PostgreSQL {where} conflict ({state}): {text}")
    if isinstance(exc, psycopg.InterfaceError) or (
        isinstance(exc, psycopg.OperationalError) and state[:2] in _UNREACHABLE
    ):
        return SourceUnavailable(f"cannot reach PostgreSQL {where}: {text}")
    return SourceError(f"PostgreSQL error on {where} ({state or 'client'}): {text}")


def from_url(url: ParsedURL, *, namespace: str, **options: Any) -> PostgresSource:
    """``postgresql://user[:pass]@host[:port][,host2[:port]]/db?pool_max=10&table=...``."""
    unknown = set(url.query) - OPTIONS - LIBPQ_OPTIONS
    if unknown:
        raise ConfigError(f"unknown PostgreSQL option(s) {sorted(unknown)} in {url.redacted()!r}")
    if set(options) - OPTIONS:
        raise ConfigError(f"unknown PostgreSQL source option(s) {sorted(set(options) - OPTIONS)}")
    params = {k: v for k, v in url.query.items() if k in LIBPQ_OPTIONS}
    if url.hosts:  # a host may be a percent-encoded unix socket directory
        params["host"] = ",".join(unquote(host) for host, _ in url.hosts)
        if any(port is not None for _, port in url.hosts):
            params["port"] = ",".join(str(port or 5432) for _, port in url.hosts)
    if url.path:
        params["dbname"] = url.path
    if url.username:
        params["user"] = url.username
    if url.password is not None:
        params["password"] = url.password
    kwargs: dict[str, Any] = {
        "table": url.query.get("table", DEFAULT_TABLE),
        "pool_min": url.option("pool_min", int, 1),
        "pool_max": url.option("pool_max", int, 10),
        "connect_timeout": url.option("connect_timeout", int, 5),
        "statement_timeout_ms": url.option("statement_timeout_ms", int, 5000),
    }
    kwargs.update(options)
    return PostgresSource(make_conninfo("", **params), namespace=namespace, **kwargs)
