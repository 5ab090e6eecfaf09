"""PostgreSQL as the source of truth (psycopg 3, a psycopg_pool.ConnectionPool).

Versions come from the statement that writes the row
(``INSERT ... ON CONFLICT (namespace, key) DO UPDATE SET version = t.version + 1
RETURNING version``), each statement its own transaction (autocommit). Under READ
COMMITTED a conflicting upsert waits for the row lock, then updates the newest
committed row, so versions follow commit order. A delete keeps the row with a NULL
value and a new version, so a re-insert never goes back.

Also here: the outbox (``durability="outbox"``: the row and its outbox row in one
statement) and ``AsyncPostgresSource``, the asyncio store's wrapper over the same pool.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
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
from .base import Logged, OutboxRow, Row

Connection = psycopg.Connection[TupleRow]
DEFAULT_TABLE = "writethrough_items"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
TEXT = ("text", "character varying")
EXPECTED_TYPES = {"namespace": TEXT, "key": TEXT, "value": ("bytea",), "version": ("bigint",)}
# SQLSTATE classes meaning "cannot use the server now": connection, authorization, unknown
# database, resources, operator intervention, system error ("" = client-side failure).
_UNREACHABLE = ("", "08", "28", "3D", "53", "57", "58")
OPTIONS = {"table", "pool_min", "pool_max", "connect_timeout", "statement_timeout_ms"}
# libpq parameters passed through from the URL query as they are.
LIBPQ_OPTIONS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "application_name"}
_READ = "SELECT version, value FROM {} WHERE namespace = %s AND key = %s"
_UPSERT = (
    "INSERT INTO {} AS t (namespace, key, value, version) VALUES (%s, %s, %s, 1) "
    "ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, "
    "version = t.version + 1 RETURNING version"
)
_CREATE = (
    "CREATE TABLE IF NOT EXISTS {} (namespace text NOT NULL, key text NOT NULL, "
    "value bytea, version bigint NOT NULL, PRIMARY KEY (namespace, key))"
)
# The outbox (durability="outbox"): one statement writes the row and logs it, so both
# commit together; claims use the server's clock and SKIP LOCKED, so repairers share rows.
OUTBOX_TABLE = "writethrough_outbox"
_LOGGED = (
    "WITH w AS (" + _UPSERT + ") INSERT INTO {} (namespace, key, version, action) "
    "SELECT %s, %s, version, %s FROM w RETURNING version, id"
)
_CREATE_OUTBOX = (
    "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, namespace text NOT NULL, "
    "key text NOT NULL, version bigint NOT NULL, action text NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now(), claimed_until timestamptz)"
)
_CLAIM = (
    "UPDATE {0} SET claimed_until = now() + make_interval(secs => %(claim_for)s) WHERE id IN ("
    "SELECT id FROM {0} WHERE namespace = %(ns)s "
    "AND created_at <= now() - make_interval(secs => %(older_than)s) "
    "AND (claimed_until IS NULL OR claimed_until < now()) "
    "ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING id, key, version, action"
)
_SQL_COLUMNS = """
SELECT a.attname, a.atttypid::regtype::text, a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
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

    def __init__(self, conninfo: str, *, namespace: str, table: str = DEFAULT_TABLE,
                 pool_min: int = 1, pool_max: int = 10, connect_timeout: int = 5,
                 statement_timeout_ms: int = 5000) -> None:
        _validate(table, pool_min, pool_max, connect_timeout, statement_timeout_ms)
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
        self._sql_read = sql.SQL(_READ).format(sql.Identifier(table))
        self._sql_write = sql.SQL(_UPSERT).format(sql.Identifier(table))
        outbox = sql.Identifier(OUTBOX_TABLE)
        self._sql_logged = sql.SQL(_LOGGED).format(sql.Identifier(table), outbox)
        self._sql_claim = sql.SQL(_CLAIM).format(outbox)
        self._sql_done = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(outbox)
        self._outbox_ready = False
        self._checking = threading.Lock()  # one background pool check at a time
        with self._boundary(), psycopg.connect(self._conninfo, autocommit=True) as conn:
            self._configure(conn)
            self._create_or_adopt(conn)
        # autocommit: each statement is its own transaction. timeout: the longest wait
        # for a free connection (a server that is down must not cost more than connecting).
        self._pool: ConnectionPool[Connection] = ConnectionPool(
            self._conninfo, min_size=pool_min, max_size=pool_max, kwargs={"autocommit": True},
            configure=self._configure, timeout=connect_timeout, name=f"writethrough-{namespace}",
            open=False)
        try:
            with self._boundary():
                self._pool.open(wait=True, timeout=connect_timeout)
        except BaseException:
            self._pool.close(timeout=0)
            raise

    def open(self) -> None:
        """Nothing to do: the pool is opened (and the server checked) at construction."""

    def read(self, key: str) -> Row:
        params = (self.namespace, _key(key))
        with self._connection() as conn:
            found = conn.execute(self._sql_read, params).fetchone()
        if found is None:
            return Row(0, None)
        return Row(int(found[0]), None if found[1] is None else bytes(found[1]))

    def write(self, key: str, payload: bytes) -> int:
        return self._upsert(key, payload)

    def delete(self, key: str) -> int:
        return self._upsert(key, None)

    def truncate_namespace(self) -> int:
        """Delete every row of this namespace (and its outbox rows); returns how many rows.

        Versions then restart at 1, below what a cache may still hold: clear this
        namespace in the cache too, or never use it again (tests, cleanup tools).
        """
        delete = sql.SQL("DELETE FROM {} WHERE namespace = %s")
        with self._connection() as conn:
            if conn.execute("SELECT to_regclass(%s)", (OUTBOX_TABLE,)).fetchone() != (None,):
                conn.execute(delete.format(sql.Identifier(OUTBOX_TABLE)), (self.namespace,))
            items = delete.format(sql.Identifier(self.table))
            return conn.execute(items, (self.namespace,)).rowcount

    # -- the outbox (durability="outbox") -------------------------------------------

    def write_logged(self, key: str, payload: bytes) -> Logged:
        return self._logged(key, payload, "write")

    def delete_logged(self, key: str) -> Logged:
        return self._logged(key, None, "delete")

    def outbox_claim(self, older_than: float, limit: int, claim_for: float) -> list[OutboxRow]:
        params = {"ns": self.namespace, "older_than": older_than, "limit": limit,
                  "claim_for": claim_for}
        with self._connection() as conn:
            self._ensure_outbox(conn)
            found = conn.execute(self._sql_claim, params).fetchall()
        rows = [OutboxRow(int(i), str(k), int(v), str(a)) for i, k, v, a in found]
        return sorted(rows, key=lambda row: row.id)

    def outbox_done(self, ids: list[int]) -> None:
        if ids:
            with self._connection() as conn:
                conn.execute(self._sql_done, (list(ids),))

    def close(self) -> None:
        self._pool.close()

    # -- I/O boundary ------------------------------------------------------------

    def _logged(self, key: str, payload: bytes | None, action: str) -> Logged:
        params = (self.namespace, _key(key), payload, self.namespace, key, action)
        with self._connection() as conn:
            self._ensure_outbox(conn)
            found = conn.execute(self._sql_logged, params).fetchone()
        if found is None:  # pragma: no cover - RETURNING always returns the row
            raise SourceError(f"PostgreSQL {self.where}: the logged upsert returned nothing")
        return Logged(int(found[0]), int(found[1]))

    def _ensure_outbox(self, conn: Connection) -> None:
        """Create the outbox on first use, so stores without one need no more DDL."""
        if self._outbox_ready:
            return
        if conn.execute("SELECT to_regclass(%s)", (OUTBOX_TABLE,)).fetchone() == (None,):
            outbox = sql.Identifier(OUTBOX_TABLE)
            with suppress(pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject):
                conn.execute(sql.SQL(_CREATE_OUTBOX).format(outbox))
            with suppress(pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject):
                index = sql.Identifier(f"{OUTBOX_TABLE}_namespace_id")
                conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (namespace, id)")
                             .format(index, outbox))
        self._outbox_ready = True

    def _upsert(self, key: str, payload: bytes | None) -> int:
        params = (self.namespace, _key(key), payload)
        with self._connection() as conn:
            found = conn.execute(self._sql_write, params).fetchone()
        if found is None:  # pragma: no cover - RETURNING always returns the row
            raise SourceError(f"PostgreSQL {self.where}: the upsert returned no version")
        return int(found[0])

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            with self._boundary(), self._pool.connection() as conn:
                yield conn
        except SourceUnavailable:
            self._check_idle_connections()
            raise

    def _check_idle_connections(self) -> None:
        # A restarted server leaves every pooled connection dead: test the idle ones now,
        # so one call fails, not one per connection. In the background: on a dead network
        # a check can hang until TCP gives up, and the caller's time budget is its own.
        if not self._checking.acquire(blocking=False):
            return

        def check() -> None:
            try:
                with suppress(Exception):
                    self._pool.check()
            finally:
                self._checking.release()

        threading.Thread(target=check, name="writethrough-pg-check", daemon=True).start()

    @contextmanager
    def _boundary(self) -> Iterator[None]:
        """Map psycopg and pool errors into SourceError (the password scrubbed)."""
        try:
            yield
        except psycopg.Error as exc:
            raise map_error(exc, self.where, self._password) from exc

    def _configure(self, conn: Connection) -> None:
        timeout = f"{self.statement_timeout_ms}ms"
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))

    def _create_or_adopt(self, conn: Connection) -> None:
        name = {"t": sql.Identifier(self.table).as_string(conn)}
        if not conn.execute(_SQL_COLUMNS, name).fetchall():
            # A concurrent CREATE TABLE IF NOT EXISTS can lose the race on pg_type's index.
            with suppress(pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject):
                conn.execute(sql.SQL(_CREATE).format(sql.Identifier(self.table)))
        found = {n: (t, required) for n, t, required in conn.execute(_SQL_COLUMNS, name)}
        problems = [f"{column} is not {' or '.join(types)}" for column, types in
                    EXPECTED_TYPES.items() if found.get(column, ("missing",))[0] not in types]
        problems += [f"extra column {column} is NOT NULL without a default" for column, (_, req)
                     in found.items() if column not in EXPECTED_TYPES and req]
        if conn.execute(_SQL_UNIQUE, name).fetchone() != (True,):
            problems.append("no primary key or unique index on exactly (namespace, key)")
        if problems:
            raise ConfigError(f"table {self.table!r} on {self.where} has the wrong shape: "
                              f"{'; '.join(problems)}; use another table (?table=...)")


