"""Versions as change capture sees them: the row's version, the namespace's epoch, and
the one function that turns both into the version a cache entry carries.

Row versions come from one sequence per database (``writethrough_versions``, increments
of 2, never reset): a trigger sets ``version = nextval(...)`` in the statement that
writes the row, so a version never goes back, not after a DELETE + re-insert, a
TRUNCATE, or a dropped and re-created table. A delete's version is the deleted row's
version + 1 (odd, between the row's version and any later one), or, where the change
does not carry the old version, :func:`floor_sql`'s "above everything drawn so far".

Epochs are the protocol's (:mod:`writethrough.epochs`, table ``writethrough_epochs``):
a TRUNCATE of a captured table, and a new replication slot, bump the namespace's epoch,
which makes every older cache entry of the namespace invalid.
"""

from __future__ import annotations

from psycopg import sql

from .. import epochs

MAX_ROW_VERSION = epochs.MAX_ROW_VERSION


def cache_version(epoch: int, row_version: int) -> int:
    """The version of a cache entry for ``row_version`` under ``epoch``. Every cache write
    capture makes passes its version through here."""
    if not 0 <= row_version <= MAX_ROW_VERSION:
        raise ValueError(f"row version out of range: {row_version}")
    return epochs.compose(epoch, row_version)


def epoch_floor(epoch: int) -> int:
    """The lowest cache version of ``epoch``: an entry below it is treated as absent."""
    return epochs.floor(epoch)


BUMP_SQL = epochs.PG_BUMP  # params: ns, reason -> the namespace's new epoch


def epochs_sql(table: sql.Composable) -> sql.Composed:
    """Param: a text array of namespaces -> ``(namespace, epoch)`` rows, ``''`` included."""
    return sql.SQL(
        "SELECT namespace, epoch FROM {e} WHERE namespace = ANY(%s) OR namespace = ''"
    ).format(e=table)


def floor_sql(sequence: sql.Composable) -> sql.Composed:
    """A version above every version drawn so far (a tombstone version for a delete whose
    old version is unknown). Its row may be re-inserted with a version drawn before this
    was read: that key then stays a miss until the tombstone expires, never stale."""
    return sql.SQL("SELECT coalesce(pg_sequence_last_value({}), 0) + 1").format(sequence)
