"""A PostgreSQL table of the application as the source of truth (psycopg 3 + pool).

Reads one row by key -- its version and the cached value as JSON, both computed by the
server in one statement, with the namespace's epoch from the registry -- and never writes
the table (see ``sources/table.py``). ``open()`` checks the table (key unique and NOT
NULL, the version and value columns present) and claims the namespace in the registry
(``sources/registry.py``): another table's namespace is refused; a re-created or altered
table bumps the namespace's epoch.

The asyncio version is written by hand; ``scripts/unasync.py`` generates the sync one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import psycopg
from psycopg import errors as pg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from ..epochs import PG_BUMP, PG_COLUMNS, PG_IDENTITY, PG_OBSERVE, PG_UPGRADE
from ..epochs import PG_CREATE as PG_CREATE_EPOCHS
from ..errors import ConfigError, InvalidKeyError, SourceUnavailable
from ..sources.base import Row
from ..sources.postgres_sql import AsyncConnection, check_key_text, describe, map_error, validate
from ..sources.registry import PG_EPOCH, PG_RELEASE, Claim, Verdict, cache_version
from ..sources.rowcodec import PG_SESSION_CALLS
from ..sources.table import Table, refuse_write
from ..sources.table_sql import (
    COLUMNS,
    RELATION,
    UNIQUE,
    read_many_sql,
    read_sql,
    returning_sql,
    scan_sql,
)
from .namespaces import claim_namespace, create_registry

_RACE = (pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject)


class AsyncPostgresTableSource:
    """Rows of one application table, read by key, for the asyncio store.

        >>> src = AsyncPostgresTableSource("postgresql://app@db/app", Table("users"),
        ...                                namespace="users")
        >>> await src.open()
        >>> await src.read("42")
        Row(version=7, payload=b'{"id":42,"name":"Alice","version":7}')

    Each read borrows a pooled connection (autocommit, in the session of
    ``rowcodec.PG_SESSION``: ``TimeZone`` UTC and the rest, so rows are encoded as the
    listener and the ORM integrations encode them).
    """

    name = "postgres-table"

    def __init__(self, conninfo: str, table: Table, *, namespace: str, pool_min: int = 1,
                 pool_max: int = 10, connect_timeout: int = 5,
                 statement_timeout_ms: int = 5000) -> None:
        if not isinstance(table, Table):
            raise ConfigError(f"table must be a writethrough.Table, not {type(table).__name__}")
        validate("t", pool_min, pool_max, connect_timeout, statement_timeout_ms)
        try:
            params: dict[str, Any] = conninfo_to_dict(conninfo)
        except psycopg.Error:
            raise ConfigError("malformed PostgreSQL connection string") from None
        params.setdefault("application_name", "writethrough")
        params["connect_timeout"] = connect_timeout
        self._conninfo = make_conninfo(**params)
        self._password = str(params.get("password") or "")
        self.where = describe(params)
        self.table = table
        self.namespace = namespace
        self.pool_min, self.pool_max = pool_min, pool_max
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self.last_epoch = 0  # the namespace's epoch as last read (every read refreshes it)
        self.claim: Claim | None = None
        self.claim_verdict: Verdict | None = None  # what open() found in the registry
        self.columns: tuple[str, ...] = ()
        self.key_type = "text"
        self._sql_read: sql.Composed | None = None
        self._sql_scan: sql.Composed | None = None
        self._sql_read_many: sql.Composed | None = None
        self._epochs_ready = False  # new pool connections check the server's identity
        self._pool: AsyncConnectionPool[AsyncConnection] | None = None

    async def open(self) -> None:
        """Connect, check the table, claim the namespace, fill the pool."""
        if self._pool is not None:
            return
        with self._boundary():
            async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                await self._configure(conn)
                await self._adopt(conn)
        pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            self._conninfo, min_size=self.pool_min, max_size=self.pool_max,
            kwargs={"autocommit": True}, configure=self._configure,
            timeout=self.connect_timeout, name=f"writethrough-table-{self.namespace}", open=False)
        try:
            with self._boundary():
                await pool.open(wait=True, timeout=self.connect_timeout)
        except BaseException:
            await pool.close(timeout=0)
            raise
        self._pool = pool

    async def read(self, key: str) -> Row:
        """The row's cache version and payload; ``payload`` None when the row is absent."""
        if self._sql_read is None:
            raise SourceUnavailable(f"the PostgreSQL table source {self.where} is not open")
        async with self._connection() as conn:
            try:
                cur = await conn.execute(self._sql_read, (self.namespace, check_key_text(key)))
            except (pg.InvalidTextRepresentation, pg.NumericValueOutOfRange):
                raise InvalidKeyError(
                    f"key {key!r} is not a {self.key_type} ({self.table.name}.{self.table.key})"
                ) from None
            found = await cur.fetchone()
        if found is None:  # pragma: no cover - the query always returns one row
            return Row(0, None)
        self.last_epoch = int(found[0])
        if found[1] is None:
            return Row(cache_version(self.last_epoch, 0), None)
        payload = found[2].encode() if isinstance(found[2], str) else b"null"
        return Row(cache_version(self.last_epoch, int(found[1])), payload)

    async def read_many(self, keys: Sequence[str]) -> dict[str, Row]:
        """The rows of ``keys`` (absent ones too), in one statement (``unnest``)."""
        if self._sql_read_many is None:
            raise SourceUnavailable(f"the PostgreSQL table source {self.where} is not open")
        if not keys:
            return {}
        async with self._connection() as conn:
            try:
                cur = await conn.execute(self._sql_read_many,
                                         (self.namespace, [check_key_text(k) for k in keys]))
            except (pg.InvalidTextRepresentation, pg.NumericValueOutOfRange):
                raise InvalidKeyError(
                    f"a key of {list(keys)[:5]!r}... is not a {self.key_type} "
                    f"({self.table.name}.{self.table.key})"
                ) from None
            found = await cur.fetchall()
        rows: dict[str, Row] = {}
        for epoch, key, version, payload in found:
            self.last_epoch = int(epoch)
            if version is None:
                rows[key] = Row(cache_version(self.last_epoch, 0), None)
            else:
                data = payload.encode() if isinstance(payload, str) else b"null"
                rows[key] = Row(cache_version(self.last_epoch, int(version)), data)
        return rows

    async def scan(self, after: str | None, limit: int) -> list[tuple[str, Row]]:
        """Up to ``limit`` rows with keys after ``after`` (key order): for backfill."""
        if self._sql_scan is None:
            raise SourceUnavailable(f"the PostgreSQL table source {self.where} is not open")
        async with self._connection() as conn:
            cur = await conn.execute(self._sql_scan, (self.namespace, after, after, limit))
            rows = await cur.fetchall()
        out = []
        for epoch, key, version, payload in rows:
            self.last_epoch = int(epoch)
            data = payload.encode() if isinstance(payload, str) else b"null"
            out.append((str(key), Row(cache_version(self.last_epoch, int(version)), data)))
        return out

    def returning(self, relation: str | None = None) -> sql.Composed:
        """``RETURNING`` items for your own statements: ``key::text, version, payload``."""
        return returning_sql(self.table, self.columns, relation or self.table.parts[-1])

    async def epoch(self) -> int:
        """The namespace's database epoch (``epochs``; the store asks now and then)."""
        async with self._connection() as conn:
            found = await (await conn.execute(PG_EPOCH, (self.namespace,))).fetchone()
        self.last_epoch = int(found[0]) if found else self.last_epoch
        return self.last_epoch

    async def bump_epoch(self, reason: str = "flushed", *, everything: bool = False) -> int:
        """Move the namespace's epoch (``everything``: the database's) past every version
        handed out so far: every entry cached before is then never served again."""
        params = {"ns": "" if everything else self.namespace, "reason": reason}
        async with self._connection() as conn:
            found = await (await conn.execute(PG_BUMP, params)).fetchone()
        self.last_epoch = int(found[0]) if found else self.last_epoch
        return self.last_epoch

    async def release(self) -> None:
        """Forget this namespace's claim (its table may then be re-homed)."""
        async with self._connection() as conn:
            await conn.execute(PG_RELEASE, (self.namespace,))

    async def write(self, key: str, payload: bytes) -> int:
        raise refuse_write(self.table.name, "write")

    async def delete(self, key: str) -> int:
        raise refuse_write(self.table.name, "delete")

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    # -- I/O boundary ------------------------------------------------------------

    async def _adopt(self, conn: AsyncConnection) -> None:
        """Check the table and claim the namespace for it (one transaction)."""
        ident = sql.Identifier(*self.table.parts).as_string(conn)
        found = await (await conn.execute(RELATION, (ident,))).fetchone()
        if found is None:
            raise ConfigError(f"no table {self.table.name!r} on {self.where}")
        oid, schema, name = int(found[0]), str(found[1]), str(found[2])
        present = [(str(n), str(t)) for n, t in await (await conn.execute(COLUMNS, (oid,))).fetchall()]
        types = dict(present)
        self.columns = self.table.cached_columns([n for n, _ in present])
        if await (await conn.execute(UNIQUE, (oid, self.table.key))).fetchone() != (True,):
            raise ConfigError(f"key column {self.table.key!r} of {self.table.name!r} must be "
                              "NOT NULL with a primary key or unique index of its own")
        if types[self.table.version] not in ("bigint", "integer", "smallint"):
            raise ConfigError(f"version column {self.table.version!r} of {self.table.name!r} "
                              f"is {types[self.table.version]}, not an integer")
        self.key_type = types[self.table.key]
        wanted = Claim(self.namespace, f"{schema}.{name}", self.table.key, oid,
                       self.table.signature(present))
        await create_registry(conn)
        with suppress(*_RACE):
            await conn.execute(PG_CREATE_EPOCHS)
        if await (await conn.execute(PG_COLUMNS)).fetchone() != (4,):
            await conn.execute(PG_UPGRADE)  # an epochs table made by an earlier version
        self._epochs_ready = True
        await self._observe(conn)
        verdict, epoch = await claim_namespace(conn, wanted)
        self.last_epoch = epoch
        self.claim = Claim(wanted.namespace, wanted.table, wanted.key_column, wanted.oid,
                           wanted.signature, epoch)
        self.claim_verdict = verdict
        self._sql_read = read_sql(self.table, schema, name, self.key_type, self.columns)
        self._sql_scan = scan_sql(self.table, schema, name, self.key_type, self.columns)
        self._sql_read_many = read_many_sql(self.table, schema, name, self.key_type, self.columns)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        if self._pool is None:
            raise SourceUnavailable(f"the PostgreSQL table source {self.where} is not open")
        with self._boundary():
            async with self._pool.connection() as conn:
                yield conn

    @contextmanager
    def _boundary(self) -> Any:
        """Map psycopg and pool errors into SourceError (the password scrubbed)."""
        try:
            yield
        except psycopg.Error as exc:
            raise map_error(exc, self.where, self._password) from exc

    async def _configure(self, conn: AsyncConnection) -> None:
        timeout = f"{self.statement_timeout_ms}ms"
        # PG_SESSION_CALLS: TimeZone UTC and the rest the one row encoding assumes.
        await conn.execute("SELECT set_config('statement_timeout', %s, false), "
                           + PG_SESSION_CALLS, (timeout,))
        if self._epochs_ready:
            await self._observe(conn)

    async def _observe(self, conn: AsyncConnection) -> None:
        """As the key-value source does: a server that is not the one last seen (a restore,
        a failover) bumps the database's epoch (``epochs``). A standby is refused."""
        try:
            found = await (await conn.execute(PG_IDENTITY)).fetchone()
        except psycopg.errors.ObjectNotInPrerequisiteState:  # recovery is in progress
            # A standby: no writes, reads that lag the primary, and no timeline to tell
            # whether it was promoted later. Never used (the pool tries again).
            raise SourceUnavailable(
                f"PostgreSQL {self.where} is a standby (in recovery): writethrough needs the primary"
            ) from None
        if found is not None:
            await conn.execute(PG_OBSERVE, {"sid": found[0], "tl": found[1]})
