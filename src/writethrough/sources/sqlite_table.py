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
from typing import Any

from ..errors import ConfigError, SourceError, SourceUnavailable
from .base import Row
from .registry import (
    CHANGED_REASON,
    PG_EPOCH,
    PG_INSERT,
    PG_LOCK,
    PG_REHOME,
    PG_RELEASE,
    SQLITE_CREATE,
    Claim,
    Verdict,
    cache_version,
    judge,
    sqlite,
)
from .rowcodec import encode_row, encode_value
from .sqlite import SQLITE_CREATE_EPOCHS, _map_error, bump_sqlite_epoch
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
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._sql_read = ""
        self._sql_scan = ""

    def open(self) -> None:
        if self.claim is not None:
            return
        conn = self._conn()
        try:
            self._adopt(conn)
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc

    def read(self, key: str) -> Row:
        conn = self._conn()
        try:
            epoch_row = conn.execute(sqlite(PG_EPOCH), (self.namespace,)).fetchone()
            found = conn.execute(self._sql_read, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc
        self.last_epoch = int(epoch_row[0]) if epoch_row else 0
        if found is None:
            return Row(cache_version(self.last_epoch, 0), None)
        return Row(cache_version(self.last_epoch, int(found[0])), self._payload(found[1:]))

    def scan(self, after: str | None, limit: int) -> list[tuple[str, Row]]:
        conn = self._conn()
        try:
            rows = conn.execute(self._sql_scan, (after, after, limit)).fetchall()
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc
        epoch = self.epoch()
        return [(str(r[0]), Row(cache_version(epoch, int(r[1])), self._payload(r[2:])))
                for r in rows]

    def epoch(self) -> int:
        """The namespace's database epoch (``epochs``)."""
        try:
            found = self._conn().execute(sqlite(PG_EPOCH), (self.namespace,)).fetchone()
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc
        self.last_epoch = int(found[0]) if found else 0
        return self.last_epoch

    def bump_epoch(self, reason: str = "flushed", *, everything: bool = False) -> int:
        """Move the namespace's epoch (``everything``: the database's) past every version
        handed out so far."""
        self.last_epoch = bump_sqlite_epoch(self._conn(), "" if everything else self.namespace,
                                            reason)
        return self.last_epoch

    def release(self) -> None:
        self._conn().execute(sqlite(PG_RELEASE), (self.namespace,))

    def write(self, key: str, payload: bytes) -> int:
        raise refuse_write(self.table.name, "write")

    def delete(self, key: str) -> int:
        raise refuse_write(self.table.name, "delete")

    def close(self) -> None:
        self._closed = True
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
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
            with self._lock:
                self._all.append(conn)
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
        conn.execute(SQLITE_CREATE)
        conn.execute(SQLITE_CREATE_EPOCHS)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(sqlite(PG_INSERT), (wanted.namespace, wanted.table, wanted.key_column,
                                             None, wanted.signature))
            row = conn.execute(sqlite(PG_LOCK), (self.namespace, self.namespace)).fetchone()
            claimed = None if row is None else Claim(str(row[0]), str(row[1]), str(row[2]),
                                                     row[3], str(row[4]), int(row[5]))
            verdict = judge(claimed, wanted)
            epoch = 0 if claimed is None else claimed.epoch
            if verdict is Verdict.CHANGED:
                conn.execute(sqlite(PG_REHOME), (None, wanted.signature, self.namespace))
                epoch = bump_sqlite_epoch(conn, self.namespace, CHANGED_REASON)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.last_epoch, self.claim_verdict = epoch, verdict
        self.claim = Claim(wanted.namespace, name, wanted.key_column, None, wanted.signature,
                           epoch)
        cols = ", ".join(f'"{c}"' for c in self.columns)
        key, ver = f'"{self.table.key}"', f'"{self.table.version}"'
        self._sql_read = f'SELECT {ver}, {cols} FROM "{name}" WHERE {key} = ?'
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
