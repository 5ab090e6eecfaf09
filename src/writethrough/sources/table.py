"""A table of the application as a source: ``Table("users", key="id", columns=(...))``.

A store opened with ``table=`` reads rows of *your* table, by key, with the version the
database keeps in that row (the ``version`` column the triggers of ``writethrough
install-triggers`` bump in the statement that changes the row, or an ORM's server-side
version counter). Its cached value is the row as a dict of the chosen columns, or one
column. What the sync and asyncio sources share lives here: the spec, its checks, SQL.

A table store never writes your table: ``put()`` / ``delete()`` raise
:class:`~writethrough.errors.ReadOnlyTableError`. Write in your own transaction and hand
the committed ``(key, version, value)`` to ``store.apply_write`` after the commit, or let
an integration do it (``writethrough.integrations.psycopg`` / ``.sqlalchemy`` /
``writethrough.django``); writes nobody in process sees reach the cache through the
listener.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ReadOnlyTableError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _ident(name: object, what: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ConfigError(f"{what} {name!r} is not a plain SQL identifier")
    return name


@dataclass(frozen=True, slots=True)
class Table:
    """Which table, which key and version columns, and what of the row is cached.

        Table("users")                                   # key id, version version, whole row
        Table("users", columns=("id", "name", "email"))  # a dict of these columns
        Table("users", value_column="profile")           # one column's value
        Table("app.users", key="user_id", version="row_version")

    ``name`` is ``table`` or ``schema.table``. The key column must be unique and NOT NULL;
    its text form is the cache key (``store.get("42")``; ints are accepted too).
    """

    name: str
    key: str = "id"
    version: str = "version"
    columns: tuple[str, ...] | None = None  # None: every column (as row_to_json)
    value_column: str | None = None

    def __post_init__(self) -> None:
        parts = self.name.split(".") if isinstance(self.name, str) else [self.name]
        if len(parts) > 2:
            raise ConfigError(f"table {self.name!r} must be name or schema.name")
        for part in parts:
            _ident(part, "table name")
        _ident(self.key, "key column")
        _ident(self.version, "version column")
        if self.key == self.version:
            raise ConfigError("the key column cannot be the version column")
        if self.columns is not None and self.value_column is not None:
            raise ConfigError("give columns= or value_column=, not both")
        if self.columns is not None:
            if isinstance(self.columns, str) or not isinstance(self.columns, Sequence):
                raise ConfigError(f"columns must be a sequence of names, got {self.columns!r}")
            cols = tuple(_ident(c, "column") for c in self.columns)
            if not cols or len(set(cols)) != len(cols):
                raise ConfigError(f"columns must be distinct names, at least one: {cols!r}")
            object.__setattr__(self, "columns", cols)
        if self.value_column is not None:
            _ident(self.value_column, "value column")

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))

    def cached_columns(self, present: Sequence[str]) -> tuple[str, ...]:
        """The columns the value is made of, checked against the table's ``present`` ones."""
        wanted = ((self.value_column,) if self.value_column is not None
                  else self.columns if self.columns is not None else tuple(present))
        missing = [c for c in (self.key, self.version, *wanted) if c not in present]
        if missing:
            hint = (" (install the triggers first: writethrough install-triggers)"
                    if self.version in missing else "")
            raise ConfigError(f"table {self.name!r} has no column(s) {missing}{hint}")
        return wanted

    def signature(self, present: Sequence[tuple[str, str]]) -> str:
        """The column list ``name type, ...`` (catalog order): a change means a new schema."""
        return ", ".join(f"{n} {t}" for n, t in present)


def refuse_write(table: str, what: str) -> ReadOnlyTableError:
    return ReadOnlyTableError(
        f"a table store does not {what} rows of {table!r}: write the row in your own "
        "transaction, then call store.apply_write(key, version, value) / "
        "store.apply_delete(key, version) after the commit with the committed version "
        "(or use writethrough.integrations.psycopg / .sqlalchemy / writethrough.django); "
        "writes nobody in process sees reach the cache through 'writethrough listen'")


def key_text(key: Any) -> str:
    """A key column value as the cache key (its text form, as ``key::text`` in SQL)."""
    if isinstance(key, bool) or not isinstance(key, str | int):
        if hasattr(key, "hex") and type(key).__name__ == "UUID":
            return str(key)
        raise ConfigError(f"a key must be a str or int, got {type(key).__name__}")
    return str(key)
