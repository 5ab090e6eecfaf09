"""What a listener is told (which table feeds which namespace, how) and what it counts."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields
from typing import Literal

from ..errors import ConfigError
from ..protocol import OnEmpty
from .pg import check_namespace, identifier, table_identifier

Strategy = Literal["write-through", "invalidate"]


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Which table feeds which cache namespace, and how.

        >>> Keyspace("profiles", "profiles", "id", strategy="write-through", ttl=300.0)

    ``strategy``: ``"invalidate"`` stores a tombstone of the change's version;
    ``"write-through"`` stores the row's current value with the row's version (a tombstone
    if the row is gone). ``on_empty``: what a write-through does on a key the cache does
    not hold -- ``"lease"`` (a writer lease, the row read again, then filled: an older
    value cannot land where a newer entry was evicted, race 6) or ``"tombstone"``.
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
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int | float) or not 0 < value < 10**9):
                raise ConfigError(f"{name} must be > 0 seconds (and finite), got {value!r}")
        if not isinstance(self.ttl_jitter, int | float) or not 0 <= self.ttl_jitter < 1:
            raise ConfigError(f"ttl_jitter must be in [0, 1), got {self.ttl_jitter!r}")

    @property
    def tombstone_seconds(self) -> float:
        return min(self.ttl, 30.0) if self.tombstone_ttl is None else self.tombstone_ttl


def check_keyspaces(keyspaces: object) -> dict[str, Keyspace]:
    """A non-empty mapping of each namespace to its Keyspace, one table each."""
    if not isinstance(keyspaces, dict) or not keyspaces:
        raise ConfigError("a listener needs at least one keyspace: {namespace: Keyspace}")
    for name, space in keyspaces.items():
        if not isinstance(space, Keyspace) or name != space.namespace:
            raise ConfigError(f"keyspaces must map each namespace to its Keyspace: {name!r}")
    return dict(keyspaces)


@dataclass(frozen=True, slots=True)
class LagPercentiles:
    """Seconds from a change's commit (logical) or its event (triggers) to its cache write."""

    count: int
    p50: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits to be applied. Triggers capture: change rows, and the oldest one's age.
    Logical capture: changes received and not yet applied (``events``, usually 0: the
    backlog is in the server's WAL), ``wal_behind`` bytes of WAL since the slot's
    confirmed position and ``wal_kept`` bytes the server keeps for the slot."""

    events: int
    oldest_age: float
    wal_behind: int | None = None
    wal_kept: int | None = None


@dataclass(slots=True)
class ListenerStats:
    """Counters. ``applied`` counts changes taken off the log or the changes table."""

    applied: int = 0
    batches: int = 0
    values: int = 0
    tombstones: int = 0
    superseded: int = 0  # the cache already held this version or newer
    rechecked: int = 0  # a writer lease was taken over by a newer write before its fill
    truncates: int = 0  # TRUNCATEs seen (each bumped its namespace's epoch)
    parked: int = 0  # keys whose cache write failed, recorded to retry (none lost)
    unparked: int = 0  # parked keys written since
    skipped: int = 0  # changes that cannot be cached (a key the store could never read)
    went_back: int = 0  # logical: a row version below its key's last delete (see README)
    cache_errors: int = 0
    source_errors: int = 0
    reconnects: int = 0

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class LagWindow:
    """The last ``size`` lags, for percentiles."""

    def __init__(self, size: int = 100_000) -> None:
        self._lags: deque[float] = deque(maxlen=size)

    def add(self, lag: float) -> None:
        self._lags.append(lag)

    def extend(self, lags: list[float]) -> None:
        self._lags.extend(lags)

    def percentiles(self) -> LagPercentiles:
        lags = sorted(self._lags)
        if not lags:
            return LagPercentiles(0, 0.0, 0.0, 0.0)

        def pct(p: float) -> float:
            return lags[min(len(lags) - 1, int(p / 100 * len(lags)))]

        return LagPercentiles(len(lags), pct(50), pct(99), lags[-1])
