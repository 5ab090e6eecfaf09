"""What a transaction changed in cached tables, applied to the stores after its COMMIT."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core import WriteResult
from ..errors import ConfigError, InvalidVersionError
from ..sources.rowcodec import json_value
from ..sources.table import key_text

log = logging.getLogger("writethrough.integrations")


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change of a cached row: its key, the row's version, the new value.

    ``deleted``: ``version`` is the deleted row's last version; the delete's own version is
    one more (what the ``install-triggers`` floor records, so a re-insert never goes back).
    """

    store: Any  # a writethrough Store or AsyncStore over the row's table
    key: str
    version: int
    value: Any = None
    deleted: bool = False
    tags: frozenset[Any] = frozenset()  # the savepoints it was made in (kept alive: no id reuse)

    def row_version(self) -> int:
        """The version handed to the store: the row's own (+1 for a delete). The store puts
        it in the database epoch it knows (``apply_write``, ``epochs``)."""
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise InvalidVersionError(f"a row version is an int, got {self.version!r}")
        return self.version + 1 if self.deleted else self.version


@dataclass(slots=True)
class Pending:
    """Changes of one transaction: collected during it, applied once after its COMMIT."""

    changes: list[Change] = field(default_factory=list)

    def add(self, change: Change) -> None:
        self.changes.append(change)

    def drop(self, tag: Any = None) -> None:
        """Forget the changes made in savepoint ``tag`` (or all, for a rollback)."""
        if tag is None:
            self.changes.clear()
        else:
            self.changes = [c for c in self.changes if tag not in c.tags]

    def take(self) -> list[Change]:
        """The newest change per (store, key), in first-seen order; the list is emptied."""
        newest: dict[tuple[int, str], Change] = {}
        for change in self.changes:
            slot = (id(change.store), change.key)
            old = newest.get(slot)
            if old is None or change.row_version() >= old.row_version():
                newest[slot] = change
        self.changes = []
        return list(newest.values())


def apply_sync(changes: Iterable[Change]) -> list[WriteResult]:
    """Run the cache step of each change (sync stores). Never raises for a cache failure:
    the store's failure ladder turns it into an outcome (``PENDING_REPAIR``)."""
    results = []
    for change in changes:
        version = change.row_version()
        if change.deleted:
            results.append(change.store.apply_delete(change.key, version))
        else:
            results.append(change.store.apply_write(change.key, version, change.value))
    return results


async def apply_async(changes: Iterable[Change]) -> list[WriteResult]:
    """The same for asyncio stores."""
    results = []
    for change in changes:
        version = change.row_version()
        if change.deleted:
            results.append(await change.store.apply_delete(change.key, version))
        else:
            results.append(await change.store.apply_write(change.key, version, change.value))
    return results


def row_value(store: Any, row: Mapping[str, Any]) -> Any:
    """The cached value of a row given as ``{column: value}`` for a table store: the
    store's columns (or value column), each as the table source would have read it."""
    source = store.source
    table = getattr(source, "table", None)
    columns = getattr(source, "columns", None)
    if table is None or not columns or not hasattr(table, "value_column"):
        raise ConfigError("this store is not over a table: open it with table=Table(...)")
    if table.value_column is not None:
        return json_value(row[table.value_column])
    missing = [c for c in columns if c not in row]
    if missing:
        raise ConfigError(f"the row lacks column(s) {missing} that {table.name!r}'s store caches")
    return {c: json_value(row[c]) for c in columns}


def key_of(value: Any) -> str:
    return key_text(value)
