"""Change capture with triggers, for servers without logical decoding.

    from writethrough.capture import Keyspace, TriggerListener, install
    install("postgresql://owner@db/app", "profiles", "id", capture="triggers")
    spaces = {"profiles": Keyspace("profiles", "profiles", "id", "write-through")}
    with TriggerListener("postgresql://listener@db/app", "redis://cache:6379/0",
                         spaces) as listener:
        listener.run()

The table's statement-level triggers record each changed key in ``writethrough_changes``
inside the writer's transaction (a row exists iff its change committed). A drain claims
a batch (``FOR UPDATE SKIP LOCKED``: several listeners share the work), applies it
(:mod:`.apply`; the rows' versions and values are read from the table, never trusted
from the change rows), parks the keys that failed alone, deletes the batch and commits.
It polls every ``poll_interval`` (0.2 s), and is woken at once by the NOTIFY the
triggers send when installed with ``notify=True`` (costly for writers: see
:mod:`.schema`). A row with a NULL key is a TRUNCATE: the namespace's epoch is bumped.
Stops between batches.

Retention: applied rows are deleted at once; the table is created with aggressive
autovacuum settings, and claims start near the last claimed id, so dead rows at its head
are not scanned again and again (a full scan every ``rescan_interval`` picks up rows a
listener skipped while another held them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from psycopg import sql

from ..caches.base import Cache
from ..errors import CacheError, ConfigError, SourceError, SourceUnavailable
from .apply import Interrupted, KeyChange
from .keyspace import Backlog, Keyspace
from .listener import BaseListener
from .pg import Connection
from .schema import CHANGES, CHANNEL

log = logging.getLogger("writethrough.capture")


class TriggerListener(BaseListener):
    """Keeps a cache current from ``writethrough_changes`` (see the module docstring).

    Connects at construction: a bad URL raises ConfigError, an unreachable database
    SourceUnavailable. :meth:`drain_once` applies what is queued now; :meth:`run` listens
    until stopped.
    """

    application_name = "writethrough-triggers"

    def __init__(self, source_url: str, cache_url: str | Cache,
                 keyspaces: Mapping[str, Keyspace], *, batch_size: int = 500,
                 poll_interval: float = 0.2, rescan_interval: float = 10.0,
                 connect_timeout: int = 5, statement_timeout_ms: int = 5000,
                 lag_samples: int = 100_000) -> None:
        for name, value in (("poll_interval", poll_interval),
                            ("rescan_interval", rescan_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 < value < 86400):
                raise ConfigError(f"{name} must be a number of seconds in (0, 86400), "
                                  f"got {value!r}")
        self.poll_interval = float(poll_interval)
        self.rescan_interval = float(rescan_interval)
        self._oids: dict[int, str] = {}
        self._after = 0  # claims start after this id (dead rows below are not rescanned)
        self._rescan_at = 0.0
        self._listen: Connection | None = None
        self._lock = threading.Lock()  # one drain at a time on the work connection
        super().__init__(source_url, cache_url, keyspaces, batch_size=batch_size,
                         connect_timeout=connect_timeout,
                         statement_timeout_ms=statement_timeout_ms, lag_samples=lag_samples)

    def required_objects(self) -> tuple[str, ...]:
        return (*super().required_objects(), CHANGES)

    def prepare(self) -> None:
        super().prepare()
        self._oids = {bound.shape.oid: ns for ns, bound in self.bound.items()}
        assert self.objects is not None
        changes = self.objects.changes
        self._claim = sql.SQL(
            "SELECT id, tbl, key, extract(epoch FROM clock_timestamp() - created_at)::float8 "
            "FROM {} WHERE tbl = ANY(%s) AND id > %s ORDER BY id LIMIT %s "
            "FOR UPDATE SKIP LOCKED").format(changes)
        self._done = sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(changes)
        self._queued = sql.SQL("SELECT count(*) FROM {} WHERE tbl = ANY(%s)").format(changes)

    # -- running ------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """LISTEN and drain until ``stop`` is set or :meth:`close` is called; drains on
        every notification and every ``poll_interval``. Failures are retried with backoff,
        never raised; after a reconnect it drains everything outstanding first."""
        stop = self._stop = stop or threading.Event()
        attempt = 0
        next_drain = 0.0
        try:
            while not (stop.is_set() or self.closing):
                try:
                    if self._listen is None:
                        self._listen = self.target.connect(
                            autocommit=True, setup=sql.SQL("LISTEN {}").format(
                                sql.Identifier(CHANNEL)))
                        next_drain = 0.0  # catch up on what was missed meanwhile
                    woken = self._wait(min(0.2, max(0.0, next_drain - time.monotonic())))
                    if woken or time.monotonic() >= next_drain:
                        self.drain_once(stop)
                        next_drain = time.monotonic() + self.poll_interval
                    self.retry_parked()
                    attempt = 0
                except Interrupted:
                    break  # asked to stop mid-batch: the batch was rolled back, still queued
                except (SourceError, CacheError) as exc:
                    attempt += 1
                    if isinstance(exc, SourceError):
                        self._close_listen()
                        self.check_source(exc)
                    delay = min(5.0, 0.05 * 2 ** min(attempt, 7))
                    log.warning("capture: %s; retrying in %.2fs", exc, delay)
                    self.sleep(stop, delay)
        finally:
            self._close_listen()
            with self._lock:
                self.close_connections()

    def drain_once(self, stop: threading.Event | None = None) -> int:
        """Apply every change queued now, batch after batch (stopping between batches when
        ``stop`` is set); returns how many were applied. Raises CacheUnavailable if the
        cache does not answer (the batch stays queued) and SourceError if the database
        fails."""
        total = 0
        while not (stop is not None and stop.is_set()) and not self.closing:
            applied, full = self._drain_batch()
            total += applied
            if not full:
                break
        return total

    def queued(self) -> int:
        """Changes of this listener's tables waiting in ``writethrough_changes``."""
        with self._lock, self.target.errors():
            row = self.work().execute(self._queued, (list(self._oids),)).fetchone()
            self.work().commit()
        return int(row[0]) if row else 0

    def measure_backlog(self, conn: Connection) -> Backlog:
        assert self.objects is not None
        row = conn.execute(sql.SQL(
            "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)),"
            " 0)::float8 FROM {} WHERE tbl = ANY(%s)").format(self.objects.changes),
            (list(self._oids),)).fetchone()
        return Backlog(int(row[0]), float(row[1])) if row else Backlog(0, 0.0)

    def _drain_batch(self) -> tuple[int, bool]:
        with self._lock:
            if time.monotonic() >= self._rescan_at:
                self._after, self._rescan_at = 0, time.monotonic() + self.rescan_interval
            conn = self.work()
            try:
                with self.target.errors():
                    rows = conn.execute(self._claim, (list(self._oids), self._after,
                                                      self.batch_size)).fetchall()
                    claimed_at = time.monotonic()
                    changes: dict[str, dict[str, KeyChange]] = {}
                    truncated: set[str] = set()
                    for _, tbl, key, _ in rows:
                        namespace = self._oids[int(tbl)]
                        if key is None:
                            truncated.add(namespace)
                        else:
                            keys = changes.setdefault(namespace, {})
                            keys.setdefault(str(key), KeyChange(None, False))
                    if truncated:
                        self.bump_epochs(truncated, "TRUNCATE (trigger capture)")
                        self.stats.truncates += len(truncated)
                    if changes:
                        self.apply(changes)
                    if rows:
                        conn.execute(self._done, ([row[0] for row in rows],))
                    conn.commit()
            except BaseException as exc:
                if isinstance(exc, SourceError):
                    self.stats.source_errors += 1
                self.abort()
                raise
            if rows:
                # Ids are drawn before commit: keep a margin for rows committed late.
                self._after = max(self._after, int(rows[-1][0]) - 10 * self.batch_size)
            done = time.monotonic()
            self.lags.extend([row[3] + (done - claimed_at) for row in rows])
            self.stats.applied += len(rows)
            self.stats.batches += 1 if rows else 0
            return len(rows), len(rows) == self.batch_size

    # -- LISTEN ---------------------------------------------------------------------------

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a notification; True if one came."""
        conn = self._listen
        if conn is None:
            raise SourceUnavailable("the listening connection is closed")
        with self.target.errors():
            return any(True for _ in conn.notifies(timeout=timeout, stop_after=1))

    def _close_listen(self) -> None:
        listen, self._listen = self._listen, None
        if listen is not None:
            listen.close()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._close_listen()
            super().close()
