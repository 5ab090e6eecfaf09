"""Glue between your own transactions and a table store: the cache step after COMMIT.

Each integration collects, while your transaction runs, what it changed in cached tables
-- ``(key, version, value)`` with the version the database gave the row -- and hands it
to ``store.apply_write`` / ``store.apply_delete`` right after the COMMIT; nothing on
rollback; a savepoint rolled back drops what it collected.

* ``writethrough.integrations.psycopg``: ``cache_transaction(conn, store)`` around a
  psycopg 3 transaction (sync and asyncio).
* ``writethrough.integrations.sqlalchemy``: session events for mapped classes (``Session``
  and ``AsyncSession``).
* ``writethrough.django``: ``post_save`` / ``post_delete`` + ``transaction.on_commit``.

They import only the public store API (``writethrough``) and their framework, lazily.
"""

from __future__ import annotations

from .pending import Change, Pending, row_value

__all__ = ["Change", "Pending", "row_value"]
