"""The listener: applies ``writethrough_events`` to the cache, woken by NOTIFY.

Each drain claims a batch of events in a transaction (``FOR UPDATE SKIP LOCKED``, so
several listeners share the work), writes the cache through the backend's conditional
versioned ``write`` (so a late, repeated or reordered event never leaves an older entry),
deletes the events and commits. If the cache fails, the transaction rolls back and the
events stay for the next try; if the database connection drops, the listener reconnects
with backoff and drains everything outstanding first: NOTIFY only wakes it, the events
table is what is durable.

Cache entries are exactly the store's: key ``wt:{namespace}:{key}`` (the key column as
text), value = the row as JSON (``row_to_json(t)``, version column included) or, with
``value_column``, that column as JSON (``to_json(t.col)``) -- what the store's default
JSON serializer reads back.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, fields
from typing import Literal

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..caches import open_cache
from ..caches.base import Cache
from ..errors import CacheError, ConfigError, SourceError, SourceUnavailable
from ..protocol import Entry, Kind, OnEmpty, WriteOutcome
from ..repair import RetryPolicy
from .triggers import (
    CHANNEL,
    Connection,
    PgTarget,
    check_namespace,
    ensure_schema,
    identifier,
    row_queries,
    table_identifier,
)

Strategy = Literal["write-through", "invalidate"]
log = logging.getLogger("writethrough.events")

_CLAIM = (
    "SELECT id, namespace, key, version, extract(epoch FROM clock_timestamp() - created_at)"
    "::float8 FROM writethrough_events WHERE namespace = ANY(%s) ORDER BY id LIMIT %s "
    "FOR UPDATE SKIP LOCKED"
)
_DONE = "DELETE FROM writethrough_events WHERE id = ANY(%s)"
_BACKLOG = (
    "SELECT count(*), COALESCE(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 "
    "FROM writethrough_events WHERE namespace = ANY(%s)"
)
_ROUNDS = 3  # value writes per key and batch while its row keeps moving, then a tombstone


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Which table feeds which cache namespace, and how.

        >>> Keyspace("profiles", "profiles", "id", strategy="write-through", ttl=300.0)

    ``strategy``: ``"invalidate"`` stores a tombstone of the event's version;
    ``"write-through"`` stores the row's current value with the row's version (a tombstone
    if the row is gone). ``on_empty``: what a write-through does on a key the cache does
    not hold -- ``"lease"`` (a writer lease, the row read again, then filled: race 6 stays
    closed and the next read is a hit) or ``"tombstone"``.
    """

    namespace: str
    table: str
    key_column: str
    strategy: Strategy = "invalidate"
    ttl: float = 300.0
    tombstone_ttl: float | None = None  # None: min(ttl, 30 s), as the store
    value_column: str | None = None  # None: the whole row as JSON
    version_column: str = "version"
    on_empty: OnEmpty = "lease"
    ttl_jitter: float = 0.1

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        table_identifier(self.table)
        identifier(self.key_column, "key column")
        identifier(self.version_column, "version column")
        if self.value_column is not None:
            identifier(self.value_column, "value column")
        if self.strategy not in ("write-through", "invalidate"):
            raise ConfigError(f"strategy must be write-through or invalidate: {self.strategy!r}")
        if self.on_empty not in ("lease", "tombstone"):
            raise ConfigError(f"on_empty must be lease or tombstone: {self.on_empty!r}")
        for name in ("ttl", "tombstone_ttl"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or not value > 0):
                raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")
        if not 0 <= self.ttl_jitter < 1:
            raise ConfigError(f"ttl_jitter must be in [0, 1), got {self.ttl_jitter!r}")

    @property
    def tombstone_seconds(self) -> float:
        return min(self.ttl, 30.0) if self.tombstone_ttl is None else self.tombstone_ttl


@dataclass(frozen=True, slots=True)
class LagPercentiles:
    """Seconds from a row's change (its event's ``created_at``) to its cache write."""

    count: int
    p50: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class Backlog:
    """Change events waiting to be applied: how many, and the oldest one's age (seconds)."""

    events: int
    oldest_age: float


