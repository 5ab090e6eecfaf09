"""The first names of change capture, kept so existing imports and the CLI keep working.

New code uses :mod:`writethrough.capture` (logical decoding, least-privileged triggers,
``install`` / ``uninstall``). ``Listener`` here is the trigger listener;
``install_triggers`` is ``install(..., capture="triggers")``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..capture import (
    Backlog,
    Keyspace,
    LagPercentiles,
    ListenerStats,
    Strategy,
    install,
    uninstall,
)
from ..capture import TriggerListener as Listener
from ..capture.pg import check_namespace


@dataclass(frozen=True, slots=True)
class Installed:
    """What :func:`install_triggers` did."""

    table: str  # schema.table
    namespace: str
    key_column: str
    version_column: str
    added_version_column: bool


def install_triggers(source_url: str, table: str, key_column: str, namespace: str, *,
                     version_column: str = "version", connect_timeout: int = 5) -> Installed:
    """``install(..., capture="triggers")``; ``namespace`` is the listener's business now
    (the changes table records the table, not a namespace) and only checked here."""
    check_namespace(namespace)
    done = install(source_url, table, key_column, capture="triggers",
                   version_column=version_column, connect_timeout=connect_timeout)
    return Installed(done.table, namespace, done.key_column, done.version_column,
                     done.added_version_column)


def uninstall_triggers(source_url: str, table: str, *, connect_timeout: int = 5) -> bool:
    """``uninstall(...)``."""
    return uninstall(source_url, table, connect_timeout=connect_timeout)


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
