"""The store: get / put / delete over a source of truth and a cache.

Policy lives here (strategies, TTLs, leases, the failure ladder); backends only
do I/O; the protocol's decisions are the pure functions of ``protocol``.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .caches.base import Cache
from .errors import CacheError, ConfigError, InvalidKeyError, InvalidValueError
from .protocol import Entry, Kind, LeaseOutcome, OnEmpty, WriteOutcome
from .repair import CircuitBreaker, Repair, RepairLog, RepairWorker, RetryPolicy
from .serializers import JSONSerializer, Serializer
from .sources.base import Row, Source

Strategy = Literal["write-through", "invalidate"]
ProtocolName = Literal["versioned", "naive"]
STRATEGIES: tuple[Strategy, ...] = ("write-through", "invalidate")
PROTOCOLS: tuple[ProtocolName, ...] = ("versioned", "naive")
_MISSING: Any = object()
_VALUE = Kind.VALUE


class CacheOutcome(enum.Enum):
    """What the cache holds after a write, as far as this process knows."""

    UPDATED = "updated"  # the key holds this version (or a newer one): next read is a hit
    INVALIDATED = "invalidated"  # the key sends readers to the DB: next read is a miss
    PENDING_REPAIR = "pending_repair"  # the cache did not answer; a repair is recorded
    FAILED = "failed"  # naive protocol only: the cache write failed and nothing was done


@dataclass(frozen=True, slots=True)
class WriteResult:
    key: str
    version: int
    cache: CacheOutcome


@dataclass(frozen=True, slots=True)
class Versioned:
    """A value with the database version it was read at."""

    value: Any
    version: int


STAT_NAMES = (
    "hits",  # reads served by their first cache lookup
    "misses",  # reads whose first lookup found no value (hits + misses = reads)
    "late_hits",  # misses then served from the cache after all (a fill landed)
    "source_reads",
    "source_writes",
    "cache_writes",
    "cache_write_failures",
    "cache_read_failures",
    "stale_rejected",  # conditional writes that found the same or a newer version
    "fills",
    "fills_dropped",  # fills refused because their lease was gone (a write or loss came first)
    "lease_waits",
    "read_through",  # DB reads that did not fill the cache (cache down, lease busy, pending repair)
    "pending_repair_reads",
    "repairs_recorded",
    "repairs_applied",
)

class Stats:
    """Counters since the store was opened: ``stats.hits``, ``stats.snapshot()``.

    Each counter is an ``itertools.count``: ``next()`` on it is atomic in CPython,
    so counting takes no lock and loses no increment under threads.
    """

    def __init__(self) -> None:
        self.counters = {name: itertools.count() for name in STAT_NAMES}

    def add(self, name: str) -> None:
        next(self.counters[name])

    def snapshot(self) -> dict[str, int]:
        return {name: _value(counter) for name, counter in self.counters.items()}

    def __getattr__(self, name: str) -> int:
        counters = self.__dict__.get("counters", {})
        if name not in counters:
            raise AttributeError(name)
        return _value(counters[name])


def _value(counter: itertools.count[int]) -> int:
    """The next value a count would return, without taking it: repr is 'count(N)'."""
    return int(repr(counter)[6:-1])


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything tunable, validated once. See ``writethrough.open`` for the meanings."""

    strategy: Strategy = "write-through"
    protocol: ProtocolName = "versioned"
    ttl: float = 300.0
    ttl_jitter: float = 0.1
    tombstone_ttl: float = 30.0
    lease_ttl: float = 2.0
    lease_wait: float = 0.1
    on_empty: OnEmpty = "tombstone"
    write_budget: float = 0.05
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    repair_interval: float = 0.05

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; use one of {STRATEGIES}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; use one of {PROTOCOLS}")
        if self.on_empty not in ("tombstone", "value"):
            raise ConfigError(f"on_empty must be 'tombstone' or 'value', not {self.on_empty!r}")
        for name in ("ttl", "tombstone_ttl", "lease_ttl", "write_budget", "repair_interval"):
            _positive(name, getattr(self, name))
        _positive("lease_wait", self.lease_wait, allow_zero=True)
        if not 0 <= self.ttl_jitter < 1:
            raise ConfigError(f"ttl_jitter must be in [0, 1), got {self.ttl_jitter!r}")
        for name in ("max_key_bytes", "max_value_bytes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive int, got {getattr(self, name)!r}")


