"""Claiming a namespace for a table in the registry on PostgreSQL: the I/O of
``sources/registry.py`` (which decides; this runs the statements).

Whoever opens a namespace on PostgreSQL claims it with its table's identity: the table
source, the key-value source (table ``writethrough_items``, key ``key``) and change
capture's listeners. A namespace then holds rows of one table only; another table's
claim is refused with a ConfigError, nothing changed.

The asyncio version is written by hand; ``scripts/unasync.py`` generates the sync one.
"""

from __future__ import annotations

from contextlib import suppress

from psycopg import errors as pg

from ..epochs import PG_BUMP
from ..sources.postgres_sql import AsyncConnection
from ..sources.registry import (
    CHANGED_REASON,
    PG_CREATE,
    PG_INSERT,
    PG_LOCK,
    PG_REHOME,
    REGISTRY_TABLE,
    Claim,
    Verdict,
    judge,
)

_RACE = (pg.UniqueViolation, pg.DuplicateTable, pg.DuplicateObject)


async def create_registry(conn: AsyncConnection) -> None:
    """Create the registry table if it is missing (concurrent openers may race: fine).
    On a connection in a transaction, the CREATE runs in a savepoint."""
    found = await (await conn.execute("SELECT to_regclass(%s)", (REGISTRY_TABLE,))).fetchone()
    if found != (None,):
        return
    with suppress(*_RACE):
        async with conn.transaction():
            await conn.execute(PG_CREATE)


async def claim_namespace(conn: AsyncConnection, wanted: Claim) -> tuple[Verdict, int]:
    """Claim ``wanted.namespace`` for ``wanted``'s table: recorded if nobody had (NEW),
    nothing to do for the same table and schema (SAME), the claim updated and the
    namespace's epoch bumped for a re-created or altered table (CHANGED). Returns the
    verdict and the namespace's epoch. One transaction (a savepoint if one is open; the
    registry row stays locked until it commits). Raises ConfigError if the namespace holds
    another table's rows, or this table's under another key column: nothing changed.
    The registry and epochs tables must exist."""
    async with conn.transaction():
        await conn.execute(PG_INSERT, (wanted.namespace, wanted.table, wanted.key_column,
                                       wanted.oid, wanted.signature))
        row = await (await conn.execute(PG_LOCK, (wanted.namespace, wanted.namespace))).fetchone()
        claimed = None if row is None else Claim(str(row[0]), str(row[1]), str(row[2]),
                                                 row[3], str(row[4]), int(row[5]))
        verdict = judge(claimed, wanted)
        epoch = 0 if claimed is None else claimed.epoch
        if verdict is Verdict.CHANGED:
            await conn.execute(PG_REHOME, (wanted.oid, wanted.signature, wanted.namespace))
            bumped = await (await conn.execute(
                PG_BUMP, {"ns": wanted.namespace, "reason": CHANGED_REASON})).fetchone()
            epoch = int(bumped[0]) if bumped else epoch + 1
    return verdict, epoch
