"""Event-driven maintenance from the database: triggers record each committed change of
a user's table in ``writethrough_events`` and NOTIFY; a :class:`Listener` applies them to
the cache (write-through or invalidate), so writes made by plain SQL, other services or
migrations reach the cache too.

    from writethrough.events import Keyspace, Listener, install_triggers

    install_triggers("postgresql://app@db/app", "profiles", "id", namespace="profiles")
    spaces = {"profiles": Keyspace("profiles", "profiles", "id", strategy="write-through")}
    with Listener("postgresql://app@db/app", "redis://cache:6379/0", spaces) as listener:
        listener.run()          # until Ctrl-C, or run(stop_event) in a thread

Needs psycopg (``pip install 'writethrough[postgres]'``).
"""

from __future__ import annotations

from .listener import Backlog, Keyspace, LagPercentiles, Listener, ListenerStats, Strategy
from .triggers import Installed, install_triggers, uninstall_triggers

__all__ = [
    "Backlog",
    "Installed",
    "Keyspace",
    "LagPercentiles",
    "Listener",
    "ListenerStats",
    "Strategy",
    "install_triggers",
    "uninstall_triggers",
]
