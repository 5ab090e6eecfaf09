"""Database epochs: versions that keep their order across a restore or a failover.

A row's version grows per key in commit order -- until the database goes back in
time: a restore from a backup, a failover to a replica that had not received the
newest commits. Then versions restart below what the cache may hold, and newer
writes would be judged older. So every version the cache sees is

    cache version = epoch * 10**19 + row version        (row versions < 2**63 < 10**19)

and the epoch only grows: it is bumped when the database is found to have gone
back (PostgreSQL: its system identifier or timeline changed since last seen; any
database: ``writethrough epoch --bump`` after a restore), and for one namespace
when its table was truncated, re-created or altered. An entry whose version is
below the current epoch's floor is never served (``protocol.visible``).

The epochs live in the database itself, in ``writethrough_epochs``: one row per
namespace, and the row ``''`` for the whole database; a namespace's epoch is the
larger of the two. A bump sets ``greatest(epoch + 1, <unix microseconds now>)``: an epoch
row restored from a backup is older than any bump made after it was taken, so the next
bump still orders after every epoch the lost timeline handed out (unless both fell in
the same microsecond, or the clock went back that far).
"""

from __future__ import annotations

EPOCH_SPAN = 10**19
MAX_ROW_VERSION = (1 << 63) - 1
TABLE = "writethrough_epochs"
GLOBAL = ""  # the row whose epoch covers every namespace


def compose(epoch: int, row_version: int) -> int:
    """The version the cache compares: the epoch first, then the row's own version."""
    return epoch * EPOCH_SPAN + row_version


def split(version: int) -> tuple[int, int]:
    """``(epoch, row version)`` of a composed version."""
    epoch, row_version = divmod(version, EPOCH_SPAN)
    return epoch, row_version


def floor(epoch: int) -> int:
    """The lowest version of ``epoch``: entries below it are from an older epoch."""
    return epoch * EPOCH_SPAN


# -- SQL (PostgreSQL; SQLite's twin is in sources/sqlite.py) ------------------------

PG_CREATE = (
    "CREATE TABLE IF NOT EXISTS writethrough_epochs (namespace text PRIMARY KEY, "
    "epoch bigint NOT NULL DEFAULT 0, system_id text, timeline bigint, "
    "reason text, changed_at timestamptz NOT NULL DEFAULT now())"
)
# A table made by an earlier version holds only (namespace, epoch): add what is missing.
PG_UPGRADE = (
    "ALTER TABLE writethrough_epochs ADD COLUMN IF NOT EXISTS system_id text, "
    "ADD COLUMN IF NOT EXISTS timeline bigint, ADD COLUMN IF NOT EXISTS reason text, "
    "ADD COLUMN IF NOT EXISTS changed_at timestamptz NOT NULL DEFAULT now(), "
    "ALTER COLUMN epoch SET DEFAULT 0"
)
PG_COLUMNS = (
    "SELECT count(*) FROM pg_attribute WHERE attrelid = 'writethrough_epochs'::regclass "
    "AND attname IN ('system_id', 'timeline', 'reason', 'changed_at') AND NOT attisdropped"
)
# The epoch of one namespace, in any statement: max(global row, the namespace's row).
PG_EPOCH_OF = (
    "(SELECT coalesce(max(epoch), 0) FROM writethrough_epochs WHERE namespace IN ('', {}))"
)
PG_IDENTITY = (
    "SELECT (SELECT system_identifier::text FROM pg_control_system()), "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint"
)
# Record the server's identity the first time; bump the global epoch when it changed.
PG_OBSERVE = """
INSERT INTO writethrough_epochs AS e (namespace, epoch, system_id, timeline, reason)
VALUES ('', 0, %(sid)s, %(tl)s, 'first seen')
ON CONFLICT (namespace) DO UPDATE SET
  epoch = CASE WHEN e.system_id IS NULL THEN e.epoch
               ELSE greatest(e.epoch + 1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint) END,
  system_id = EXCLUDED.system_id, timeline = EXCLUDED.timeline,
  reason = CASE WHEN e.system_id IS NULL THEN 'first seen'
                ELSE 'system ' || coalesce(e.system_id, '?') || ' timeline ' ||
                     coalesce(e.timeline::text, '?') || ' became system ' ||
                     EXCLUDED.system_id || ' timeline ' || EXCLUDED.timeline END,
  changed_at = now()
WHERE e.system_id IS DISTINCT FROM EXCLUDED.system_id OR e.timeline IS DISTINCT FROM EXCLUDED.timeline
RETURNING epoch
"""
PG_BUMP = """
INSERT INTO writethrough_epochs AS e (namespace, epoch, reason)
VALUES (%(ns)s, greatest(
  (SELECT coalesce(max(epoch), 0) FROM writethrough_epochs WHERE namespace IN ('', %(ns)s)) + 1,
  (extract(epoch FROM clock_timestamp()) * 1000000)::bigint), %(reason)s)
ON CONFLICT (namespace) DO UPDATE SET
  epoch = greatest(e.epoch + 1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint),
  reason = EXCLUDED.reason, changed_at = now()
RETURNING epoch
"""
