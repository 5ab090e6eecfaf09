"""What both listeners share: the database connection, reading rows, epochs, parked keys,
and the rule for a cache write that fails.

A failed cache write never blocks other keys and is never lost:

* the cache does not answer at all (every write of the batch failed unreachable, or the
  first few did) -> :class:`~writethrough.errors.CacheUnavailable` is raised, nothing is
  confirmed, the batch comes again after a backoff;
* some keys fail (a WRONGTYPE value, one cluster shard down, an entry that cannot be
  decoded) -> those keys are *parked*: a row in ``writethrough_parked`` (namespace, key,
  version), committed before the batch is confirmed, retried with backoff (0.5 s doubling
  to 60 s) and removed once its write landed. The rest of the batch is confirmed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..caches import open_cache
from ..caches.base import Cache
from ..checks import check_count
from ..errors import CacheUnavailable, ConfigError, SourceError, SourceUnavailable
from .apply import CacheApplier, Failed, KeyChange
from .keyspace import (
    Backlog,
    Keyspace,
    LagPercentiles,
    LagWindow,
    ListenerStats,
    check_keyspaces,
)
from .pg import Connection, PgTarget, TableShape, inspect_table, row_queries
from .schema import Objects, objects_of
from .versions import BUMP_SQL, epochs_sql, floor_sql

log = logging.getLogger("writethrough.capture")
MAX_PARK_DELAY = 60.0
EPOCH_REFRESH = 1.0  # seconds an epoch read is reused (a bump by someone else: at most this late)


@dataclass(slots=True)
class Bound:
    """A keyspace bound to its table (resolved at start)."""

    space: Keyspace
    shape: TableShape
    read: sql.Composed | None  # key, version, payload
    versions: sql.Composed


class TableReader:
    """Reads one table's rows for the applier (a :class:`~.apply.RowSource`); a key that is
    not a valid value of the key column's type is dropped, not fatal to the batch."""

    def __init__(self, listener: BaseListener, bound: Bound) -> None:
        self.listener, self.bound = listener, bound

    def rows(self, keys: list[str]) -> dict[str, tuple[int, bytes]]:
        query = self.bound.read
        if query is None:  # invalidate: never reads payloads
            raise ConfigError("this keyspace reads no values")
        return {str(k): (int(v), p.encode() if isinstance(p, str) else b"null")
                for k, v, p in self._select(query, keys)}

    def versions(self, keys: list[str]) -> dict[str, int]:
        return {str(row[0]): int(row[1]) for row in self._select(self.bound.versions, keys)}

    def floor(self) -> int:
        return self.listener.floor()

    def _select(self, query: sql.Composed, keys: list[str]) -> list[tuple[Any, ...]]:
        conn = self.listener.work()
        with self.listener.target.errors():
            try:
                with conn.transaction():
                    return conn.execute(query, (keys,)).fetchall()
            except psycopg.DataError:
                pass
            rows: list[tuple[Any, ...]] = []
            for key in keys:  # find the malformed key(s)
                try:
                    with conn.transaction():
                        rows += conn.execute(query, ([key],)).fetchall()
                except psycopg.DataError:
                    self.listener.stats.skipped += 1
                    log.warning("capture: key %r is not a valid %s value; skipped", key[:80],
                                self.bound.shape.columns.get(self.bound.space.key_column))
            return rows