def _positive(name: str, value: object, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound} (seconds), got {value!r}")


class Store:
    """A cache kept current on every database write.

        >>> with writethrough.open(source="sqlite:///app.db", cache="memory://") as store:
        ...     r = store.put("user:42", {"name": "Alice"})
        ...     store.get("user:42")
        {'name': 'Alice'}

    Thread-safe: share one store between threads.
    """

    def __init__(
        self,
        source: Source,
        cache: Cache,
        *,
        namespace: str = "default",
        settings: Settings | None = None,
        serializer: Serializer | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        repair_worker: bool = True,
    ) -> None:
        self.source = source
        self.cache = cache
        self.namespace = namespace
        self.settings = settings or Settings()
        self.serializer: Serializer = serializer or JSONSerializer()
        self.clock = clock
        self.sleep = sleep
        self.stats = Stats()
        self.repairs = RepairLog()
        self.breaker = CircuitBreaker(clock=clock)
        self._prefix = f"wt:{namespace}:"
        self._pending = self.repairs.pending  # key -> Repair, read on the hot path
        self._hits = self.stats.counters["hits"]
        self._loads = self.serializer.loads
        self._ascii_key_limit = self.settings.max_key_bytes
        self._random = random.Random()
        self._versioned = self.settings.protocol == "versioned"
        self._worker: RepairWorker | None = None
        if repair_worker and self._versioned:
            self._worker = RepairWorker(self.repair_once, self.settings.repair_interval)
            self._worker.start()
        self._closed = False

    # -- context manager ---------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the repair worker, then close the cache and the source."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._worker.stop()
        try:
            self.cache.close()
        finally:
            self.source.close()

    # -- reads -------------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default`` if there is none."""
        # The hit path, kept short: one cache lookup, one decode.
        if (
            key.__class__ is str
            and 0 < len(key) <= self._ascii_key_limit
            and key.isascii()
            and key not in self._pending
            and self.breaker.closed
        ):
            try:
                entry = self.cache.get(self._prefix + key)
            except CacheError:
                entry = None  # the slow path below counts and handles it
            else:
                if entry is not None and entry.kind is _VALUE:
                    next(self._hits)
                    return self._loads(entry.payload)
        found = self.get_versioned(key)
        return default if found is None else found.value

    def get_versioned(self, key: str) -> Versioned | None:
        """The value and the version it was written at, or None."""
        ckey = self._cache_key(key)
        if key in self._pending:  # read-your-writes while the cache lags
            self.stats.add("pending_repair_reads")
            return self._read_source(key)
        entry = self._cache_call(self.cache.get, ckey) if self.breaker.allow() else _MISSING
        if entry is not _MISSING and entry is not None and entry.kind is Kind.VALUE:
            self.stats.add("hits")
            return Versioned(self.serializer.loads(entry.payload), entry.version)
        self.stats.add("misses")
        if entry is _MISSING:  # the cache is down: the DB answers, nothing is filled
            return self._read_source(key)
        if not self._versioned:
            return self._naive_fill(key, ckey)
        return self._leased_fill(key, ckey)

    def _leased_fill(self, key: str, ckey: str) -> Versioned | None:
        token = os.urandom(8)
        leased = self._cache_call(self.cache.lease, ckey, token, lease_ttl=self.settings.lease_ttl)
        if leased is _MISSING:
            return self._read_source(key)
        outcome, found = leased
        if outcome is LeaseOutcome.HIT and found is not None:
            self.stats.add("late_hits")
            return Versioned(self.serializer.loads(found.payload), found.version)
        if outcome is LeaseOutcome.BUSY:
            waited = self._wait_for_fill(ckey)
            if waited is not None:
                return waited
            return self._read_source(key)
        row = self._read_source_row(key)
        filled = (
            Entry.tombstone(row.version) if row.payload is None else Entry.value(row.version, row.payload)
        )
        stored = self._cache_call(self.cache.fill, ckey, token, filled, ttl=self._ttl_for(filled))
        self.stats.add("fills" if stored is True else "fills_dropped")
        return self._versioned_row(row)

    def _wait_for_fill(self, ckey: str) -> Versioned | None:
        """Another reader holds the lease: poll briefly for its fill."""
        self.stats.add("lease_waits")
        deadline = self.clock() + self.settings.lease_wait
        pause = 0.001
        while self.clock() < deadline:
            self.sleep(min(pause, max(0.0, deadline - self.clock())))
            pause = min(pause * 2, 0.016)
            entry = self._cache_call(self.cache.get, ckey)
            if entry is _MISSING:
                return None
            if entry is not None and entry.kind is Kind.VALUE:
                self.stats.add("late_hits")
                return Versioned(self.serializer.loads(entry.payload), entry.version)
            if entry is None or entry.kind is Kind.TOMBSTONE:
                return None  # the lease ended without a value: read the DB
        return None

    def _naive_fill(self, key: str, ckey: str) -> Versioned | None:
        row = self._read_source_row(key)
        if row.payload is not None:
            entry = Entry.value(row.version, row.payload)
            self._cache_call(self.cache.set, ckey, entry, ttl=self._ttl_for(entry))
        return self._versioned_row(row)

    def _read_source(self, key: str) -> Versioned | None:
        self.stats.add("read_through")
        return self._versioned_row(self._read_source_row(key))

    def _read_source_row(self, key: str) -> Row:
        row = self.source.read(key)
        self.stats.add("source_reads")
        return row

    def _versioned_row(self, row: Row) -> Versioned | None:
        if row.payload is None:
            return None
        return Versioned(self.serializer.loads(row.payload), row.version)

    # -- writes ------------------------------------------------------------------

    def put(self, key: str, value: Any) -> WriteResult:
        """Write ``value`` to the database, then keep the cache current.

        Raises InvalidKeyError / InvalidValueError before anything is written, and
        SourceError when the database write fails (the cache is then untouched).
        """
        ckey = self._cache_key(key)
        payload = self.serializer.dumps(value)
        if len(payload) > self.settings.max_value_bytes:
            raise InvalidValueError(
                f"value is {len(payload)} bytes serialized; the limit is "
                f"{self.settings.max_value_bytes} (max_value_bytes)"
            )
        version = self.source.write(key, payload)
        self.stats.add("source_writes")
        kind = Kind.VALUE if self.settings.strategy == "write-through" else Kind.TOMBSTONE
        return WriteResult(key, version, self._after_commit(key, ckey, kind, version, payload))

    def delete(self, key: str) -> WriteResult:
        """Delete ``key`` in the database (the delete gets its own version), then the cache."""
        ckey = self._cache_key(key)
        version = self.source.delete(key)
        self.stats.add("source_writes")
        return WriteResult(key, version, self._after_commit(key, ckey, Kind.TOMBSTONE, version, b""))

    def _after_commit(self, key: str, ckey: str, kind: Kind, version: int, payload: bytes) -> CacheOutcome:
        if not self._versioned:
            return self._naive_write(ckey, kind, version, payload)
        return self._ladder(key, ckey, kind, version, payload)

    def _naive_write(self, ckey: str, kind: Kind, version: int, payload: bytes) -> CacheOutcome:
        try:
            if kind is Kind.VALUE:
                self.cache.set(ckey, Entry.value(version, payload), ttl=self._jittered(self.settings.ttl))
                outcome = CacheOutcome.UPDATED
            else:
                self.cache.delete(ckey)
                outcome = CacheOutcome.INVALIDATED
        except CacheError:
            self.stats.add("cache_write_failures")
            return CacheOutcome.FAILED
        self.stats.add("cache_writes")
        return outcome

    def _ladder(self, key: str, ckey: str, kind: Kind, version: int, payload: bytes) -> CacheOutcome:
        """conditional set -> retries with backoff -> tombstone -> repair record, in budget."""
        deadline = self.clock() + self.settings.write_budget
        attempt = 0
        while self.breaker.allow():
            outcome = self._conditional_write(ckey, kind, version, payload)
            if outcome is not None:
                self.repairs.settled(key, version)
                return _public_outcome(outcome, kind)
            attempt += 1
            if attempt > self.settings.retry.retries:
                if kind is not Kind.VALUE:
                    break
                kind, payload = Kind.TOMBSTONE, b""  # a smaller write, as safe
            pause = self.settings.retry.backoff(attempt)
            if self.clock() + pause >= deadline:
                break
            self.sleep(pause)
        self.repairs.record(Repair(key, kind, version, payload, self.clock()))
        self.stats.add("repairs_recorded")
        return CacheOutcome.PENDING_REPAIR

    def _conditional_write(self, ckey: str, kind: Kind, version: int, payload: bytes) -> WriteOutcome | None:
        try:
            outcome = self.cache.write(
                ckey,
                kind,
                version,
                payload,
                ttl=self._jittered(self.settings.ttl),
                tombstone_ttl=self.settings.tombstone_ttl,
                on_empty=self.settings.on_empty,
            )
        except CacheError:
            self.stats.add("cache_write_failures")
            self.breaker.failure()
            return None
        self.breaker.success()
        self.stats.add("cache_writes")
        if outcome in (WriteOutcome.SUPERSEDED, WriteOutcome.KEPT):
            self.stats.add("stale_rejected")
        return outcome

    def repair_once(self) -> int:
        """Apply recorded repairs while the cache answers. Returns how many were applied."""
        applied = 0
        for repair in self.repairs.snapshot():
            if not self.breaker.allow():
                break
            ckey = self._prefix + repair.key
            if self._conditional_write(ckey, repair.kind, repair.version, repair.payload) is None:
                break
            self.repairs.settled(repair.key, repair.version)
            self.stats.add("repairs_applied")
            applied += 1
        return applied

    # -- helpers -----------------------------------------------------------------

    def _cache_key(self, key: object) -> str:
        if not isinstance(key, str):
            raise InvalidKeyError(f"key must be a str, not {type(key).__name__}")
        if not key:
            raise InvalidKeyError("key must not be empty")
        if key.isascii():
            size = len(key)
        else:
            try:
                size = len(key.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidKeyError("key is not valid Unicode (lone surrogate)") from None
        if size > self.settings.max_key_bytes:
            raise InvalidKeyError(f"key is {size} UTF-8 bytes; the limit is {self.settings.max_key_bytes}")
        return self._prefix + key

    def _cache_call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the cache; on a CacheError, count it and return _MISSING."""
        try:
            result = method(*args, **kwargs)
        except CacheError:
            self.stats.add("cache_read_failures")
            self.breaker.failure()
            return _MISSING
        self.breaker.success()
        return result

    def _jittered(self, ttl: float) -> float:
        return ttl * (1.0 - self.settings.ttl_jitter * self._random.random())

    def _ttl_for(self, entry: Entry) -> float:
        if entry.kind is Kind.VALUE:
            return self._jittered(self.settings.ttl)
        return self.settings.tombstone_ttl


def _public_outcome(outcome: WriteOutcome, kind: Kind) -> CacheOutcome:
    if outcome is WriteOutcome.STORED_VALUE:
        return CacheOutcome.UPDATED
    if outcome is WriteOutcome.SUPERSEDED and kind is Kind.VALUE:
        return CacheOutcome.UPDATED
    return CacheOutcome.INVALIDATED
