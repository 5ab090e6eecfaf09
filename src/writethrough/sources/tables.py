"""Open a table source for ``writethrough.open(..., table=Table(...))``."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..urls import parse_url
from .table import Table

_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres"}
_OPTIONS = {"pool_min", "pool_max", "connect_timeout", "statement_timeout_ms"}


def _common(url: str, table: object) -> tuple[Any, str]:
    if not isinstance(table, Table):
        raise ConfigError(f"table= must be a writethrough.Table, not {type(table).__name__}")
    parsed = parse_url(url, kind="source", schemes=_SCHEMES)
    if "table" in parsed.query:
        raise ConfigError("give the table as table=writethrough.Table(...), not ?table= "
                          "(that names the library's own key-value table)")
    return parsed, _SCHEMES[parsed.scheme]


def open_table_source(url: str, table: Table, *, namespace: str, **options: Any) -> Any:
    """The sync source over ``table`` (opened: the table is checked, the namespace claimed)."""
    parsed, kind = _common(url, table)
    if kind == "sqlite":
        from .sqlite import from_url

        path = from_url(parsed, namespace=namespace).path  # the same URL rules
        from .sqlite_table import SQLiteTableSource

        src: Any = SQLiteTableSource(path, table, namespace=namespace,
                                     busy_timeout=parsed.option("busy_timeout", float, 5.0))
        src.open()
        return src
    conninfo, kwargs = _pg(parsed, options)
    from .._sync.table_source import PostgresTableSource

    src = PostgresTableSource(conninfo, table, namespace=namespace, **kwargs)
    src.open()
    return src


def open_async_table_source(url: str, table: Table, *, namespace: str, **options: Any) -> Any:
    """The asyncio source over ``table``; checked at ``await store.open()``."""
    parsed, kind = _common(url, table)
    if kind == "sqlite":
        from .sqlite import from_url
        from .sqlite_table import AsyncSQLiteTableSource, SQLiteTableSource

        path = from_url(parsed, namespace=namespace).path
        return AsyncSQLiteTableSource(SQLiteTableSource(
            path, table, namespace=namespace,
            busy_timeout=parsed.option("busy_timeout", float, 5.0)))
    conninfo, kwargs = _pg(parsed, options)
    from .._async.table_source import AsyncPostgresTableSource

    return AsyncPostgresTableSource(conninfo, table, namespace=namespace, **kwargs)


def _pg(parsed: Any, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    try:
        from .postgres import _parse
    except ImportError as exc:
        raise ConfigError("the PostgreSQL table source needs psycopg: "
                          "pip install 'writethrough[postgres]'") from exc
    conninfo, kwargs = _parse(parsed, options)
    kwargs.pop("table", None)
    return conninfo, {k: v for k, v in kwargs.items() if k in _OPTIONS}