class BaseListener:
    """Connections, tables, epochs and parked keys; the subclasses read the changes."""

    application_name = "writethrough-listener"

    def __init__(self, source_url: str, cache_url: str | Cache,
                 keyspaces: Mapping[str, Keyspace], *, batch_size: int = 500,
                 connect_timeout: int = 5, statement_timeout_ms: int = 5000,
                 lag_samples: int = 100_000) -> None:
        self.keyspaces = check_keyspaces(dict(keyspaces))
        check_count("batch_size", batch_size, most=100_000)
        check_count("statement_timeout_ms", statement_timeout_ms, most=2**31 - 1)  # an int32
        check_count("lag_samples", lag_samples, most=10_000_000)
        self.batch_size = batch_size
        self.stats = ListenerStats()
        self.lags = LagWindow(lag_samples)
        self.target = PgTarget.parse(source_url, connect_timeout=connect_timeout,
                                     application_name=self.application_name)
        self._statement_timeout = sql.Literal(f"{int(statement_timeout_ms)}ms")
        self._conn: Connection | None = None
        self._closing = threading.Event()
        self.bound: dict[str, Bound] = {}
        self.objects: Objects | None = None
        self._next_parked = 0.0
        self._epochs: dict[str, int] | None = None
        self._epochs_until = 0.0
        self._owns_cache = isinstance(cache_url, str)
        self.cache: Cache = open_cache(cache_url) if isinstance(cache_url, str) else cache_url
        self._stop: threading.Event | None = None  # run()'s
        self._observer: Connection | None = None  # backlog(): never the batches' connection
        self._observer_lock = threading.Lock()
        self.applier = CacheApplier(self.cache, self.stats, stopping=self.stopping)
        try:
            if self._owns_cache:
                self.cache.open()
            self.prepare()
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Resolve each keyspace's table (it must have capture installed)."""
        conn = self.work()
        with self.target.errors():
            self.objects = objects_of(conn)
            for name, space in self.keyspaces.items():
                shape = inspect_table(conn, space.table, space.key_column)
                read, versions = row_queries(shape, space.key_column, space.version_column,
                                             space.value_column)
                self.bound[name] = Bound(space, shape,
                                         read if space.strategy == "write-through" else None,
                                         versions)
            missing = conn.execute(
                "SELECT x FROM unnest(%s::text[]) AS x WHERE to_regclass(x) IS NULL",
                ([self.objects.ident(n).as_string(conn) for n in self.required_objects()],)
            ).fetchall()
            conn.commit()
        if missing:
            raise ConfigError(f"{', '.join(str(m[0]) for m in missing)} missing: install "
                              "change capture on the table first (writethrough install)")

    def required_objects(self) -> tuple[str, ...]:
        return ("writethrough_versions", "writethrough_epochs", "writethrough_parked")

    # -- the database -----------------------------------------------------------------

    def work(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.target.connect(autocommit=False, setup=sql.SQL(
                "SET statement_timeout = {}").format(self._statement_timeout))
        return self._conn

    def commit(self) -> None:
        with self.target.errors():
            self.work().commit()

    def abort(self) -> None:
        """Roll back; drop a connection that is broken."""
        conn = self._conn
        if conn is None:
            return
        with suppress(psycopg.Error):
            conn.rollback()
        if conn.broken or conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            conn.close()
            self._conn = None

    def floor(self) -> int:
        assert self.objects is not None
        with self.target.errors():
            row = self.work().execute(floor_sql(self.objects.sequence_regclass)).fetchone()
        return int(row[0]) if row else 1

    def epochs(self) -> dict[str, int]:
        """The effective epoch of each namespace (max of its own and the global one); read
        again at most every :data:`EPOCH_REFRESH` seconds, and after our own bumps."""
        if self._epochs is not None and time.monotonic() < self._epochs_until:
            return self._epochs
        assert self.objects is not None
        with self.target.errors():
            rows = self.work().execute(epochs_sql(self.objects.epochs),
                                       (list(self.keyspaces),)).fetchall()
        found = {str(ns): int(epoch) for ns, epoch in rows}
        base = found.get("", 0)
        self._epochs = {ns: max(base, found.get(ns, 0)) for ns in self.keyspaces}
        self._epochs_until = time.monotonic() + EPOCH_REFRESH
        return self._epochs

    def bump_epochs(self, namespaces: set[str], reason: str) -> None:
        """A TRUNCATE: every older cache entry of these namespaces becomes invalid. Not
        committed here (the logical listener commits before writing entries of the new
        epoch; the trigger listener with the claimed batch)."""
        assert self.objects is not None
        conn = self.work()
        self._epochs = None
        with self.target.errors():
            for namespace in sorted(namespaces):
                epoch = conn.execute(BUMP_SQL, {"ns": namespace, "reason": reason}).fetchone()
                log.info("capture: epoch of %r is now %s", namespace,
                         epoch[0] if epoch else "?")

    # -- applying -----------------------------------------------------------------------

    def apply(self, changes: Mapping[str, dict[str, KeyChange]]) -> None:
        """Write every changed key; park the keys that failed alone (not committed here:
        the caller commits, then confirms). Raises CacheUnavailable if the cache is down."""
        epochs = self.epochs()
        failed: list[tuple[str, Failed]] = []
        self.applier.begin_batch()
        for namespace, keys in changes.items():
            if keys:
                bound = self.bound[namespace]
                failed += [(namespace, f) for f in self.applier.apply(
                    bound.space, epochs[namespace], keys, TableReader(self, bound))]
        if failed and self.applier.cache_down and all(f.unreachable for _, f in failed):
            raise CacheUnavailable(f"the cache does not answer: {failed[0][1].error}")
        if failed:
            self.park(failed)

    def park(self, failed: list[tuple[str, Failed]]) -> None:
        assert self.objects is not None
        conn = self.work()
        with self.target.errors():
            for namespace, failure in failed:
                conn.execute(sql.SQL(
                    "INSERT INTO {} AS p (namespace, key, version, deleted, error) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (namespace, key) DO UPDATE SET "
                    "version = greatest(p.version, EXCLUDED.version), deleted = EXCLUDED.deleted, "
                    "error = EXCLUDED.error").format(self.objects.parked),
                    (namespace, failure.key, failure.change.version, failure.change.deleted,
                     str(failure.error)[:500]))
                log.warning("capture: cache write of %r in %r failed (%s); parked, will retry",
                            failure.key[:80], namespace, failure.error)
        self.stats.parked += len(failed)

    def retry_parked(self, limit: int = 200) -> int:
        """Write the parked keys that are due; returns how many landed."""
        if time.monotonic() < self._next_parked:
            return 0
        self._next_parked = time.monotonic() + 0.5
        assert self.objects is not None
        conn = self.work()
        try:
            with self.target.errors():
                due = conn.execute(sql.SQL(
                    "SELECT namespace, key, version, deleted, attempts FROM {} "
                    "WHERE namespace = ANY(%s) AND next_try <= now() ORDER BY next_try "
                    "LIMIT %s FOR UPDATE SKIP LOCKED").format(self.objects.parked),
                    (list(self.keyspaces), limit)).fetchall()
                if not due:
                    conn.commit()
                    return 0
                grouped: dict[str, dict[str, KeyChange]] = {}
                attempts: dict[tuple[str, str], int] = {}
                for namespace, key, version, deleted, tries in due:
                    grouped.setdefault(namespace, {})[key] = KeyChange(version, deleted)
                    attempts[namespace, key] = int(tries)
                epochs = self.epochs()
                self.applier.begin_batch()
                landed = 0
                for namespace, keys in grouped.items():
                    bound = self.bound[namespace]
                    failed = {f.key: f for f in self.applier.apply(
                        bound.space, epochs[namespace], keys, TableReader(self, bound))}
                    done = [k for k in keys if k not in failed]
                    conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s AND key = ANY(%s)"
                                         ).format(self.objects.parked), (namespace, done))
                    landed += len(done)
                    for key, failure in failed.items():
                        tries = attempts[namespace, key] + 1
                        delay = min(MAX_PARK_DELAY, 0.5 * 2 ** min(tries, 10))
                        conn.execute(sql.SQL(
                            "UPDATE {} SET attempts = %s, error = %s, next_try = now() + "
                            "make_interval(secs => %s) WHERE namespace = %s AND key = %s"
                        ).format(self.objects.parked),
                            (tries, str(failure.error)[:500], delay, namespace, key))
                conn.commit()
        except BaseException:
            self.abort()
            raise
        self.stats.unparked += landed
        return landed

    def parked_count(self) -> int:
        assert self.objects is not None
        with self.target.errors():
            row = self.work().execute(sql.SQL(
                "SELECT count(*) FROM {} WHERE namespace = ANY(%s)").format(self.objects.parked),
                (list(self.keyspaces),)).fetchone()
            self.work().commit()
        return int(row[0]) if row else 0

    # -- observing (metrics, status lines) --------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        """The namespaces this listener applies, sorted."""
        return sorted(self.keyspaces)

    def backlog(self) -> Backlog:
        """What waits to be applied, read on a connection of its own (a scrape never holds
        up a batch). Raises SourceError if the database does not answer."""
        with self._observer_lock:
            if self._closing.is_set():
                raise SourceUnavailable("the listener is closed")
            try:
                if self._observer is None or self._observer.closed:
                    self._observer = self.target.connect(autocommit=True, setup=sql.SQL(
                        "SET statement_timeout = {}").format(self._statement_timeout))
                with self.target.errors():
                    return self.measure_backlog(self._observer)
            except BaseException:
                if self._observer is not None:
                    self._observer.close()
                    self._observer = None
                raise

    def measure_backlog(self, conn: Connection) -> Backlog:
        raise NotImplementedError

    # -- life cycle ---------------------------------------------------------------------

    def lag_percentiles(self) -> LagPercentiles:
        return self.lags.percentiles()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def stopping(self) -> bool:
        """Asked to stop: by :meth:`close` or by the event :meth:`run` was given."""
        return self._closing.is_set() or (self._stop is not None and self._stop.is_set())

    def close_connections(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        with self._observer_lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop :meth:`run`, close the connections and (if it opened it) the cache."""
        self._closing.set()
        self.close_connections()
        if self._owns_cache:
            self._owns_cache = False  # closed once
            self.cache.close()

    def sleep(self, stop: threading.Event, delay: float) -> None:
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0 and not (
                stop.is_set() or self._closing.is_set()):
            stop.wait(min(left, 0.1))

    def check_source(self, exc: SourceError) -> None:
        self.stats.source_errors += 1
        self.close_connections()
        self.stats.reconnects += 1
        log.warning("capture: %s; reconnecting", exc)
