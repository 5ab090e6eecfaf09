"""The store's pure parts: settings, outcomes, counters, key checks. No I/O.

Shared by the sync ``Store`` and the asyncio ``AsyncStore``.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from .checks import check_count, check_seconds
from .errors import ConfigError, InvalidKeyError, InvalidVersionError
from .protocol import Kind, OnEmpty, WriteOutcome
from .repair import RetryPolicy

Strategy = Literal["write-through", "invalidate"]
ProtocolName = Literal["versioned", "naive"]
Durability = Literal["best-effort", "outbox"]
DURABILITIES: tuple[Durability, ...] = ("best-effort", "outbox")
STRATEGIES: tuple[Strategy, ...] = ("write-through", "invalidate")
PROTOCOLS: tuple[ProtocolName, ...] = ("versioned", "naive")


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
    "flight_joins",
    "below_floor",  # hits older than this process's last DB read of the key: read the DB
    "read_through",  # DB reads that did not fill the cache (cache down, lease busy, pending repair)
    "pending_repair_reads",
    "repairs_recorded",
    "repairs_applied",
    "outbox_batches",  # DB statements that cleared outbox rows (off the write path)
    "outbox_repairs",  # outbox rows of dead or failed writers repaired
    "cold_writes",  # write-throughs that found the key empty: writer lease, DB read, fill
    "cache_data_errors",  # entries that could not be decoded (garbage): treated as misses
    "lease_renewals",  # leases extended while a slow DB read ran
    "lease_renewals_lost",  # renewals that found the lease gone (a write replaced it)
    "floors_pushed",  # read floors that left memory as tombstones in the cache
    "floors_dropped",  # read floors forgotten while the cache was down (see floors.py)
    "epoch_changes",  # the database epoch moved on (restore, failover, truncate)
    "epoch_bumps_on_evidence",  # the cache held a value newer than the DB's row: DB went back
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
    on_empty: OnEmpty = "lease"
    write_budget: float = 0.05
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    repair_interval: float = 0.05
    durability: Durability = "best-effort"
    outbox_grace: float = 5.0  # outbox rows younger than this belong to live writers
    breaker_threshold: int = 5  # consecutive cache failures that open the circuit
    breaker_reset: float = 1.0  # seconds the circuit stays open before a probe
    epoch_refresh: float = 1.0  # seconds between checks of the database epoch

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; use one of {STRATEGIES}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; use one of {PROTOCOLS}")
        if self.durability not in DURABILITIES:
            raise ConfigError(f"unknown durability {self.durability!r}; use one of {DURABILITIES}")
        if self.durability == "outbox" and self.protocol != "versioned":
            raise ConfigError("durability='outbox' needs protocol='versioned'")
        if not isinstance(self.retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        _positive("outbox_grace", self.outbox_grace, allow_zero=True)
        _positive("breaker_reset", self.breaker_reset)
        check_count("breaker_threshold", self.breaker_threshold, most=1_000_000)
        if self.on_empty == "value":  # type: ignore[comparison-overlap]
            raise ConfigError(
                "on_empty='value' is gone: it reopened race 6; on_empty='lease' (the default) "
                "makes a write to an uncached key a hit safely"
            )
        if self.on_empty not in ("lease", "tombstone"):
            raise ConfigError(f"on_empty must be 'lease' or 'tombstone', not {self.on_empty!r}")
        for name in ("ttl", "tombstone_ttl", "lease_ttl", "write_budget", "repair_interval",
                     "epoch_refresh"):
            _positive(name, getattr(self, name))
        _positive("lease_wait", self.lease_wait, allow_zero=True)
        jitter = self.ttl_jitter
        if not (isinstance(jitter, int | float) and not isinstance(jitter, bool) and 0 <= jitter < 1):
            raise ConfigError(f"ttl_jitter must be a number in [0, 1), got {jitter!r}")
        check_count("max_key_bytes", self.max_key_bytes, most=MAX_KEY_BYTES)
        check_count("max_value_bytes", self.max_value_bytes, most=MAX_VALUE_BYTES)


MAX_KEY_BYTES = 64 << 10
MAX_VALUE_BYTES = 512 << 20  # a Redis string's limit


def _positive(name: str, value: object, allow_zero: bool = False) -> None:
    """A duration: finite, > 0 (or >= 0), at most ten years (a Redis TTL in ms must fit)."""
    check_seconds(name, value, allow_zero=allow_zero)


def check_key(key: object, max_key_bytes: int) -> str:
    """Return ``key`` if it is a usable key, else raise InvalidKeyError."""
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
    if size > max_key_bytes:
        raise InvalidKeyError(f"key is {size} UTF-8 bytes; the limit is {max_key_bytes}")
    return key


MAX_ROW_VERSION = (1 << 63) - 1  # a PostgreSQL bigint; SQLite's INTEGER is the same


def check_version(version: object) -> int:
    """Return ``version`` if it is a row version the database could have given, else raise."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidVersionError(f"version must be an int, not {type(version).__name__}")
    if not 1 <= version <= MAX_ROW_VERSION:
        raise InvalidVersionError(f"version must be in [1, 2**63 - 1], got {version}")
    return version


def public_outcome(outcome: WriteOutcome, kind: Kind) -> CacheOutcome:
    if outcome is WriteOutcome.STORED_VALUE:
        return CacheOutcome.UPDATED
    if outcome is WriteOutcome.SUPERSEDED and kind is Kind.VALUE:
        return CacheOutcome.UPDATED
    return CacheOutcome.INVALIDATED
