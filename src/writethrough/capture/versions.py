"""Versions as change capture sees them: the row's version, the namespace's epoch, and
the one function that turns both into the version a cache entry carries.

Row versions come from one sequence per database (``writethrough_versions``, increments
of 2, never reset): a trigger sets ``version = nextval(...)`` in the statement that
writes the row, so a version never goes back, not after a DELETE + re-insert, a
TRUNCATE, or a dropped and re-created table. A delete's version is the deleted row's
version + 1 (odd, between the row's version and any later one), or, where the change
does not carry the old version, :func:`floor_sql`'s "above everything drawn so far".

Epochs: ``writethrough_epochs(namespace, epoch)``, namespace ``''`` being global; the
effective epoch of a namespace is the greater of the two. A TRUNCATE bumps it, which
makes every older cache entry of the namespace invalid. (The protocol owner's
``writethrough.epochs`` module supersedes :func:`cache_version` and
:func:`bump_epoch_sql` when it lands; both are the only places capture does this.)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from psycopg import sql

EPOCH_FACTOR = 10**19  # row versions are bigints < 2**63 < 10**19


def _owner_compose() -> Callable[[int, int], int] | None:
    try:
        module = importlib.import_module("writethrough.epochs")
    except ImportError:
        return None
    compose: Callable[[int, int], int] = module.compose
    return compose


_COMPOSE = _owner_compose()
# Epochs go into cache versions once the protocol owner's ``writethrough.epochs`` exists:
# it comes with the cache encoding that compares such versions exactly (today's Redis
# script compares Lua doubles: 10**19 + 26 == 10**19 + 30 there). Until then epochs are
# recorded in the database only. Tests on exact backends switch it on.
COMPOSE_EPOCHS = _COMPOSE is not None


def cache_version(epoch: int, row_version: int) -> int:
    """The version of a cache entry for ``row_version`` under ``epoch``. Every cache write
    capture makes passes its version through here."""
    if not 0 <= row_version < EPOCH_FACTOR:
        raise ValueError(f"row version out of range: {row_version}")
    if not COMPOSE_EPOCHS:
        return row_version
    if _COMPOSE is not None:
        return _COMPOSE(epoch, row_version)
    return epoch * EPOCH_FACTOR + row_version


def bump_epoch_sql(epochs: sql.Composable) -> sql.Composed:
    """``epochs`` table, param ``%(ns)s`` -> the namespace's new epoch (strictly greater than
    both its own and the global one)."""
    return sql.SQL(
        "INSERT INTO {e} AS e (namespace, epoch) VALUES (%(ns)s, 1 + coalesce("
        "(SELECT max(epoch) FROM {e} WHERE namespace IN ('', %(ns)s)), 0)) "
        "ON CONFLICT (namespace) DO UPDATE SET epoch = greatest(e.epoch + 1, EXCLUDED.epoch) "
        "RETURNING epoch"
    ).format(e=epochs)


def epochs_sql(epochs: sql.Composable) -> sql.Composed:
    """Param: a text array of namespaces -> ``(namespace, epoch)`` rows, ``''`` included."""
    return sql.SQL(
        "SELECT namespace, epoch FROM {e} WHERE namespace = ANY(%s) OR namespace = ''"
    ).format(e=epochs)


def floor_sql(sequence: sql.Composable) -> sql.Composed:
    """A version above every version drawn so far (a tombstone version for a delete whose
    old version is unknown). Its row may be re-inserted with a version drawn before this
    was read: that key then stays a miss until the tombstone expires, never stale."""
    return sql.SQL("SELECT coalesce(pg_sequence_last_value({}), 0) + 1").format(sequence)
