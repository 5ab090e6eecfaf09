"""PostgreSQL as the source of truth (psycopg 3 and its pool).

Versions come from the statement that writes the row
(``INSERT ... ON CONFLICT (namespace, key) DO UPDATE SET version = t.version + 1
RETURNING version``), each statement its own transaction (autocommit). Under READ
COMMITTED a conflicting upsert waits for the row lock, then updates the newest
committed row, so versions follow commit order. A delete keeps the row with a NULL
value and a new version, so a re-insert never goes back.

The asyncio version (``_async/postgres_source.py``, on ``AsyncConnectionPool``) is
written by hand; the sync one is generated from it by ``scripts/unasync.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import psycopg
from psycopg import errors as pg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from ..epochs import PG_BUMP, PG_COLUMNS, PG_CREATE, PG_IDENTITY, PG_OBSERVE, PG_UPGRADE, compose
from ..epochs import TABLE as EPOCHS
from ..errors import ConfigError, SourceError, SourceUnavailable
from ..sources.base import Logged, OutboxRow, Row
from ..sources.postgres_sql import (
    DEFAULT_TABLE,
    EXPECTED_TYPES,
    OUTBOX_TABLE,
    SQL_BACKLOG,
    SQL_CLAIM,
    SQL_COLUMNS,
    SQL_CREATE,
    SQL_CREATE_OUTBOX,
    SQL_EPOCH,
    SQL_LOGGED,
    SQL_LOGGED_MANY,
    SQL_READ,
    SQL_READ_MANY,
    SQL_UNIQUE,
    SQL_UPSERT,
    SQL_UPSERT_MANY,
    AsyncConnection,
    check_key_text,
    describe,
    map_error,
    validate,
)
from ..sources.registry import Claim, Verdict, signature
from ..sources.table_sql import COLUMNS, RELATION
from .compat import spawn
from .namespaces import claim_namespace, create_registry

_RACE = (pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject)


class AsyncPostgresSource:
    """Rows of one namespace in a PostgreSQL table, over a pool of connections.

        >>> src = AsyncPostgresSource("postgresql://app@127.0.0.1:5432/app", namespace="p")
        >>> await src.open()
        >>> await src.write("user:1", b'{"name":"Ann"}')
        1
        >>> await src.close()

    ``open()`` connects once (a bad DSN or a server that is down raises
    SourceUnavailable within ``connect_timeout`` seconds), creates the table or
    adopts it, claims the namespace for it in the registry (a namespace of another
    table is refused: ``sources/registry.py``; ``claim=False`` for a tool that only
    reads or bumps epochs), and fills the pool. Each call borrows a pooled connection for one
    statement.
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
        claim: bool = True,
    ) -> None:
        validate(table, pool_min, pool_max, connect_timeout, statement_timeout_ms)
        try:
            params: dict[str, Any] = conninfo_to_dict(conninfo)
        except psycopg.Error:
            raise ConfigError("malformed PostgreSQL connection string") from None
        params.setdefault("application_name", "writethrough")
        params["connect_timeout"] = connect_timeout
        self._conninfo = make_conninfo(**params)
        self._password = str(params.get("password") or "")
        self.where = describe(params)
        self.namespace = namespace
        self.table = table
        self.pool_min, self.pool_max = pool_min, pool_max
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        # Rendered to plain strings once connected (``_render``): a Composed is rendered
        # again on every execute.
        self._sql_read: sql.Composed | str = sql.SQL(SQL_READ).format(sql.Identifier(table))
        self._sql_write: sql.Composed | str = sql.SQL(SQL_UPSERT).format(sql.Identifier(table))
        outbox = sql.Identifier(OUTBOX_TABLE)
        self._sql_logged = sql.SQL(SQL_LOGGED).format(sql.Identifier(table), outbox)
        self._sql_read_many = sql.SQL(SQL_READ_MANY).format(sql.Identifier(table))
        self._sql_write_many = sql.SQL(SQL_UPSERT_MANY).format(sql.Identifier(table))
        self._sql_logged_many = sql.SQL(SQL_LOGGED_MANY).format(sql.Identifier(table), outbox)
        self._sql_claim = sql.SQL(SQL_CLAIM).format(outbox)
        self._sql_backlog = sql.SQL(SQL_BACKLOG).format(outbox)
        self._sql_done = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(outbox)
        self._outbox_ready = False
        self._epochs_ready = False  # the epochs table exists: new connections check the server
        self._checking = False  # one background pool check at a time
        self.claim_verdict: Verdict | None = None  # what open() found in the registry
        self.claims = claim  # False: an admin tool's connection (epochs), no store's
        self._pool: AsyncConnectionPool[AsyncConnection] | None = None

    async def open(self) -> None:
        """Connect, create or adopt the table, claim the namespace, fill the pool."""
        if self._pool is not None:
            return
        with self._boundary():
            async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
                await self._configure(conn)
                await self._create_or_adopt(conn)
                self._render(conn)
        # autocommit: each statement is its own transaction. timeout: the longest wait
        # for a free connection (a server that is down must not cost more than connecting).
        pool: AsyncConnectionPool[AsyncConnection] = AsyncConnectionPool(
            self._conninfo,
            min_size=self.pool_min,
            max_size=self.pool_max,
            kwargs={"autocommit": True},
            configure=self._configure,
            timeout=self.connect_timeout,
            name=f"writethrough-{self.namespace}",
            open=False,
        )
        try:
            with self._boundary():
                await pool.open(wait=True, timeout=self.connect_timeout)
        except BaseException:
            await pool.close(timeout=0)
            raise
        self._pool = pool

    async def read(self, key: str) -> Row:
        found = await self._fetchone(self._sql_read, {"ns": self.namespace, "key": check_key_text(key)})
        assert found is not None  # the epoch's row is always there
        epoch, version, value = found
        if version is None:
            return Row(compose(int(epoch), 0), None)
        return Row(compose(int(epoch), int(version)), None if value is None else bytes(value))

    async def write(self, key: str, payload: bytes) -> int:
        return await self._upsert(key, payload)

    async def delete(self, key: str) -> int:
        return await self._upsert(key, None)

    # -- batches: one statement each (store.get_many / put_many / delete_many) ----------

    async def read_many(self, keys: Sequence[str]) -> dict[str, Row]:
        """The rows of ``keys`` (absent ones too), in one statement (``key = ANY(...)``)."""
        params = {"ns": self.namespace, "keys": [check_key_text(k) for k in keys]}
        async with self._connection() as conn:
            found = await (await conn.execute(self._sql_read_many, params)).fetchall()
        epoch = int(found[0][0])  # the epoch's row is always there
        rows = {k: Row(compose(epoch, 0), None) for k in keys}
        for _, key, version, value in found:
            if key is not None:
                rows[key] = Row(compose(epoch, int(version)), None if value is None else bytes(value))
        return rows

    async def write_many(self, items: Mapping[str, bytes]) -> dict[str, int]:
        """Upsert every row in one statement and one transaction; their new versions."""
        return {k: v for k, (v, _) in (await self._upsert_many(dict(items), None)).items()}

    async def delete_many(self, keys: Sequence[str]) -> dict[str, int]:
        return {k: v for k, (v, _) in (await self._upsert_many(dict.fromkeys(keys), None)).items()}

    async def write_many_logged(self, items: Mapping[str, bytes]) -> dict[str, Logged]:
        """``write_many`` and an outbox row per key, in the same statement."""
        return {k: Logged(v, i) for k, (v, i) in (await self._upsert_many(dict(items), "write")).items()}

    async def delete_many_logged(self, keys: Sequence[str]) -> dict[str, Logged]:
        return {k: Logged(v, i) for k, (v, i) in (await self._upsert_many(dict.fromkeys(keys), "delete")).items()}

    async def _upsert_many(self, items: dict[str, bytes | None], action: str | None) -> dict[str, tuple[int, int]]:
        if not items:
            return {}
        keys = sorted(items)
        params = {"ns": self.namespace, "keys": [check_key_text(k) for k in keys],
                  "values": [items[k] for k in keys], "action": action}
        out: dict[str, tuple[int, int]] = {}
        async with self._connection() as conn:
            if action is not None:
                await self._ensure_outbox(conn)
            async with conn.transaction():  # a key at its maximum version: nothing changes
                if action is None:
                    found = await (await conn.execute(self._sql_write_many, params)).fetchall()
                    out = {str(k): (compose(int(e), int(v)), 0) for k, v, e in found}
                else:
                    found = await (await conn.execute(self._sql_logged_many, params)).fetchall()
                    out = {str(k): (compose(int(e), int(v)), int(i)) for k, v, i, e in found}
                if len(out) != len(keys):
                    raise self._at_maximum(next(k for k in keys if k not in out))
        return out

    async def epoch(self) -> int:
        """The namespace's database epoch (``epochs``)."""
        async with self._connection() as conn:
            found = await (await conn.execute(SQL_EPOCH, {"ns": self.namespace})).fetchone()
        return int(found[0]) if found is not None else 0

    async def bump_epoch(self, reason: str, *, everything: bool = False) -> int:
        """Move this namespace's epoch (or, ``everything``, the database's) past every
        version handed out so far: after a restore, a TRUNCATE, a re-created table."""
        params = {"ns": "" if everything else self.namespace, "reason": reason}
        async with self._connection() as conn:
            found = await (await conn.execute(PG_BUMP, params)).fetchone()
        return int(found[0]) if found is not None else 0

    async def truncate_namespace(self) -> int:
        """Delete every row of this namespace (and its outbox rows); returns how many rows.

        Versions then restart at 1, below what a cache may still hold: clear this
        namespace in the cache too, or never use it again (tests, cleanup tools).
        """
        delete = sql.SQL("DELETE FROM {} WHERE namespace = %s")
        async with self._connection() as conn:
            if await (await conn.execute("SELECT to_regclass(%s)", (OUTBOX_TABLE,))).fetchone() != (None,):
                await conn.execute(delete.format(sql.Identifier(OUTBOX_TABLE)), (self.namespace,))
            items = delete.format(sql.Identifier(self.table))
            return (await conn.execute(items, (self.namespace,))).rowcount

    # -- the outbox (durability="outbox") -------------------------------------------

    async def write_logged(self, key: str, payload: bytes) -> Logged:
        return await self._logged(key, payload, "write")

    async def delete_logged(self, key: str) -> Logged:
        return await self._logged(key, None, "delete")

    async def outbox_claim(self, older_than: float, limit: int, claim_for: float) -> list[OutboxRow]:
        params = {"ns": self.namespace, "older_than": older_than, "limit": limit, "claim_for": claim_for}
        async with self._connection() as conn:
            await self._ensure_outbox(conn)
            found = await (await conn.execute(self._sql_claim, params)).fetchall()
        rows = [OutboxRow(int(i), str(k), compose(int(e), int(v)), str(a)) for i, k, v, a, e in found]
        return sorted(rows, key=lambda row: row.id)

    async def outbox_backlog(self, older_than: float) -> tuple[int, float]:
        """Outbox rows older than ``older_than`` seconds (waiting for a repair), and the age
        in seconds of the oldest row."""
        params = {"ns": self.namespace, "older_than": older_than}
        async with self._connection() as conn:
            await self._ensure_outbox(conn)
            found = await (await conn.execute(self._sql_backlog, params)).fetchone()
        return (0, 0.0) if found is None else (int(found[0]), float(found[1]))

    async def outbox_done(self, ids: list[int]) -> None:
        if ids:
            async with self._connection() as conn:
                await conn.execute(self._sql_done, (list(ids),))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    # -- I/O boundary ------------------------------------------------------------

    async def _logged(self, key: str, payload: bytes | None, action: str) -> Logged:
        params = {"ns": self.namespace, "key": check_key_text(key), "value": payload, "action": action}
        async with self._connection() as conn:
            await self._ensure_outbox(conn)
            found = await (await conn.execute(self._sql_logged, params)).fetchone()
        if found is None:
            raise self._at_maximum(key)
        return Logged(compose(int(found[2]), int(found[0])), int(found[1]))

    async def _ensure_outbox(self, conn: AsyncConnection) -> None:
        """Create the outbox on first use, so stores without one need no more DDL."""
        if self._outbox_ready:
            return
        if await (await conn.execute("SELECT to_regclass(%s)", (OUTBOX_TABLE,))).fetchone() == (None,):
            outbox = sql.Identifier(OUTBOX_TABLE)
            with suppress(*_RACE):
                await conn.execute(sql.SQL(SQL_CREATE_OUTBOX).format(outbox))
            with suppress(*_RACE):
                index = sql.Identifier(f"{OUTBOX_TABLE}_namespace_id")
                await conn.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (namespace, id)").format(index, outbox)
                )
        self._outbox_ready = True

    async def _upsert(self, key: str, payload: bytes | None) -> int:
        found = await self._fetchone(
            self._sql_write, {"ns": self.namespace, "key": check_key_text(key), "value": payload}
        )
        if found is None:
            raise self._at_maximum(key)
        return compose(int(found[1]), int(found[0]))

    def _at_maximum(self, key: str) -> SourceError:
        return SourceError(
            f"the version of {key!r} in {self.table} on {self.where} is at its maximum "
            "(2**63 - 1): it cannot be written again"
        )

    def _render(self, conn: AsyncConnection) -> None:
        """The hot statements as strings, rendered once with the server's quoting rules."""
        if not isinstance(self._sql_read, str):
            self._sql_read = self._sql_read.as_string(conn)
        if not isinstance(self._sql_write, str):
            self._sql_write = self._sql_write.as_string(conn)

    def _not_open(self) -> SourceUnavailable:
        return SourceUnavailable(f"the PostgreSQL source {self.where} is not open")

    async def _fetchone(self, statement: sql.Composed | str, params: dict[str, Any]) -> Any:
        """One statement's first row, on the hot paths (read, write): no context manager,
        autocommit (nothing to commit)."""
        pool = self._pool
        if pool is None:
            raise self._not_open()
        try:
            conn = await pool.getconn()
            try:
                return await (await conn.execute(statement, params)).fetchone()
            finally:
                await pool.putconn(conn)  # a broken connection is replaced, as after connection()
        except psycopg.Error as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: psycopg.Error) -> SourceError:
        """``_connection``'s error mapping, for the hot paths that do without it."""
        error = map_error(exc, self.where, self._password)
        if isinstance(error, SourceUnavailable):
            self._check_idle_connections()
        return error

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        if self._pool is None:
            raise self._not_open()
        try:
            with self._boundary():
                async with self._pool.connection() as conn:
                    yield conn
        except SourceUnavailable:
            self._check_idle_connections()
            raise

    def _check_idle_connections(self) -> None:
        # A restarted server leaves every pooled connection dead: test the idle ones now,
        # so one call fails, not one per connection. In the background: on a dead network
        # a check can hang until TCP gives up, and the caller's time budget is its own.
        if self._checking:
            return
        self._checking = True
        spawn(self._check_pool)

    async def _check_pool(self) -> None:
        try:
            with suppress(Exception):
                if self._pool is not None:
                    await self._pool.check()
        finally:
            self._checking = False

    @contextmanager
    def _boundary(self) -> Any:
        """Map psycopg and pool errors into SourceError (the password scrubbed)."""
        try:
            yield
        except psycopg.Error as exc:
            raise map_error(exc, self.where, self._password) from exc

    async def _configure(self, conn: AsyncConnection) -> None:
        timeout = f"{self.statement_timeout_ms}ms"
        await conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout,))
        if self._epochs_ready:
            await self._observe(conn)

    async def _observe(self, conn: AsyncConnection) -> None:
        """Before a new connection's first statement: if the server is not the one last
        seen (a restore, a failover: another system identifier or timeline), bump the
        database's epoch, so versions from now on order after every one handed out
        before (``epochs``). A standby (in recovery) is refused."""
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

    async def _create_or_adopt(self, conn: AsyncConnection) -> None:
        if await (await conn.execute("SELECT to_regclass(%s)", (EPOCHS,))).fetchone() == (None,):
            with suppress(*_RACE):
                await conn.execute(PG_CREATE)
        if await (await conn.execute(PG_COLUMNS)).fetchone() != (4,):
            await conn.execute(PG_UPGRADE)
        self._epochs_ready = True
        await self._observe(conn)
        name = {"t": sql.Identifier(self.table).as_string(conn)}
        if not await (await conn.execute(SQL_COLUMNS, name)).fetchall():
            # A concurrent CREATE TABLE IF NOT EXISTS can lose the race on pg_type's index.
            with suppress(*_RACE):
                await conn.execute(sql.SQL(SQL_CREATE).format(sql.Identifier(self.table)))
        found = {n: (t, req) for n, t, req in await (await conn.execute(SQL_COLUMNS, name)).fetchall()}
        problems = [
            f"{column} is not {' or '.join(types)}"
            for column, types in EXPECTED_TYPES.items()
            if found.get(column, ("missing",))[0] not in types
        ]
        problems += [
            f"extra column {column} is NOT NULL without a default"
            for column, (_, req) in found.items()
            if column not in EXPECTED_TYPES and req
        ]
        if await (await conn.execute(SQL_UNIQUE, name)).fetchone() != (True,):
            problems.append("no primary key or unique index on exactly (namespace, key)")
        if problems:
            raise ConfigError(
                f"table {self.table!r} on {self.where} has the wrong shape: "
                f"{'; '.join(problems)}; use another table (?table=...)"
            )
        if self.claims:
            await self._claim(conn, name["t"])

    async def _claim(self, conn: AsyncConnection, table: str) -> None:
        """Claim the namespace for this table, key column ``key`` (``sources/registry.py``):
        a namespace of another table (an application table's, change capture's) is refused
        with a ConfigError; a re-created table bumps the namespace's epoch, and
        ``writethrough.open`` then flushes it (``claim_verdict``)."""
        found = await (await conn.execute(RELATION, (table,))).fetchone()
        if found is None:  # pragma: no cover - created or checked just before
            raise ConfigError(f"no table {self.table!r} on {self.where}")
        oid, schema, rel = int(found[0]), str(found[1]), str(found[2])
        present = [(str(n), str(t)) for n, t in await (await conn.execute(COLUMNS, (oid,))).fetchall()]
        await create_registry(conn)
        wanted = Claim(self.namespace, f"{schema}.{rel}", "key", oid, signature(present))
        self.claim_verdict, _ = await claim_namespace(conn, wanted)
