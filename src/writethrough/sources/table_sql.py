"""SQL of the PostgreSQL table source (shared by the sync and asyncio shells). No I/O."""

from __future__ import annotations

from psycopg import sql

from .registry import PG_EPOCH
from .table import Table

# The relation, its columns in catalog order, and whether the key is unique on its own.
RELATION = """
SELECT c.oid::bigint, n.nspname, c.relname FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s) AND c.relkind IN ('r', 'p')
"""
COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
WHERE a.attrelid = %s::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""
UNIQUE = """
SELECT EXISTS (SELECT FROM pg_index i JOIN pg_attribute a
  ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
  WHERE i.indrelid = %s::oid AND i.indisunique AND i.indnatts = 1
    AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = %s AND a.attnotnull)
"""


def payload_sql(table: Table, columns: tuple[str, ...], alias: str = "t") -> sql.Composable:
    """The cached value as JSON text, computed by the server (the listener's encoding)."""
    t = sql.Identifier(alias)
    if table.value_column is not None:
        return sql.SQL("to_json({}.{})::text").format(t, sql.Identifier(table.value_column))
    if table.columns is None:
        return sql.SQL("row_to_json({})::text").format(t)
    pairs = sql.SQL(", ").join(
        sql.SQL("{}, {}.{}").format(sql.Literal(c), t, sql.Identifier(c)) for c in columns)
    return sql.SQL("json_build_object({})::text").format(pairs)


def read_sql(table: Table, schema: str, name: str, key_type: str,
             columns: tuple[str, ...]) -> sql.Composed:
    """``(epoch, version, payload)`` of one key: one row even when the key has none.

    Parameters: namespace, key (text, cast to the key column's type so its index is used).
    """
    return _with_epoch(table, schema, name, key_type, columns,
                       "t.{ver}, {payload} FROM (SELECT 1) AS one LEFT JOIN {rel} AS t "
                       "ON t.{key} = CAST(%s AS {ktype})")


def read_many_sql(table: Table, schema: str, name: str, key_type: str,
                  columns: tuple[str, ...]) -> sql.Composed:
    """``(epoch, key, version, payload)`` of many keys, one row per key given (version NULL
    when the key has none); each key compared as ``read_sql`` compares it.

    Parameters: namespace, the keys (text[]).
    """
    return _with_epoch(table, schema, name, key_type, columns,
                       "u.k, t.{ver}, {payload} FROM unnest(%s::text[]) AS u(k) "
                       "LEFT JOIN {rel} AS t ON t.{key} = CAST(u.k AS {ktype})")


def scan_sql(table: Table, schema: str, name: str, key_type: str,
             columns: tuple[str, ...]) -> sql.Composed:
    """Rows in key order after a key (keyset pagination), for backfill.

    Parameters: namespace, the last key seen (or NULL), the batch size.
    """
    return _with_epoch(table, schema, name, key_type, columns,
                       "t.{key}::text, t.{ver}, {payload} FROM {rel} AS t WHERE %s::text IS "
                       "NULL OR t.{key} > CAST(%s AS {ktype}) ORDER BY t.{key} LIMIT %s")


def _with_epoch(table: Table, schema: str, name: str, key_type: str,
                columns: tuple[str, ...], rest: str) -> sql.Composed:
    """``SELECT <the namespace's epoch>, <rest>`` with the table's names filled in; the
    epoch's parameter (the namespace) comes first."""
    return sql.SQL("SELECT (" + PG_EPOCH + "), " + rest).format(
        ver=sql.Identifier(table.version), payload=payload_sql(table, columns),
        rel=sql.Identifier(schema, name), key=sql.Identifier(table.key),
        ktype=sql.SQL(key_type))


def returning_sql(table: Table, columns: tuple[str, ...], relation: str) -> sql.Composed:
    """``RETURNING``-list items giving ``key::text, version, payload`` of the changed row.

    For the application's own UPDATE / INSERT statements (``CacheTransaction.returning``).
    """
    rel = sql.Identifier(relation)
    return sql.SQL("{rel}.{key}::text, {rel}.{ver}, {payload}").format(
        rel=rel, key=sql.Identifier(table.key), ver=sql.Identifier(table.version),
        payload=payload_sql(table, columns, relation))
