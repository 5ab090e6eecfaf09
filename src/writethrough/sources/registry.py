"""Which table feeds which cache namespace: the registry (table ``writethrough_namespaces``;
epochs in ``writethrough_epochs``, shared with change capture and the protocol core).

A namespace's cache entries are rows of one table. A store, a listener or an integration
opened on a namespace *claims* it with its table's identity -- qualified name, key column,
OID (PostgreSQL) and column signature -- in the same database:

* nobody claimed it yet: the claim is recorded;
* the same table, key and schema: fine;
* **another table or key column**: refused with a ConfigError, instead of silently mixing
  two tables' rows under one namespace;
* the same name but **a re-created table** (another OID) or **another column list**
  (``ALTER TABLE ... ADD COLUMN``): the claim is updated and the namespace's **epoch** is
  bumped (the core's ``writethrough_epochs``, ``epochs.PG_BUMP``), so every entry read
  before is below the epoch's floor and never served again; the store that noticed also
  flushes the namespace (``lifecycle.after_open``). Change capture bumps it on TRUNCATE.

The SQL is for PostgreSQL (``%s``) and SQLite (``?``, no OIDs: a re-created SQLite table
with the same columns is not detected -- flush the namespace, ``writethrough table
flush``). No I/O here: the sources run these statements on their connections.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..epochs import EPOCH_SPAN, compose
from ..errors import ConfigError

REGISTRY_TABLE = "writethrough_namespaces"
EPOCH_FACTOR = EPOCH_SPAN  # row versions are PostgreSQL bigints < 2**63 < 10**19

PG_CREATE = (
    "CREATE TABLE IF NOT EXISTS writethrough_namespaces (namespace text PRIMARY KEY, "
    "table_name text NOT NULL, key_column text NOT NULL, table_oid bigint, "
    "signature text NOT NULL, changed_at timestamptz NOT NULL DEFAULT now())"
)
PG_INSERT = (
    "INSERT INTO writethrough_namespaces (namespace, table_name, key_column, table_oid, "
    "signature) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (namespace) DO NOTHING"
)
PG_LOCK = (
    "SELECT namespace, table_name, key_column, table_oid, signature, "
    "(SELECT coalesce(max(epoch), 0) FROM writethrough_epochs WHERE namespace IN ('', %s)) "
    "FROM writethrough_namespaces WHERE namespace = %s FOR UPDATE"
)
PG_REHOME = (
    "UPDATE writethrough_namespaces SET table_oid = %s, signature = %s, changed_at = now() "
    "WHERE namespace = %s"
)
PG_RELEASE = "DELETE FROM writethrough_namespaces WHERE namespace = %s"
PG_EPOCH = ("SELECT coalesce(max(epoch), 0) FROM writethrough_epochs "
            "WHERE namespace IN ('', %s)")
CHANGED_REASON = "table re-created or altered"

SQLITE_CREATE = (
    "CREATE TABLE IF NOT EXISTS writethrough_namespaces (namespace TEXT PRIMARY KEY, "
    "table_name TEXT NOT NULL, key_column TEXT NOT NULL, table_oid INTEGER, "
    "signature TEXT NOT NULL, changed_at REAL)"
)



def sqlite(statement: str) -> str:
    """The PostgreSQL statement for SQLite (placeholders; no row locks, no now())."""
    return (statement.replace("%s", "?").replace(" FOR UPDATE", "")
            .replace("now()", "strftime('%s','now')").replace("greatest(", "max("))


@dataclass(frozen=True, slots=True)
class Claim:
    """A table's identity as registered for a namespace."""

    namespace: str
    table: str  # schema.table on PostgreSQL
    key_column: str
    oid: int | None
    signature: str
    epoch: int = 0


class Verdict(enum.Enum):
    NEW = "new"  # nobody had claimed the namespace: insert
    SAME = "same"  # the same table and schema: nothing to do
    CHANGED = "changed"  # re-created or altered: update the claim, bump the epoch


def judge(found: Claim | None, wanted: Claim) -> Verdict:
    """Pure: what a claim of ``wanted`` means, given the registry's row ``found``.

    Raises ConfigError when the namespace belongs to another table or key column.
    """
    if found is None:
        return Verdict.NEW
    if (found.table, found.key_column) != (wanted.table, wanted.key_column):
        raise ConfigError(
            f"namespace {wanted.namespace!r} holds rows of table {found.table!r} "
            f"(key {found.key_column!r}), not {wanted.table!r} (key {wanted.key_column!r}): "
            "use another namespace, or release this one first "
            "('writethrough table flush --release')")
    if found.oid != wanted.oid or found.signature != wanted.signature:
        return Verdict.CHANGED
    return Verdict.SAME


def cache_version(epoch: int, row_version: int) -> int:
    """The version a cache entry carries for ``row_version`` read under ``epoch``: the
    core's ``epochs.compose`` (``epoch * 10**19 + row_version``). What a table source
    returns from ``read``; the after-commit path hands the store the row's own version
    and the store adds the epoch it knows (``apply_write``)."""
    if epoch < 0 or not 0 <= row_version < EPOCH_FACTOR:
        raise ConfigError(f"version {row_version} / epoch {epoch} out of range")
    return compose(epoch, row_version)


def row_version(version: int) -> int:
    """The row's own version inside a cache version (drops the epoch)."""
    return version % EPOCH_FACTOR