def _key(key: str) -> str:
    if "\x00" in key:
        raise InvalidKeyError("PostgreSQL text cannot hold a NUL character; the key has one")
    return key


def _validate(table: object, pool_min: object, pool_max: object, connect_timeout: object,
              statement_timeout_ms: object) -> None:
    if not isinstance(table, str) or not _IDENTIFIER.match(table):
        raise ConfigError(f"table name {table!r} is not a plain SQL identifier")
    minimum = max(1, pool_min) if isinstance(pool_min, int) else 1
    for name, value, least in (("pool_min", pool_min, 0), ("pool_max", pool_max, minimum),
                               ("connect_timeout", connect_timeout, 1),
                               ("statement_timeout_ms", statement_timeout_ms, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")


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
    if state in ("57014", "55P03"):  # statement_timeout, lock_timeout
        return SourceTimeout(f"PostgreSQL {where} did not answer in time: {text}")
    # Class 40 (serialization failure, deadlock) and 23 (constraints); SerializationFailure
    # does not subclass TransactionRollback in psycopg, so match on the SQLSTATE class.
    if state[:2] in ("40", "23") or isinstance(exc, psycopg.IntegrityError):
        return SourceConflict(f"PostgreSQL {where} conflict ({state}): {text}")
    if isinstance(exc, psycopg.InterfaceError) or (
        isinstance(exc, psycopg.OperationalError) and state[:2] in _UNREACHABLE
    ):
        return SourceUnavailable(f"cannot reach PostgreSQL {where}: {text}")
    return SourceError(f"PostgreSQL error on {where} ({state or 'client'}): {text}")


class AsyncPostgresSource:
    """PostgreSQL for the asyncio store (``writethrough.open_async(source="postgresql://...")``).

    Connects in ``await open()``, so the event loop never waits on a connect, then runs
    each call in a worker thread over the sync pool (a native AsyncConnectionPool could
    replace this).

        >>> src = AsyncPostgresSource(partial(PostgresSource, "postgresql:///app", namespace="p"))
        >>> await src.open()
        >>> await src.write("user:1", b"1")
        1
    """

    name = "postgres"

    def __init__(self, connect: Callable[[], PostgresSource]) -> None:
        self._connect = connect
        self._inner: PostgresSource | None = None

    @property
    def inner(self) -> PostgresSource:
        if self._inner is None:
            raise SourceUnavailable("the PostgreSQL source is not open: await open() first")
        return self._inner

    async def open(self) -> None:
        if self._inner is None:
            self._inner = await asyncio.to_thread(self._connect)

    async def read(self, key: str) -> Row:
        return await asyncio.to_thread(self.inner.read, key)

    async def write(self, key: str, payload: bytes) -> int:
        return await asyncio.to_thread(self.inner.write, key, payload)

    async def delete(self, key: str) -> int:
        return await asyncio.to_thread(self.inner.delete, key)

    async def write_logged(self, key: str, payload: bytes) -> Logged:
        return await asyncio.to_thread(self.inner.write_logged, key, payload)

    async def delete_logged(self, key: str) -> Logged:
        return await asyncio.to_thread(self.inner.delete_logged, key)

    async def outbox_claim(self, older_than: float, limit: int, claim_for: float
                           ) -> list[OutboxRow]:
        return await asyncio.to_thread(self.inner.outbox_claim, older_than, limit, claim_for)

    async def outbox_done(self, ids: list[int]) -> None:
        await asyncio.to_thread(self.inner.outbox_done, ids)

    async def truncate_namespace(self) -> int:
        return await asyncio.to_thread(self.inner.truncate_namespace)

    async def close(self) -> None:
        if self._inner is not None:
            await asyncio.to_thread(self._inner.close)


def from_url(url: ParsedURL, *, namespace: str, **options: Any) -> PostgresSource:
    """``postgresql://user[:pass]@host[:port][,host2[:port]]/db?pool_max=10&table=...``."""
    conninfo, kwargs = _parse(url, options)
    return PostgresSource(conninfo, namespace=namespace, **kwargs)


def async_from_url(url: ParsedURL, *, namespace: str, **options: Any) -> AsyncPostgresSource:
    """The same URLs for the asyncio store: settings are checked now, the server at open()."""
    conninfo, kwargs = _parse(url, options)
    _validate(**kwargs)
    return AsyncPostgresSource(partial(PostgresSource, conninfo, namespace=namespace, **kwargs))


def _parse(url: ParsedURL, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The libpq conninfo (host, port, dbname, user, password, libpq options) and our options."""
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
    kwargs: dict[str, Any] = {"table": url.query.get("table", DEFAULT_TABLE)}
    for name, default in (("pool_min", 1), ("pool_max", 10), ("connect_timeout", 5),
                          ("statement_timeout_ms", 5000)):
        kwargs[name] = url.option(name, int, default)
    kwargs.update(options)
    return make_conninfo("", **params), kwargs
