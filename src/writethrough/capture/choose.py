"""Which capture a server and a table allow: what ``--capture auto`` means."""

from __future__ import annotations

from collections.abc import Mapping

from ..caches.base import Cache
from ..errors import ConfigError
from .keyspace import Keyspace
from .logical import LogicalListener
from .pg import PgTarget, find_table
from .schema import Capture
from .triggers import TriggerListener

CaptureChoice = Capture | str  # "logical", "triggers" or "auto"


def server_allows_logical(source_url: str, *, connect_timeout: int = 5) -> bool:
    """``wal_level=logical`` on the server."""
    target = PgTarget.parse(source_url, connect_timeout=connect_timeout)
    with target.connect(autocommit=True) as conn, target.errors():
        row = conn.execute("SHOW wal_level").fetchone()
    return row == ("logical",)


def installed_capture(source_url: str, table: str, *, connect_timeout: int = 5
                      ) -> Capture | None:
    """How ``table`` is captured now (its publication, or its change triggers), if at all."""
    target = PgTarget.parse(source_url, connect_timeout=connect_timeout)
    with target.connect(autocommit=True) as conn, target.errors():
        shape = find_table(conn, table)
        if shape is None:
            raise ConfigError(f"no table {table!r}")
        published = conn.execute(
            "SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
            "WHERE p.pubname = %s AND r.prrelid = %s", (shape.tag, shape.oid)).fetchone()
        if published:
            return "logical"
        triggers = conn.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = %s AND tgname = "
                                "'writethrough_insert'", (shape.oid,)).fetchone()
    return "triggers" if triggers else None


def resolve(capture: CaptureChoice, source_url: str, *, table: str | None = None) -> Capture:
    """``auto``: logical where the server allows it (and, given a table, where it was
    installed that way), else triggers."""
    if capture in ("logical", "triggers"):
        return capture
    if capture != "auto":
        raise ConfigError(f"capture must be logical, triggers or auto, got {capture!r}")
    if table is not None:
        found = installed_capture(source_url, table)
        if found is not None:
            return found
    return "logical" if server_allows_logical(source_url) else "triggers"


def open_listener(source_url: str, cache: str | Cache, keyspaces: Mapping[str, Keyspace], *,
                  capture: CaptureChoice = "auto", group: str = "main", batch_size: int = 500,
                  poll_interval: float = 0.2) -> LogicalListener | TriggerListener:
    """A listener of the chosen kind (``auto``: how the first keyspace's table is installed)."""
    first = next(iter(keyspaces.values()), None)
    chosen = resolve(capture, source_url, table=first.table if first else None)
    if chosen == "logical":
        return LogicalListener(source_url, cache, keyspaces, group=group, batch_size=batch_size)
    return TriggerListener(source_url, cache, keyspaces, batch_size=batch_size,
                           poll_interval=poll_interval)
