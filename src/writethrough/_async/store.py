"""The store: get / put / delete over a source of truth and a cache.

The asyncio version (``_async/store.py``) is written by hand; ``scripts/unasync.py``
generates the sync one (``_sync/store.py``) from it, and CI checks it is current.
Policy lives here (strategies, TTLs, leases, single flight, the failure ladder);
backends only do I/O; the protocol's decisions are the pure functions of ``protocol``.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from ..caches.base import AsyncCache
from ..checks import check_namespace
from ..core import (
    CacheOutcome,
    Settings,
    Stats,
    Versioned,
    WriteResult,
    check_key,
    check_version,
    public_outcome,
)
from ..epochs import EPOCH_SPAN, MAX_ROW_VERSION
from ..errors import (
    CacheDataError,
    CacheError,
    ConfigError,
    InvalidValueError,
    SourceDataError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from ..floors import ReadFloors
from ..protocol import Entry, Kind, LeaseOutcome, WriteOutcome
from ..repair import CircuitBreaker, Repair, RepairLog
from ..serializers import JSONSerializer, Serializer
from ..sources.base import AsyncOutboxSource, AsyncSource, Row
from .compat import (
    SHARE_READS,
    Flights,
    KeyFlight,
    Reads,
    RepairWorker,
    floor_guard,
    shielded,
    sleep,
)

_MISSING: Any = object()
_UNREAD: Any = object()  # the cache was not asked yet
_VALUE = Kind.VALUE
_LEASE = Kind.LEASE
FLOOR_KEYS = 10_000  # read floors kept per store before they are pushed to the cache
OUTBOX_BATCH = 500  # settled outbox ids cleared at once (also without a repair worker)
OUTBOX_BACKLOG_EVERY = 5.0  # seconds between counts of the outbox rows waiting for a repair
LEASE_RENEW_FOR = 60.0  # seconds a slow load may keep renewing its lease
_AMBIGUOUS = (SourceTimeout, SourceUnavailable)  # the write may have committed


class AsyncStore:
    """A cache kept current on every database write.

        >>> async with writethrough.open_async(source="sqlite:///app.db") as store:
        ...     r = await store.put("user:42", {"name": "Alice"})
        ...     await store.get("user:42")
        {'name': 'Alice'}

    Safe to share between concurrent callers.
    """

    def __init__(
        self,
        source: AsyncSource,
        cache: AsyncCache,
        *,
        namespace: str = "default",
        settings: Settings | None = None,
        serializer: Serializer | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = sleep,
        repair_worker: bool = True,
    ) -> None:
        if settings is not None and not isinstance(settings, Settings):
            raise ConfigError(f"settings must be a writethrough Settings, not {type(settings).__name__}")
        self.source = source
        self.cache = cache
        self.namespace = check_namespace(namespace)
        self.settings = settings or Settings()
        self.serializer: Serializer = serializer or JSONSerializer()
        self.clock = clock
        self.sleep = sleep
        self.stats = Stats()
        self.repairs = RepairLog()
        self.breaker = CircuitBreaker(
            self.settings.breaker_threshold, self.settings.breaker_reset, clock=clock
        )
        self.flights = Flights()
        self._reads = Reads(_MISSING)  # hit-path reads (get_hit's answers)
        self._entry_reads = Reads(_MISSING)  # lookups' reads (entries)
        self._share_reads = False  # set with the cache's hit method (_hit_method)
        self._prefix = f"wt:{namespace}:"
        self._pending = self.repairs.pending  # key -> Repair, read on the hot path
        # Nothing older than a floor can land after this: fills read the DB after their
        # lease (renewed for at most LEASE_RENEW_FOR), writes land within their budget.
        keep_for = max(self.settings.ttl, self.settings.lease_ttl) + LEASE_RENEW_FOR + 1.0
        self.floors = ReadFloors(FLOOR_KEYS, keep_for, clock, floor_guard())
        self._floors = self.floors.floors  # read on the hot path
        self._hits = self.stats.counters["hits"]
        self._hit_cache: Any = None
        self._invalidated: dict[str, bool] = {}  # keys this process just invalidated
        self._flying = self.flights.keys  # keys a local reader is looking up
        self._get_hit: Any = None
        self._loads = self.serializer.loads
        self._max_key = self.settings.max_key_bytes
        self._random = random.Random()
        self._versioned = self.settings.protocol == "versioned"
        self._write_kind = Kind.VALUE if self.settings.strategy == "write-through" else Kind.TOMBSTONE
        self._cold_lease = self.settings.on_empty == "lease"
        # Versions below the floor are from an older database epoch; above the ceiling,
        # from a newer one this process has not seen yet (or garbage): neither is served.
        self._epoch_floor = 0
        self._epoch_ceiling = MAX_ROW_VERSION + 1
        self._next_epoch_check = 0.0
        self._held: dict[bytes, tuple[str, float, float]] = {}  # token -> key, taken, renewed
        # A statement whose reply was lost may still commit on the server until its
        # statement timeout: a verifying repair reads the version back only after that.
        timeout_ms = getattr(source, "statement_timeout_ms", 0)
        self._verify_after = timeout_ms / 1000 + 1.0 if isinstance(timeout_ms, int) and timeout_ms else 0.0
        # The worker renews leases of slow loads, checks the database epoch and applies
        # repairs; without it (repair_worker=False) the caller drives repair_once().
        self._worker: RepairWorker | None = None
        self._lease_worker: RepairWorker | None = None
        if repair_worker and self._versioned:
            self._worker = RepairWorker(self._maintain, self.settings.repair_interval)
            self._lease_worker = RepairWorker(self._tick, min(0.5, self.settings.lease_ttl / 4))
        self._outbox: AsyncOutboxSource | None = None
        self._outbox_done: list[int] = []  # outbox rows whose cache write landed
        # Outbox rows past their grace (waiting for a repair) and the oldest one's age, as
        # counted by the last repair round (metrics, status lines); None: never counted.
        self.outbox_backlog: tuple[int, float] | None = None
        self._backlog_at = -OUTBOX_BACKLOG_EVERY
        if self.settings.durability == "outbox":
            if not all(hasattr(source, m) for m in ("write_logged", "outbox_claim", "outbox_done")):
                raise ConfigError(f"durability='outbox' needs a source with an outbox, not {source.name}")
            self._outbox = cast(AsyncOutboxSource, source)
        self._opened = False
        self._closed = False

    # -- life cycle --------------------------------------------------------------

    async def open(self) -> AsyncStore:
        """Connect the backends and start the repair worker (``async with`` does this)."""
        if not self._opened:
            try:
                await self.source.open()
                await self.cache.open()
                await self._check_epoch()
            except BaseException:
                self._closed = False
                await self.close()
                raise
            self._opened = True
            if self._worker is not None and self._lease_worker is not None:
                self._worker.start()
                self._lease_worker.start()
        return self

    async def __aenter__(self) -> AsyncStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the repair worker, then close the cache and the source."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None and self._lease_worker is not None:
            await self._lease_worker.stop()
            await self._worker.stop()
        try:
            if self._outbox is not None and self._outbox_done:
                await self._outbox.outbox_done(self._outbox_done)
            await self.cache.close()
        finally:
            await self.source.close()

    # -- reads -------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` if there is none."""
        # The hit path, kept short: one cache lookup, one decode, no context manager.
        if (
            key.__class__ is str
            and 0 < len(key) <= self._max_key
            and key.isascii()
            and key not in self._pending
            and key not in self._floors
            and key not in self._invalidated
            and key not in self._flying
            and self.breaker.closed
        ):
            cache = self.cache
            get_hit = self._get_hit if cache is self._hit_cache else self._hit_method(cache)
            ckey = self._prefix + key
            if self._share_reads:  # asyncio: concurrent readers of a key share one call
                entry = await self._reads.read(ckey, self._hit_read, get_hit, ckey)
            else:
                entry = await self._hit_read(get_hit, ckey)
            if entry.__class__ is bytes:
                try:
                    value = self._loads(entry)
                except Exception:  # a garbage payload: the lookup below drops it
                    entry = _UNREAD
                else:
                    next(self._hits)
                    return value
            elif (
                entry.__class__ is Entry
                and entry.kind is _VALUE
                and self._epoch_floor <= entry.version < self._epoch_ceiling
            ):
                try:
                    value = self._loads(entry.payload)
                except Exception:  # a garbage payload: the lookup below drops it
                    pass
                else:
                    next(self._hits)
                    return value
            found = await self._lookup(key, entry)
        else:
            # A key this process just invalidated is most likely a miss: its lease is its
            # lookup. A key another reader here is looking up: wait for that lookup.
            lease_first = key.__class__ is str and (
                self._invalidated.pop(key, None) is not None or key in self._flying)
            found = await self._lookup(key, _UNREAD, lease_first)
        return default if found is None else found.value

    def _hit_method(self, cache: AsyncCache) -> Any:
        """The cache's ``get_hit`` (payloads of current values without an Entry), if any;
        looked up again when ``store.cache`` is replaced (instrumented, wrapped)."""
        # On the class: a wrapper's __getattr__ (near cache, instrumentation) would hand out
        # the inner cache's method and skip the wrapper.
        found = getattr(type(cache), "get_hit", None)
        self._hit_cache, self._get_hit = cache, None if found is None else cache.get_hit  # type: ignore[attr-defined]
        # An instrumented cache traces each reader's call: no sharing there.
        self._share_reads = SHARE_READS and getattr(type(cache), "shares_reads", True)
        return self._get_hit

    def _sharing(self) -> bool:
        """Whether readers of a key share cache calls on ``store.cache`` (see _hit_method)."""
        if self.cache is not self._hit_cache:
            self._hit_method(self.cache)
        return self._share_reads

    async def _hit_read(self, get_hit: Any, ckey: str) -> Any:
        """The hit path's cache call (on asyncio shared among readers, compat.Reads): the
        epoch bounds of when it is made (every reader sharing it began before), its
        outcome counted once; ``_MISSING`` if the cache failed or the breaker opened
        meanwhile. No context manager: this is the hit path."""
        if not self.breaker.closed:
            return _MISSING
        try:
            if get_hit is not None:  # the payload of a current value, else the entry
                entry = await get_hit(ckey, self._epoch_floor, self._epoch_ceiling)
            else:
                entry = await self.cache.get(ckey)
        except CacheDataError:  # garbage under the key: a miss, counted
            self.stats.add("cache_data_errors")
            return None
        except CacheError:  # counted here; the lookup after reads the DB
            self.stats.add("cache_read_failures")
            self.breaker.failure()
            return _MISSING
        self.breaker.success()  # the server answered: failures count in a row
        return entry

    async def get_versioned(self, key: str) -> Versioned | None:
        """The value and the version it was written at, or None."""
        return await self._lookup(key, _UNREAD)

    async def _lookup(self, key: str, entry: Any, lease_first: bool = False) -> Versioned | None:
        """``get`` past its hit path; ``entry`` is what the cache answered there
        (``_MISSING``: it failed), or ``_UNREAD`` when it was not asked yet.
        ``lease_first``: look the key up with its lease (the script answers with the value
        if there is one): one round trip, not a GET and then the lease."""
        ckey = self._cache_key(key)
        # The floor in force now binds this read to the end, even if another thread lifts it.
        floor = self.floors.version(key) if key in self._floors else 0
        if key in self._pending:  # read-your-writes while the cache lags
            self.stats.add("pending_repair_reads")
            return await self._read_source(key)
        if entry is _UNREAD:
            if not self.breaker.allow():
                entry = _MISSING
            elif lease_first and self._versioned:
                return await self._miss(key, ckey, None, looked=False, floor=floor)
            elif SHARE_READS and self._sharing():  # one GET, shared (compat.Reads)
                entry = await self._entry_reads.read(ckey, self._cache_call, self.cache.get, ckey)
            else:
                entry = await self._cache_call(self.cache.get, ckey)
        if entry is not _MISSING and self._current(entry):
            self.stats.add("hits")
            return await self._hit(key, entry, floor)
        self.stats.add("misses")
        if entry is _MISSING:  # the cache is down: the DB answers, nothing is filled
            return await self._read_source(key)
        if not self._versioned:
            return await self._naive_fill(key, ckey)
        return await self._miss(key, ckey, entry, floor=floor)

    async def _miss(
        self, key: str, ckey: str, entry: Entry | None, looked: bool = True, floor: int = 0
    ) -> Versioned | None:
        """No current value in the cache (``entry``: what it held, if it was asked).

        One lookup per key per process: the first reader of a key leads a local flight
        (registered before its lease round trip), later ones wait for it, bounded by
        ``lease_ttl``, without polling. A follower takes the leader's result only if it
        came from a look at the cache or the DB that began after the follower arrived
        (so no write acknowledged before the follower's read is missed); a follower that
        comes once the leader's DB read has begun meets its lease in the cache instead.
        """
        if entry is not None and entry.kind is _LEASE:
            joined = await self._join_local_flight(key, entry.payload, floor)
            if joined is not _MISSING:
                return joined  # type: ignore[no-any-return]
        found = self.flights.join(key)
        if found is None:
            return await self._leased_fill(key, ckey, self.flights.start(key), looked, floor)
        flight, seen = found
        result = await self.flights.wait(flight, self.settings.lease_ttl)
        if result is not None and result[0] > seen:
            self.stats.add("flight_joins")
            if not looked:
                self.stats.add("misses")
            if result[1] < max(floor, self.floors.version(key)):
                return await self._read_source(key)
            return result[2]  # type: ignore[no-any-return]
        return await self._leased_fill(key, ckey, None, looked, floor)  # alone: no flight again

    def _current(self, entry: Entry | None) -> bool:
        """A value of the database epoch this process knows (older ones are misses)."""
        return (
            entry is not None
            and entry.kind is _VALUE
            and self._epoch_floor <= entry.version < self._epoch_ceiling
        )

    async def _hit(self, key: str, entry: Entry, floor: int = 0) -> Versioned | None:
        """A value from the cache, unless this process already read a newer one from the DB
        (its read floor, see ``floors``; ``floor``: the one in force when the read began):
        then read the DB again."""
        if entry.version < floor or (key in self._floors and self.floors.below(key, entry.version)):
            self.stats.add("below_floor")
            return await self._read_source(key)
        try:
            return Versioned(self._loads(entry.payload), entry.version)
        except Exception:  # whatever the serializer raises on bytes it did not write
            # Not a value this store could have written (planted, corrupted): drop it, as an
            # eviction would (always safe), and read the key from the database.
            self.stats.add("cache_data_errors")
            await self._cache_call(self.cache.delete, self._prefix + key)
            return await self._read_source(key)

    async def _join_local_flight(self, key: str, token: bytes, floor: int = 0) -> Any:
        """If this process holds the lease, await its load (one DB load per key per process).

        Safe: the lease is still in the cache, so no write was acknowledged since
        it was taken, and the holder reads the DB after taking it.
        """
        joined, row = await self.flights.follow(token, self.settings.lease_ttl)
        if not joined:
            return _MISSING
        self.stats.add("flight_joins")
        if row.version < max(floor, self.floors.version(key)):
            return await self._read_source(key)
        return self._versioned_row(row)

    async def _leased_fill(
        self, key: str, ckey: str, flight: KeyFlight | None = None, looked: bool = True, floor: int = 0
    ) -> Versioned | None:
        """Take the key's lease, load the row and fill it (or meet the value, or wait for
        another holder's fill); delivers the result to ``flight``'s followers. ``floor``:
        the read floor in force when the read began."""
        token = os.urandom(8)
        # Registered before the round trip: a local reader that meets this lease in the
        # cache waits for this load instead of polling.
        self.flights.lead(token)
        result: tuple[int, int, Versioned | None] | None = None
        try:
            result = await self._lease_and_load(key, ckey, token, flight, looked, floor)
        finally:
            self.flights.fail(token)  # nothing if the load finished it
            if flight is not None:
                self.flights.end(flight, result)
        assert result is not None
        return result[2]

    async def _lease_and_load(
        self, key: str, ckey: str, token: bytes, flight: KeyFlight | None, looked: bool, floor: int = 0
    ) -> tuple[int, int, Versioned | None]:
        """(number of the look it came from, its version, the result)."""
        seen = self._observe(flight)
        leased = await self._cache_call(
            self.cache.lease, ckey, token, lease_ttl=self.settings.lease_ttl, floor=self._epoch_floor
        )
        if leased is not _MISSING:
            outcome, found = leased
            if outcome is LeaseOutcome.HIT and self._current(found):
                self.stats.add("late_hits" if looked else "hits")
                hit = await self._hit(key, found, floor)
                return seen, found.version if hit is None else hit.version, hit
        if not looked:
            self.stats.add("misses")
        if leased is _MISSING:
            return await self._from_source(key, flight)
        if outcome is LeaseOutcome.BUSY:
            if found is not None:
                joined = await self._join_local_flight(key, found.payload, floor)
                if joined is not _MISSING:
                    return seen, 0 if joined is None else joined.version, joined
            waited = await self._wait_for_fill(key, ckey, flight, floor)
            if waited is not None:
                return waited
            return await self._from_source(key, flight)
        if outcome is not LeaseOutcome.GRANTED:  # a value of a newer epoch: read the DB
            return await self._from_source(key, flight)
        seen = self._observe(flight, last=True)
        row, stored = await self._load_and_fill(key, ckey, token)
        self.flights.finish(token, row)
        self.stats.add("fills" if stored else "fills_dropped")
        return seen, row.version, self._versioned_row(row)

    def _observe(self, flight: KeyFlight | None, last: bool = False) -> int:
        return 0 if flight is None else self.flights.observe(flight, last)

    async def _from_source(self, key: str, flight: KeyFlight | None) -> tuple[int, int, Versioned | None]:
        seen = self._observe(flight, last=True)
        self.stats.add("read_through")
        row = await self._read_source_row(key)
        return seen, row.version, self._versioned_row(row)

    async def _load_and_fill(self, key: str, ckey: str, token: bytes) -> tuple[Row, bool]:
        """Holding the lease ``token``: read the row (renewing the lease while the DB is
        slow) and fill it. Returns the row and whether the fill landed."""
        now = self.clock()
        self._held[token] = (ckey, now, now)
        try:
            row = await self._read_source_row(key)
        finally:
            self._held.pop(token, None)
        filled = Entry.tombstone(row.version) if row.payload is None else Entry.value(row.version, row.payload)
        stored = await self._cache_call(
            self.cache.fill, ckey, token, filled, ttl=self._ttl_for(filled), floor=self._epoch_floor
        )
        return row, stored is True

    async def _wait_for_fill(
        self, key: str, ckey: str, flight: KeyFlight | None = None, floor: int = 0
    ) -> tuple[int, int, Versioned | None] | None:
        """Another process holds the lease: poll briefly for its fill."""
        self.stats.add("lease_waits")
        deadline = self.clock() + self.settings.lease_wait
        pause = 0.001
        while self.clock() < deadline:
            await self.sleep(min(pause, max(0.0, deadline - self.clock())))
            pause = min(pause * 2, 0.016)
            seen = self._observe(flight)
            entry = await self._cache_call(self.cache.get, ckey)
            if entry is _MISSING:
                return None
            if self._current(entry):
                self.stats.add("late_hits")
                hit = await self._hit(key, entry, floor)
                return seen, entry.version if hit is None else hit.version, hit
            if entry is None or entry.kind is not _LEASE:
                return None  # the lease ended without a value: read the DB
        return None

    async def _naive_fill(self, key: str, ckey: str) -> Versioned | None:
        row = await self._read_source_row(key)
        if row.payload is not None:
            entry = Entry.value(row.version, row.payload)
            await self._cache_call(self.cache.set, ckey, entry, ttl=self._ttl_for(entry))
        return self._versioned_row(row)

    async def _read_source(self, key: str) -> Versioned | None:
        self.stats.add("read_through")
        return self._versioned_row(await self._read_source_row(key))

    async def _read_source_row(self, key: str) -> Row:
        row = await self.source.read(key)
        await self._took_row(key, row)
        return row

    async def _took_row(self, key: str, row: Row) -> None:
        """A row read from the database: counted, its epoch learnt, the read floor raised."""
        self.stats.add("source_reads")
        self._learn_epoch(row.version)
        if self._versioned:
            for old_key, version in self.floors.raise_to(key, row.version):
                await self._push_floor(old_key, version)

    async def _push_floor(self, key: str, version: int) -> None:
        """A floor leaving memory becomes a tombstone in the cache (see ``floors``); with
        the circuit open (the cache is down) it is dropped, not paid for with a timeout."""
        outcome = None
        if self.breaker.closed:
            outcome = await self._conditional_write(self._prefix + key, Kind.TOMBSTONE, version, b"")
        self.stats.add("floors_pushed" if outcome is not None else "floors_dropped")

    def _versioned_row(self, row: Row) -> Versioned | None:
        if row.payload is None:
            return None
        try:
            return Versioned(self._loads(row.payload), row.version)
        except Exception as exc:  # the row holds bytes this serializer cannot read
            raise SourceDataError(
                f"the database row has a value the {self.serializer.name} serializer cannot "
                f"read: {type(exc).__name__}"
            ) from exc

    # -- writes ------------------------------------------------------------------

    async def put(self, key: str, value: Any) -> WriteResult:
        """Write ``value`` to the database, then keep the cache current.

        Raises InvalidKeyError / InvalidValueError before anything is written, and
        SourceError when the database write fails (the cache is then untouched; if
        the failure was ambiguous -- a lost reply -- a repair re-reads the key's
        version and invalidates it at that). Once started, the write and its cache
        update run to the end even if the caller is cancelled.
        """
        ckey = self._cache_key(key)
        payload = self._dumps(value)
        return await shielded(self._write(key, ckey, self._write_kind, payload))

    async def delete(self, key: str) -> WriteResult:
        """Delete ``key`` in the database (the delete gets its own version), then the cache."""
        ckey = self._cache_key(key)
        return await shielded(self._write(key, ckey, Kind.TOMBSTONE, None))

    async def apply_write(self, key: str, version: int, value: Any) -> WriteResult:
        """The application committed ``value`` as ``version`` of ``key`` itself: update the cache.

        For writes the library did not make (an ORM session, a raw SQL transaction): call
        it right after the COMMIT, with the version the database gave the committed row
        (``RETURNING version``, the ORM's fetched version counter) -- never one the
        application made up. Runs the same cache step as :meth:`put`: conditional
        versioned write, failure ladder, repair record, read-your-writes. The version
        is put in the database epoch this store last saw (``epochs``).
        """
        ckey = self._cache_key(key)
        row_version = check_version(version)
        payload = self._dumps(value)
        return await shielded(self._apply(key, ckey, self._write_kind, row_version, payload))

    async def apply_delete(self, key: str, version: int) -> WriteResult:
        """The application deleted ``key`` itself; ``version`` is the delete's (see :meth:`apply_write`)."""
        ckey = self._cache_key(key)
        row_version = check_version(version)
        return await shielded(self._apply(key, ckey, Kind.TOMBSTONE, row_version, b""))

    async def _apply(self, key: str, ckey: str, kind: Kind, row_version: int, payload: bytes) -> WriteResult:
        """The cache step of a write the application committed: its row version in the
        epoch this store knows. If the cache holds a newer version, that may be an entry of
        an epoch this store has not seen yet (a bump a moment ago): it asks the database,
        and if the epoch moved on, writes again in the new one."""
        floor = self._epoch_floor
        result, raw = await self._cache_step_raw(key, ckey, kind, floor + row_version, payload)
        if raw is WriteOutcome.SUPERSEDED or raw is WriteOutcome.KEPT:
            await self._check_epoch()
            if self._epoch_floor > floor:
                result, raw = await self._cache_step_raw(
                    key, ckey, kind, self._epoch_floor + row_version, payload)
        return result

    async def _check_went_back(self, key: str, ckey: str, version: int) -> None:
        """A write was superseded. If the cache holds a *value* newer than the row the
        database holds now, the database went back in time (a restore nobody announced):
        bump its epoch, so every version from now on orders after the lost ones."""
        bump = getattr(self.source, "bump_epoch", None)
        entry = await self._cache_call(self.cache.get, ckey)
        if bump is None or entry is _MISSING or entry is None or entry.kind is not _VALUE:
            return
        if entry.version <= version:
            return
        row = await self.source.read(key)
        self._learn_epoch(row.version)
        if row.payload is None or row.version >= entry.version:
            return
        self.stats.add("epoch_bumps_on_evidence")
        epoch = await bump(f"the cache held v{entry.version} of {key!r}, the database v{row.version}",
                           everything=True)
        self._learn_epoch(epoch * EPOCH_SPAN)

    async def _cache_step(
        self, key: str, ckey: str, kind: Kind, version: int, payload: bytes, outbox_ids: tuple[int, ...] = ()
    ) -> WriteResult:
        return (await self._cache_step_raw(key, ckey, kind, version, payload, outbox_ids))[0]

    async def _cache_step_raw(
        self, key: str, ckey: str, kind: Kind, version: int, payload: bytes, outbox_ids: tuple[int, ...] = ()
    ) -> tuple[WriteResult, WriteOutcome | None]:
        """The cache step, and what the conditional write found (None: no answer)."""
        data = payload if kind is _VALUE else b""
        if not self._versioned:
            return WriteResult(key, version, await self._naive_write(ckey, kind, version, data)), None
        outcome, raw = await self._ladder(key, ckey, kind, version, data, outbox_ids)
        if outcome is CacheOutcome.INVALIDATED:  # the next get asks for the lease at once
            if len(self._invalidated) >= FLOOR_KEYS:
                self._invalidated.clear()  # a hint only
            self._invalidated[key] = True
        return WriteResult(key, version, outcome), raw

    async def _write(self, key: str, ckey: str, kind: Kind, payload: bytes | None) -> WriteResult:
        outbox_ids: tuple[int, ...] = ()
        try:
            if self._outbox is not None:  # the row and its outbox row, in one transaction
                logged = await (
                    self._outbox.delete_logged(key) if payload is None else self._outbox.write_logged(key, payload)
                )
                version, outbox_ids = logged.version, (logged.outbox_id,)
            else:
                version = await (self.source.delete(key) if payload is None else self.source.write(key, payload))
        except _AMBIGUOUS:
            # The statement may have committed and only its reply been lost: until a
            # repair has read the key's version back and invalidated it, this process
            # reads the key from the DB, and others are bounded by the repair.
            if self._versioned:
                self._record(Repair(key, 0, self.clock(), verify=True))
            raise
        self.stats.add("source_writes")
        self._learn_epoch(version)
        result, raw = await self._cache_step_raw(key, ckey, kind, version, payload or b"", outbox_ids)
        if raw is WriteOutcome.SUPERSEDED or raw is WriteOutcome.KEPT:
            floor = self._epoch_floor
            await self._check_went_back(key, ckey, version)
            if self._epoch_floor > floor:  # bumped: this write now orders after the lost ones
                version = self._epoch_floor + version % EPOCH_SPAN
                result, raw = await self._cache_step_raw(key, ckey, kind, version, payload or b"")
        if self._worker is None and self._outbox is not None and len(self._outbox_done) >= OUTBOX_BATCH:
            await self._clear_outbox(self._outbox)  # no worker clears them: keep them bounded
        return result

    async def _naive_write(self, ckey: str, kind: Kind, version: int, payload: bytes) -> CacheOutcome:
        try:
            if kind is _VALUE:
                await self.cache.set(ckey, Entry.value(version, payload), ttl=self._jittered(self.settings.ttl))
                outcome = CacheOutcome.UPDATED
            else:
                await self.cache.delete(ckey)
                outcome = CacheOutcome.INVALIDATED
        except CacheError:
            self.stats.add("cache_write_failures")
            return CacheOutcome.FAILED
        self.stats.add("cache_writes")
        return outcome

    async def _ladder(
        self, key: str, ckey: str, kind: Kind, version: int, payload: bytes, outbox_ids: tuple[int, ...] = ()
    ) -> tuple[CacheOutcome, WriteOutcome | None]:
        """conditional set -> retries with backoff -> tombstone -> repair record, in budget.
        Returns the outcome and what the conditional write found (None: no answer)."""
        deadline = self.clock() + self.settings.write_budget
        attempt = 0
        token = os.urandom(8) if kind is _VALUE and self._cold_lease else None
        while self.breaker.allow():
            outcome = await self._conditional_write(ckey, kind, version, payload, token)
            if outcome is WriteOutcome.LEASED and token is not None:
                return await self._cold_fill(key, ckey, token, version, outbox_ids), outcome
            if outcome is not None:
                self._settled(key, version, outbox_ids)
                return public_outcome(outcome, kind), outcome
            attempt += 1
            if attempt > self.settings.retry.retries:
                if kind is not _VALUE:
                    break
                kind, payload, token = Kind.TOMBSTONE, b"", None  # a smaller write, as safe
            pause = self.settings.retry.backoff(attempt)
            if self.clock() + pause >= deadline:
                break
            await self.sleep(pause)
        self._record(Repair(key, version, self.clock(), outbox_ids))
        return CacheOutcome.PENDING_REPAIR, None

    async def _cold_fill(
        self, key: str, ckey: str, token: bytes, version: int, outbox_ids: tuple[int, ...]
    ) -> CacheOutcome:
        """The key was empty and the write took its lease: read the row back and fill it,
        so the next read is a hit (one more DB read and cache write, cold keys only)."""
        self.stats.add("cold_writes")
        try:
            row, stored = await self._load_and_fill(key, ckey, token)
        except SourceError:
            # The lease expires within lease_ttl and leaves the key empty: readers fill.
            stored, row = False, Row(version, None)
        if stored:
            self._settled(key, row.version, outbox_ids)
            if row.payload is not None:
                return CacheOutcome.UPDATED
        elif outbox_ids and self._outbox is not None:
            self._outbox_done.extend(outbox_ids)  # a newer write took the key: it settles it
        # A newer write took the key, or the row is gone: readers go to the database.
        return CacheOutcome.INVALIDATED

    async def _conditional_write(
        self, ckey: str, kind: Kind, version: int, payload: bytes, token: bytes | None = None
    ) -> WriteOutcome | None:
        try:
            outcome = await self.cache.write(
                ckey,
                kind,
                version,
                payload,
                ttl=self._jittered(self.settings.ttl),
                tombstone_ttl=self.settings.tombstone_ttl,
                token=token,
                lease_ttl=self.settings.lease_ttl,
                floor=self._epoch_floor,
            )
        except CacheError:
            self.stats.add("cache_write_failures")
            self.breaker.failure()
            return None
        except BaseException:  # cancelled mid-call: no verdict, free the probe
            self.breaker.release()
            raise
        self.breaker.success()
        self.stats.add("cache_writes")
        if outcome in (WriteOutcome.SUPERSEDED, WriteOutcome.KEPT):
            self.stats.add("stale_rejected")
        return outcome

    def _record(self, repair: Repair) -> None:
        self.repairs.record(repair)
        self.stats.add("repairs_recorded")

    def _settled(self, key: str, version: int, outbox_ids: tuple[int, ...]) -> None:
        """The cache holds ``version`` of ``key`` or newer: drop older repairs, clear outbox rows."""
        dropped = self.repairs.settled(key, version)
        if self._outbox is not None:
            self._outbox_done.extend(outbox_ids)
            if dropped is not None:
                self._outbox_done.extend(dropped.outbox_ids)

    async def repair_once(self) -> int:
        """Apply recorded repairs while the cache answers; with the outbox, also clear
        settled outbox rows and repair what dead writers left. Returns repairs applied."""
        applied = 0
        unsure_until = self.clock() - self._verify_after
        for repair in self.repairs.snapshot():
            if repair.verify and repair.recorded_at > unsure_until:
                continue  # its statement may still be running on the server: wait it out
            if not self.breaker.allow():
                break
            version = repair.version
            if repair.verify:  # a lost reply: what did the database commit?
                try:
                    version = (await self.source.read(repair.key)).version
                except SourceError:
                    self.breaker.release()
                    break
            ckey = self._prefix + repair.key
            if await self._conditional_write(ckey, Kind.TOMBSTONE, version, b"") is None:
                break
            if repair.verify:
                self.repairs.done(repair)
            self._settled(repair.key, version, repair.outbox_ids)
            self.stats.add("repairs_applied")
            applied += 1
        if self._outbox is not None:
            applied += await self._drain_outbox(self._outbox)
        return applied

    async def _drain_outbox(self, outbox: AsyncOutboxSource) -> int:
        """Clear settled rows (batched, off the write path); repair rows older than the grace.

        A row older than ``outbox_grace`` belongs to a writer that died or failed
        between its commit and its cache write (race 4). Its repair is a tombstone
        of its version: always safe, whatever happened since.
        """
        await self._clear_outbox(outbox)
        await self._count_outbox(outbox)
        if not self.breaker.closed:
            return 0  # the ladder's writes and the repairs above probe the cache
        rows = await outbox.outbox_claim(self.settings.outbox_grace, 100, 30.0)
        finished: list[int] = []
        for row in rows:
            ckey = self._prefix + row.key
            if await self._conditional_write(ckey, Kind.TOMBSTONE, row.version, b"") is None:
                break
            finished.append(row.id)
        if finished:
            await outbox.outbox_done(finished)
            self.stats.add("outbox_batches")
            for _ in finished:
                self.stats.add("outbox_repairs")
        return len(finished)

    async def _count_outbox(self, outbox: AsyncOutboxSource) -> None:
        """Every few seconds: how many outbox rows wait for a repair, and since when."""
        now = self.clock()
        count = getattr(outbox, "outbox_backlog", None)
        if count is None or now - self._backlog_at < OUTBOX_BACKLOG_EVERY:
            return
        self._backlog_at = now
        with contextlib.suppress(SourceError):  # the repair round meets the same failure
            self.outbox_backlog = await count(self.settings.outbox_grace)

    async def _clear_outbox(self, outbox: AsyncOutboxSource) -> None:
        done, self._outbox_done = self._outbox_done, []
        if done:
            await outbox.outbox_done(done)
            self.stats.add("outbox_batches")

    # -- background: lease renewal, epoch checks, repairs -------------------------

    async def _tick(self) -> None:
        """The lease worker, every ``lease_ttl / 4`` seconds at most: renew the leases of
        slow loads. Only cache calls: a slow database never stops the renewals."""
        await self._renew_leases()
        self.floors.expire()

    async def _maintain(self) -> None:
        """The repair worker, every ``repair_interval``: the epoch check, then repairs."""
        if self.clock() >= self._next_epoch_check:
            await self._check_epoch()
        await self.repair_once()

    async def _renew_leases(self) -> None:
        """Leases held while the DB is slow are renewed (by their token) before they lapse."""
        now = self.clock()
        every = self.settings.lease_ttl / 3
        for token, (ckey, taken, renewed) in list(self._held.items()):
            if now - renewed < every or now - taken > LEASE_RENEW_FOR:
                continue
            kept = await self._cache_call(
                self.cache.renew, ckey, token, lease_ttl=self.settings.lease_ttl, floor=self._epoch_floor
            )
            if token in self._held:
                self._held[token] = (ckey, taken, now)
            self.stats.add("lease_renewals" if kept is True else "lease_renewals_lost")

    async def _check_epoch(self) -> None:
        """Ask the source for the current database epoch (``epochs``), if it keeps one."""
        self._next_epoch_check = self.clock() + self.settings.epoch_refresh
        current = getattr(self.source, "epoch", None)
        if current is None:
            return
        try:
            epoch = await current()
        except SourceError:
            return
        self._learn_epoch(epoch * EPOCH_SPAN)

    def _learn_epoch(self, version: int) -> None:
        if version >= self._epoch_ceiling:
            epoch = version // EPOCH_SPAN
            self._epoch_floor = epoch * EPOCH_SPAN
            self._epoch_ceiling = self._epoch_floor + MAX_ROW_VERSION + 1
            self.stats.add("epoch_changes")

    # -- helpers -----------------------------------------------------------------

    def _dumps(self, value: Any) -> bytes:
        payload = self.serializer.dumps(value)
        if len(payload) > self.settings.max_value_bytes:
            raise InvalidValueError(
                f"value is {len(payload)} bytes serialized; the limit is "
                f"{self.settings.max_value_bytes} (max_value_bytes)"
            )
        return payload

    def _cache_key(self, key: object) -> str:
        return self._prefix + check_key(key, self._max_key)

    async def _cache_call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the cache; on a CacheError, count it and return _MISSING (a garbage
        entry is a miss: None, and the next write or fill replaces it)."""
        try:
            result = await method(*args, **kwargs)
        except CacheDataError:
            self.stats.add("cache_data_errors")
            self.breaker.success()  # the server answered
            return None
        except CacheError:
            self.stats.add("cache_read_failures")
            self.breaker.failure()
            return _MISSING
        except BaseException:  # cancelled mid-call: no verdict, free the probe
            self.breaker.release()
            raise
        self.breaker.success()
        return result

    def _jittered(self, ttl: float) -> float:
        return ttl * (1.0 - self.settings.ttl_jitter * self._random.random())

    def _ttl_for(self, entry: Entry) -> float:
        if entry.kind is _VALUE:
            return self._jittered(self.settings.ttl)
        return self.settings.tombstone_ttl

    # -- batches (issue 13): the logic lives in ``batch``; thin delegates here ------------

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values under ``keys`` that have one: ``{key: value}`` (absent keys left out).

        One cache round trip for the hits; the misses take their leases together, are
        read from the database in one statement and filled together. Each key is decided
        exactly as :meth:`get` decides it. InvalidKeyError for any bad key, before any I/O.
        """
        from .batch import get_many

        return await get_many(self, keys)

    async def get_many_versioned(self, keys: Iterable[str]) -> dict[str, Versioned]:
        """Like :meth:`get_many`, with the version each value was written at."""
        from .batch import get_many_versioned

        return await get_many_versioned(self, keys)

    async def put_many(self, mapping: Mapping[str, Any]) -> dict[str, WriteResult]:
        """Write every ``key: value`` in one database transaction, then keep the cache
        current in one pipeline; the outcome of each key as :meth:`put` reports it.

        Every key and value is checked first (InvalidKeyError / InvalidValueError: nothing
        written). A SourceError means nothing was committed, or -- a lost reply -- maybe
        everything: then each key is repaired as :meth:`put` repairs one.
        """
        from .batch import put_many

        return await put_many(self, mapping)

    async def delete_many(self, keys: Iterable[str]) -> dict[str, WriteResult]:
        """Delete every key in one database transaction, then the cache in one pipeline."""
        from .batch import delete_many

        return await delete_many(self, keys)
