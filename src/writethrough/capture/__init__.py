"""Change capture: what turns the database's committed changes into cache writes.

    from writethrough.capture import Keyspace, LogicalListener, install

    install("postgresql://owner@db/app", "profiles", "id")            # once, as the owner
    spaces = {"profiles": Keyspace("profiles", "profiles", "id", "write-through")}
    with LogicalListener("postgresql://listener@db/app", "redis://cache:6379/0",
                         spaces) as listener:
        listener.run()

Two ways to capture, one way to apply (:mod:`.apply`):

* ``logical`` (:class:`LogicalListener`): a publication per table and a replication slot
  per listener group, decoded with the built-in ``pgoutput`` plugin -- reads the WAL after
  commit, costs writers nothing but the version trigger, sees TRUNCATE. Needs
  ``wal_level=logical``.
* ``triggers`` (:class:`TriggerListener`): statement-level triggers record changed keys in
  ``writethrough_changes``; for servers without logical decoding.

Needs psycopg (``pip install 'writethrough[postgres]'``).
"""

from __future__ import annotations

from .apply import KeyChange, cache_key
from .keyspace import Backlog, Keyspace, LagPercentiles, ListenerStats, Strategy
from .logical import LogicalListener, SlotStatus, drop_slot, slot_status
from .schema import Capture, Installed, install, uninstall
from .triggers import TriggerListener
from .versions import cache_version

__all__ = [
    "Backlog",
    "Capture",
    "Installed",
    "KeyChange",
    "Keyspace",
    "LagPercentiles",
    "ListenerStats",
    "LogicalListener",
    "SlotStatus",
    "Strategy",
    "TriggerListener",
    "cache_key",
    "cache_version",
    "drop_slot",
    "install",
    "slot_status",
    "uninstall",
]
