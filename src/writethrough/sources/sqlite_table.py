"""A SQLite table of the application as the source of truth (stdlib sqlite3).

Same contract as the PostgreSQL table source: reads a row by key with its version column,
the value encoded by :mod:`~writethrough.sources.rowcodec`, never writes the table. SQLite
has no trigger that can set the version in the statement that changes the row: the
statement itself must (``UPDATE users SET ..., version = version + 1 ... RETURNING
version``, which is what SQLAlchemy's default ``version_id_col`` counter emits). A
deleted and re-inserted key starts again at 1: until the delete's tombstone expires,
reads of that key go to the table (correct, not cached).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigError, SourceError, SourceUnavailable
from .base import Row
from .registry import PG_EPOCH, PG_RELEASE, Claim, Verdict, cache_version, sqlite
from .rowcodec import encode_row, encode_value
from .sqlite import Connections, _map_error, bump_sqlite_epoch, claim_sqlite_namespace
from .table import Table, refuse_write


class SQLiteTableSource:
    """Rows of one application table in a SQLite file, read by key.

        >>> src = SQLiteTableSource("app.db", Table("users"), namespace="users")
        >>> src.open(); src.read("42")
        Row(version=3, payload=b'{"id":42,"name":"Alice","version":3}')
    """

    name = "sqlite-table"

    def __init__(self, path: str, table: Table, *, namespace: str,
                 busy_timeout: float = 5.0) -> None:
        if not isinstance(table, Table):
            raise ConfigError(f"table must be a writethrough.Table, not {type(table).__name__}")
        if len(table.parts) != 1:
            raise ConfigError(f"SQLite table {table.name!r} takes no schema")
        self.path, self.table, self.namespace = path, table, namespace
        self.busy_timeout = busy_timeout
        self.last_epoch = 0
        self.columns: tuple[str, ...] = ()
        self.claim: Claim | None = None
        self.claim_verdict: Verdict | None = None
        self._local = threading.local()
        self._connections = Connections()
        self._closed = False
        self._sql_read = ""
        self._sql_scan = ""
        self._sql_read_many = ""

    def open(self) -> None:
        if self.claim is not None:
            return
        with self._connection() as conn:
            try:
                self._adopt(conn)
            except sqlite3.Error as exc:
                raise _map_error(exc, self.path) from exc

    def read(self, key: str) -> Row:
        with self._connection() as conn:
            try:
                epoch_row = conn.execute(sqlite(PG_EPOCH), (self.namespace,)).fetchone()
                found = conn.execute(self._sql_read, (key,)).fetchone()
            except sqlite3.Error as exc:
                raise _map_error(exc, self.path) from exc
        self.last_epoch = int(epoch_row[0]) if epoch_row else 0
        if found is None:
            return Row(cache_version(self.last_epoch, 0), None)
        return Row(cache_version(self.last_epoch, int(found[0])), self._payload(found[1:]))

    def read_many(self, keys: Sequence[str]) -> dict[str, Row]:
        """The rows of ``keys`` (absent ones too): the keys joined to the table as ``read``
        compares them (the column's affinity), 500 keys a statement, in one read transaction."""
        found: dict[str, tuple[Any, ...]] = {}
        with self._connection() as conn:
            try:
                conn.execute("BEGIN")
                try:
                    epoch_row = conn.execute(sqlite(PG_EPOCH), (self.namespace,)).fetchone()
                    for start in range(0, len(keys), 500):
                        chunk = keys[start : start + 500]
                        marks = ",".join(["(?)"] * len(chunk))
                        for row in conn.execute(self._sql_read_many.format(marks=marks), chunk):
                            found[row[0]] = row[1:]
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _map_error(exc, self.path) from exc
        self.last_epoch = int(epoch_row[0]) if epoch_row else 0
        rows: dict[str, Row] = {}
        for key in keys:
            values = found.get(key)
            if values is None or values[0] is None:
                rows[key] = Row(cache_version(self.last_epoch, 0), None)
            else:
                rows[key] = Row(cache_version(self.last_epoch, int(values[0])), self._payload(values[1:]))
        return rows

    def scan(self, after: str | None, limit: int) -> list[tuple[str, Row]]:
        with self._connection() as conn:
            try:
                rows = conn.execute(self._sql_scan, (after, after, limit)).fetchall()
            except sqlite3.Error as exc:
                raise _map_error(exc, self.path) from exc
        epoch = self.epoch()
        return [(str(r[0]), Row(cache_version(epoch, int(r[1])), self._payload(r[2:])))
                for r in rows]

    def epoch(self) -> int:
        """The namespace's database epoch (``epochs``)."""
        with self._connection() as conn:
            try:
                found = conn.execute(sqlite(PG_EPOCH), (self.namespace,)).fetchone()
            except sqlite3.Error as exc:
                raise _map_error(exc, self.path) from exc
        self.last_epoch = int(found[0]) if found else 0
        return self.last_epoch

    def bump_epoch(self, reason: str = "flushed", *, everything: bool = False) -> int:
        """Move the namespace's epoch (``everything``: the database's) past every version
        handed out so far."""
        with self._connection() as conn:
            self.last_epoch = bump_sqlite_epoch(conn, "" if everything else self.namespace, reason)
        return self.last_epoch

    def release(self) -> None:
        with self._connection() as conn:
            conn.execute(sqlite(PG_RELEASE), (self.namespace,))

    def write(self, key: str, payload: bytes) -> int:
        raise refuse_write(self.table.name, "write")

    def delete(self, key: str) -> int:
        raise refuse_write(self.table.name, "delete")

    def close(self) -> None:
        self._closed = True
        self._connections.close()  # a connection in use: by its last operation out
        self._local = threading.local()

    def payload_of(self, row: dict[str, Any]) -> bytes:
        """The cached value of a row given as ``{column: value}``."""
        if self.table.value_column is not None:
            return encode_value(row[self.table.value_column])
        return encode_row({c: row[c] for c in self.columns})

    # -- I/O boundary ------------------------------------------------------------

    def _payload(self, values: tuple[Any, ...]) -> bytes:
        if self.table.value_column is not None:
            return encode_value(values[0])
        return encode_row(dict(zip(self.columns, values, strict=True)))

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, counted in use while the block runs."""
        conn = self._conn()
        self._connections.use(conn, 1)
        try:
            yield conn
        finally:
            self._connections.use(conn, -1)

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise SourceUnavailable("the SQLite table source is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                       isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as exc:
                raise _map_error(exc, self.path) from exc
            self._local.conn = conn
            self._connections.add(conn)
        return conn

    def _adopt(self, conn: sqlite3.Connection) -> None:
        name = self.table.name
        info = conn.execute(f'PRAGMA table_info("{name}")').fetchall()
        if not info:
            raise ConfigError(f"no table {name!r} in {self.path}")
        present = [(str(r[1]), str(r[2]).lower()) for r in info]
        self.columns = self.table.cached_columns([n for n, _ in present])
        if not self._key_unique(conn, info):
            raise ConfigError(f"key column {self.table.key!r} of {name!r} must be the primary "
                              "key or have a unique index of its own")
        wanted = Claim(self.namespace, name, self.table.key, None, self.table.signature(present))
        verdict, epoch = claim_sqlite_namespace(conn, wanted)
        self.last_epoch, self.claim_verdict = epoch, verdict
        self.claim = Claim(wanted.namespace, name, wanted.key_column, None, wanted.signature,
                           epoch)
        cols = ", ".join(f'"{c}"' for c in self.columns)
        key, ver = f'"{self.table.key}"', f'"{self.table.version}"'
        self._sql_read = f'SELECT {ver}, {cols} FROM "{name}" WHERE {key} = ?'
        # ``{marks}`` is filled with the placeholders of one chunk of keys.
        tcols = ", ".join(f't."{c}"' for c in self.columns)
        self._sql_read_many = (f"WITH u(k) AS (VALUES {{marks}}) SELECT u.k, t.{ver}, {tcols} "
                               f'FROM u LEFT JOIN "{name}" AS t ON t.{key} = u.k')
        self._sql_scan = (f'SELECT {key}, {ver}, {cols} FROM "{name}" WHERE ? IS NULL OR '
                          f"{key} > ? ORDER BY {key} LIMIT ?")

    def _key_unique(self, conn: sqlite3.Connection, info: list[Any]) -> bool:
        pk = [str(r[1]) for r in info if r[5]]
        if pk == [self.table.key]:
            return True
        for index in conn.execute(f'PRAGMA index_list("{self.table.name}")').fetchall():
            if index[2]:  # unique
                cols = [str(r[2]) for r in conn.execute(f'PRAGMA index_info("{index[1]}")')]
                if cols == [self.table.key]:
                    return True
        return False


class AsyncSQLiteTableSource:
    """The SQLite table source for the asyncio store: each call in a worker thread."""

    name = "sqlite-table"

    def __init__(self, inner: SQLiteTableSource) -> None:
        self.inner = inner

    @property
    def last_epoch(self) -> int:
        return self.inner.last_epoch

    async def epoch(self) -> int:
        return await asyncio.to_thread(self.inner.epoch)

    @property
    def table(self) -> Table:
        return self.inner.table

    @property
    def claim_verdict(self) -> Verdict | None:
        return self.inner.claim_verdict

    @property
    def columns(self) -> tuple[str, ...]:
        return self.inner.columns

    async def open(self) -> None:
        await asyncio.to_thread(self.inner.open)

    async def read(self, key: str) -> Row:
        return await asyncio.to_thread(self.inner.read, key)

    async def read_many(self, keys: Sequence[str]) -> dict[str, Row]:
        return await asyncio.to_thread(self.inner.read_many, keys)

    async def scan(self, after: str | None, limit: int) -> list[tuple[str, Row]]:
        return await asyncio.to_thread(self.inner.scan, after, limit)

    async def bump_epoch(self, reason: str = "flushed", *, everything: bool = False) -> int:
        return await asyncio.to_thread(self.inner.bump_epoch, reason, everything=everything)

    async def release(self) -> None:
        await asyncio.to_thread(self.inner.release)

    async def write(self, key: str, payload: bytes) -> int:
        raise refuse_write(self.inner.table.name, "write")

    async def delete(self, key: str) -> int:
        raise refuse_write(self.inner.table.name, "delete")

    async def close(self) -> None:
        await asyncio.to_thread(self.inner.close)


__all__ = ["AsyncSQLiteTableSource", "SQLiteTableSource", "SourceError"]