@dataclass(slots=True)
class ListenerStats:
    """Counters; ``applied`` counts events (deleted from the events table), not cache writes."""

    applied: int = 0
    batches: int = 0
    values: int = 0
    tombstones: int = 0
    superseded: int = 0  # the cache already held this version or newer
    rechecked: int = 0  # a stored value was written again: its row moved on meanwhile
    cache_errors: int = 0
    source_errors: int = 0
    reconnects: int = 0

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Plan:
    keyspace: Keyspace
    read: sql.Composed | None = None  # key, version, payload of the rows with these keys
    versions: sql.Composed | None = None
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        self.prefix = f"wt:{self.keyspace.namespace}:"


class Listener:
    """Keeps a cache current from the events the triggers record.

        >>> spaces = {"profiles": Keyspace("profiles", "profiles", "id", "write-through")}
        >>> listener = Listener("postgresql://app@db/app", "redis://cache:6379/0", spaces)
        >>> threading.Thread(target=listener.run).start()     # runs until close()
        >>> ...
        >>> listener.close()
        >>> listener.stats.applied, listener.lag_percentiles().p99
        (2000, 0.0123)

    ``keyspaces`` maps each namespace to its :class:`Keyspace`. Several listeners (threads
    or processes) may run on one database at once: each event is applied by one of them.
    Connects at construction: a bad URL raises ConfigError, an unreachable database
    SourceUnavailable. ``drain_once()`` applies what is queued now, without LISTEN. A cache
    passed as an instance (not a URL) is the caller's to open and close.
    """

    def __init__(self, source_url: str, cache_url: str | Cache, keyspaces: Mapping[str, Keyspace],
                 *, batch_size: int = 500, poll_interval: float = 1.0,
                 backoff: RetryPolicy | None = None, connect_timeout: int = 5,
                 statement_timeout_ms: int = 5000, lag_samples: int = 100_000) -> None:
        if not keyspaces:
            raise ConfigError("a listener needs at least one keyspace")
        for name, space in keyspaces.items():
            if not isinstance(space, Keyspace) or name != space.namespace:
                raise ConfigError(f"keyspaces must map each namespace to its Keyspace: {name!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not poll_interval > 0:
            raise ConfigError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.batch_size = batch_size
        self.poll_interval = float(poll_interval)
        self.backoff = backoff or RetryPolicy(retries=0, base=0.05, cap=2.0)
        self.stats = ListenerStats()
        self._plans = {name: _Plan(space) for name, space in keyspaces.items()}
        self._namespaces = sorted(self._plans)
        self._target = PgTarget.parse(source_url, connect_timeout=connect_timeout,
                                      application_name="writethrough-listener")
        self._statement_timeout = sql.Literal(f"{int(statement_timeout_ms)}ms")
        self._lags: deque[float] = deque(maxlen=lag_samples)
        self._lock = threading.Lock()  # one drain at a time on the work connection
        self._running = threading.Lock()  # held by run()
        self._closing = threading.Event()
        self._random = random.Random()
        self._conn: Connection | None = None
        self._listen: Connection | None = None
        self._observer: Connection | None = None  # backlog(): never the drain's connection
        self._observer_lock = threading.Lock()
        self._owns_cache = isinstance(cache_url, str)
        self.cache: Cache = open_cache(cache_url) if isinstance(cache_url, str) else cache_url
        try:
            if self._owns_cache:
                self.cache.open()
            self._prepare()
        except BaseException:
            self.close()
            raise

    # -- life cycle -----------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """LISTEN and drain until ``stop`` is set or :meth:`close` is called.

        Drains on every notification for its namespaces and every ``poll_interval`` (so a
        missed wake-up, or events left by a listener that died, wait at most that long).
        Database and cache failures are retried with backoff, never raised; after a
        reconnect it drains everything outstanding first.
        """
        stop = stop or threading.Event()
        with self._running:
            attempt = 0
            next_drain = 0.0
            try:
                while not (stop.is_set() or self._closing.is_set()):
                    try:
                        if self._listen is None:
                            self._listen = self._open_listen()
                            next_drain = 0.0  # catch up on what was missed meanwhile
                        woken = self._wait(min(0.2, max(0.0, next_drain - time.monotonic())))
                        if woken or time.monotonic() >= next_drain:
                            self.drain_once()
                            next_drain = time.monotonic() + self.poll_interval
                        attempt = 0
                    except (SourceError, CacheError) as exc:
                        attempt += 1
                        if isinstance(exc, SourceError):
                            self._close_connections()
                            self.stats.reconnects += 1
                        delay = self.backoff.backoff(min(attempt, 30))
                        log.warning("listener: %s; retrying in %.2fs", exc, delay)
                        self._sleep(stop, delay)
            finally:
                self._close_connections()

    def close(self) -> None:
        """Stop :meth:`run` (waits for it to return), close connections and the cache."""
        self._closing.set()
        with self._running:
            self._close_connections()
        with self._observer_lock:
            if self._observer is not None:
                self._observer.close()
                self._observer = None
        if self._owns_cache:
            self._owns_cache = False  # closed once
            self.cache.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- draining -------------------------------------------------------------------

    def drain_once(self) -> int:
        """Apply every event queued now (batch after batch); returns how many were applied.

        Raises CacheError if the cache fails (the failed batch's events stay queued) and
        SourceError if the database does.
        """
        total = 0
        while True:
            applied, full = self._drain_batch()
            total += applied
            if not full:
                return total

    @property
    def namespaces(self) -> list[str]:
        """The namespaces this listener applies, sorted."""
        return list(self._namespaces)

    def backlog(self) -> Backlog:
        """Events waiting in ``writethrough_events`` for this listener's namespaces (claimed
        ones included), read on a connection of its own so a drain is never held up.
        Raises SourceError if the database does not answer."""
        with self._observer_lock:
            if self._closing.is_set():
                raise SourceUnavailable("the listener is closed")
            conn = self._observer
            try:
                if conn is None or conn.closed:
                    conn = self._observer = self._target.connect(autocommit=True, setup=sql.SQL(
                        "SET statement_timeout = {}").format(self._statement_timeout))
                with self._target.errors():
                    row = conn.execute(_BACKLOG, (self._namespaces,)).fetchone()
            except BaseException:
                if self._observer is not None:
                    self._observer.close()
                    self._observer = None
                raise
        events, age = row if row is not None else (0, 0.0)
        return Backlog(int(events), float(age))

    def lag_percentiles(self) -> LagPercentiles:
        """p50 / p99 / max of the last ``lag_samples`` events' change-to-cache lag."""
        with self._lock:
            lags = list(self._lags)
        lags.sort()  # outside the drain lock: a scrape never holds up a drain
        if not lags:
            return LagPercentiles(0, 0.0, 0.0, 0.0)

        def pct(p: float) -> float:
            return lags[min(len(lags) - 1, int(p / 100 * len(lags)))]

        return LagPercentiles(len(lags), pct(50), pct(99), lags[-1])

    def _drain_batch(self) -> tuple[int, bool]:
        with self._lock:
            try:
                conn = self._work()
            except SourceError:
                self.stats.source_errors += 1
                raise
            try:
                with self._target.errors():
                    rows = conn.execute(_CLAIM, (self._namespaces, self.batch_size)).fetchall()
                    claimed_at = time.monotonic()
                    if rows:
                        newest: dict[str, dict[str, int]] = {}
                        for _, namespace, key, version, _ in rows:
                            keys = newest.setdefault(namespace, {})
                            keys[key] = max(version, keys.get(key, 0))
                        for namespace, keys in newest.items():
                            self._apply(conn, self._plans[namespace], keys)
                        conn.execute(_DONE, ([row[0] for row in rows],))
                    conn.commit()
            except BaseException as exc:
                if isinstance(exc, CacheError):
                    self.stats.cache_errors += 1
                elif isinstance(exc, SourceError):
                    self.stats.source_errors += 1
                self._abort(conn)
                raise
            done = time.monotonic()
            self._lags.extend(row[4] + (done - claimed_at) for row in rows)
            self.stats.applied += len(rows)
            self.stats.batches += 1 if rows else 0
            return len(rows), len(rows) == self.batch_size

    def _apply(self, conn: Connection, plan: _Plan, keys: dict[str, int]) -> None:
        """Write each key's newest event to the cache (one write per key per batch).

        Write-through onto a key the cache does not hold takes a writer lease
        (``protocol.decide_write``); the row is then read again, after the lease,
        and filled: a newer write in between replaces the lease and drops the fill.
        """
        if plan.read is None or plan.versions is None:  # invalidate
            for key, version in keys.items():
                self._write(plan, key, Kind.TOMBSTONE, version)
            return
        found = {k: (int(v), p) for k, v, p in conn.execute(plan.read, (list(keys),))}
        leased: dict[str, tuple[bytes, int]] = {}
        for key, least in keys.items():
            row = found.get(key)
            if row is None or row[0] < least:  # deleted since: a tombstone is safe
                self._write(plan, key, Kind.TOMBSTONE, least)
                continue
            payload = row[1].encode() if isinstance(row[1], str) else b"null"
            token = os.urandom(8) if plan.keyspace.on_empty == "lease" else None
            if self._write(plan, key, Kind.VALUE, row[0], payload, token) is WriteOutcome.LEASED:
                assert token is not None
                leased[key] = (token, row[0])
        if not leased:
            return
        again = {k: (int(v), p) for k, v, p in conn.execute(plan.read, (list(leased),))}
        space = plan.keyspace
        for key, (token, version) in leased.items():
            row = again.get(key)
            if row is None:
                entry = Entry.tombstone(version, fresh=False)
                ttl = space.tombstone_seconds
            else:
                entry = Entry.value(row[0], row[1].encode() if isinstance(row[1], str) else b"null")
                ttl = space.ttl * (1.0 - space.ttl_jitter * self._random.random())
            if self.cache.fill(plan.prefix + key, token, entry, ttl=ttl):
                self.stats.values += 1
            else:
                self.stats.rechecked += 1

    def _write(self, plan: _Plan, key: str, kind: Kind, version: int,
               payload: bytes = b"", token: bytes | None = None) -> WriteOutcome:
        space = plan.keyspace
        ttl = space.ttl * (1.0 - space.ttl_jitter * self._random.random())
        outcome = self.cache.write(plan.prefix + key, kind, version, payload, ttl=ttl,
                                   tombstone_ttl=space.tombstone_seconds, token=token)
        if outcome is WriteOutcome.STORED_VALUE:
            self.stats.values += 1
        elif outcome is WriteOutcome.STORED_TOMBSTONE:
            self.stats.tombstones += 1
        elif outcome is not WriteOutcome.LEASED:
            self.stats.superseded += 1
        return outcome

    # -- connections ----------------------------------------------------------------

    def _prepare(self) -> None:
        """Connect, create the events table if missing, check each write-through table."""
        conn = self._work()
        with self._target.errors():
            conn.autocommit = True
            try:
                ensure_schema(conn)
                for plan in self._plans.values():
                    space = plan.keyspace
                    if space.strategy == "write-through":
                        plan.read, plan.versions = row_queries(
                            conn, space.table, space.key_column, space.version_column,
                            space.value_column)
            finally:
                conn.autocommit = False

    def _work(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._target.connect(autocommit=False, setup=sql.SQL(
                "SET statement_timeout = {}").format(self._statement_timeout))
        return self._conn

    def _open_listen(self) -> Connection:
        return self._target.connect(autocommit=True, setup=sql.SQL("LISTEN {}").format(
            sql.Identifier(CHANNEL)))

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a notification; True if one is for our namespaces."""
        conn = self._listen
        if conn is None:
            raise SourceUnavailable("the listening connection is closed")
        woken = False
        with self._target.errors():
            for notify in conn.notifies(timeout=timeout, stop_after=1):
                woken = woken or notify.payload in self._plans
        return woken

    def _abort(self, conn: Connection) -> None:
        """Roll back (the claimed events stay); drop a connection that is broken."""
        with suppress(psycopg.Error):
            conn.rollback()
        if conn.broken or conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        conn.close()
        if self._conn is conn:
            self._conn = None

    def _close_connections(self) -> None:
        listen, self._listen = self._listen, None
        if listen is not None:
            listen.close()
        with self._lock:
            if self._conn is not None:
                self._drop(self._conn)

    def _sleep(self, stop: threading.Event, delay: float) -> None:
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0 and not (
                stop.is_set() or self._closing.is_set()):
            stop.wait(min(left, 0.1))
