"""After-commit write-through for your own psycopg 3 transactions.

    from psycopg import sql
    from writethrough.integrations.psycopg import cache_transaction

    store = writethrough.open("postgresql://app@db/app", "redis://cache:6379/0",
                              table=writethrough.Table("users"), namespace="users")
    with psycopg.connect("postgresql://app@db/app") as conn:
        with cache_transaction(conn, store) as tx:          # BEGIN
            row = conn.execute(sql.SQL(
                "UPDATE users SET balance = %s WHERE id = %s RETURNING {}"
            ).format(tx.returning()), (400, 42)).fetchone()
            tx.returned(row)                                 # (key, version, value) of the row
        # COMMIT, then the cache step: tx.results == [WriteResult('42', 8, UPDATED)]

``tx.returning()`` is the ``RETURNING`` list the store needs (``key::text, version,
value as JSON``), so the version is the one the database gave the committed row (the
``install-triggers`` version trigger), never one the application made up. Or record
rows yourself: ``tx.wrote(key, version, {column: value, ...})``; for a delete,
``DELETE ... RETURNING version`` then ``tx.deleted(key, version)``.

Rollback (an exception leaves the block): nothing reaches the cache. Savepoints: open a
nested ``cache_transaction(conn, store)`` (or ``tx.savepoint()``); what it recorded is
dropped if it rolls back, kept for the outer COMMIT otherwise. The block must be the
outermost transaction of the connection (it has to see the COMMIT): opening it inside a
transaction it did not start raises ConfigError, and so does recording a change inside a
plain ``conn.transaction()`` savepoint it cannot follow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from weakref import WeakKeyDictionary

import orjson
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..core import WriteResult
from ..errors import ConfigError
from .pending import Change, Pending, apply_async, apply_sync, key_of, row_value

__all__ = ["CacheTransaction", "async_cache_transaction", "cache_transaction"]

_STACKS: WeakKeyDictionary[Any, list[CacheTransaction]] = WeakKeyDictionary()


class CacheTransaction:
    """What one (possibly nested) ``cache_transaction`` block recorded; ``results`` after
    the COMMIT."""

    def __init__(self, conn: Any, store: Any, parent: CacheTransaction | None) -> None:
        self.conn, self.store, self.parent = conn, store, parent
        self.pending = Pending()
        self.results: list[WriteResult] = []
        self._depth = getattr(conn, "_num_transactions", 0) + 1  # psycopg's nesting counter

    def returning(self, relation: str | None = None) -> sql.Composed:
        """``RETURNING`` items ``key::text, version, value-JSON`` of the changed row;
        ``relation``: the table's name or alias in your statement (default: its name)."""
        returning = getattr(self.store.source, "returning", None)
        if returning is None:
            raise ConfigError("tx.returning() needs a store over a PostgreSQL table")
        composed: sql.Composed = returning(relation)
        return composed

    def returned(self, row: Sequence[Any] | None, store: Any = None) -> None:
        """Record a row produced by ``RETURNING {tx.returning()}``; None (no row) is ignored."""
        if row is None:
            return
        key, version, payload = row[0], row[1], row[2]
        value = orjson.loads(payload) if isinstance(payload, str | bytes) else payload
        self._add(Change(store or self.store, key_of(key), int(version), value))

    def wrote(self, key: Any, version: int, row: Mapping[str, Any], store: Any = None) -> None:
        """Record a written row: its key, the version the database returned, its columns."""
        target = store or self.store
        self._add(Change(target, key_of(key), version, row_value(target, row)))

    def deleted(self, key: Any, version: int, store: Any = None) -> None:
        """Record a deleted row: ``version`` is the deleted row's (``DELETE ... RETURNING
        version``); the delete's own version is one more."""
        self._add(Change(store or self.store, key_of(key), version, deleted=True))

    def savepoint(self) -> Any:
        """``with tx.savepoint():`` a nested cache_transaction (sync connections)."""
        return cache_transaction(self.conn, self.store)

    def _add(self, change: Change) -> None:
        now = getattr(self.conn, "_num_transactions", self._depth)
        if now != self._depth:
            raise ConfigError(
                "a change was recorded inside a savepoint cache_transaction cannot follow "
                "(a plain conn.transaction()): use a nested cache_transaction(conn, store) "
                "or tx.savepoint(), so a rollback of it drops the change")
        self.pending.add(change)


def _enter(conn: Any, store: Any) -> CacheTransaction:
    stack = _STACKS.setdefault(conn, [])
    parent = stack[-1] if stack else None
    busy = conn.info.transaction_status != TransactionStatus.IDLE
    if parent is None and (busy or getattr(conn, "_num_transactions", 0)):
        raise ConfigError(
            "cache_transaction must be the connection's outermost transaction (it applies "
            "the cache step after the COMMIT it sees): commit or roll back first")
    tx = CacheTransaction(conn, store if store is not None else getattr(parent, "store", None),
                          parent)
    if tx.store is None:
        raise ConfigError("cache_transaction needs a store")
    stack.append(tx)
    return tx


def _leave(conn: Any, tx: CacheTransaction, committed: bool) -> bool:
    """Pop ``tx``; True if it was the outermost and committed (apply now)."""
    stack = _STACKS.get(conn, [])
    if stack and stack[-1] is tx:
        stack.pop()
    if not committed:
        return False
    if tx.parent is not None:
        tx.parent.pending.changes.extend(tx.pending.changes)
        return False
    return True


@contextmanager
def cache_transaction(conn: Any, store: Any = None) -> Iterator[CacheTransaction]:
    """A psycopg transaction (``conn.transaction()``) whose recorded changes reach the
    cache right after its COMMIT. Nested: a savepoint."""
    tx = _enter(conn, store)
    try:
        with conn.transaction():
            tx._depth = conn._num_transactions
            yield tx
    except BaseException:
        _leave(conn, tx, committed=False)
        raise
    if _leave(conn, tx, committed=True):
        tx.results = apply_sync(tx.pending.take())


@asynccontextmanager
async def async_cache_transaction(conn: Any, store: Any = None) -> AsyncIterator[CacheTransaction]:
    """The same for ``psycopg.AsyncConnection`` and an ``AsyncStore``."""
    tx = _enter(conn, store)
    try:
        async with conn.transaction():
            tx._depth = conn._num_transactions
            yield tx
    except BaseException:
        _leave(conn, tx, committed=False)
        raise
    if _leave(conn, tx, committed=True):
        tx.results = await apply_async(tx.pending.take())
