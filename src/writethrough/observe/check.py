"""The consistency sampler behind ``writethrough check``, in the spirit of Meta's Polaris and
Uber CacheFront's shadow compares: sample keys, compare the cache entry with the database
row, re-check what differs after a grace period, report what stayed wrong.

    >>> checker = Checker(open_source(url, namespace="profiles"), open_cache("redis://..."),
    ...                   "profiles", grace=1.0, sample=1000)
    >>> found = checker.round()
    >>> found.compared, [a.key for a in found.inconsistent]
    (812, [])

Only entries that would be served are compared: a VALUE. A tombstone or a lease sends
readers to the database, so it can be older than the row without anyone seeing it.
A difference seen once may be a write in flight (committed, its cache step not landed yet):
it is re-read after ``grace`` seconds and reported only if it is still there:

- ``stale``: the cache still holds a version older than the row had at the first look, a
  commit at least ``grace`` seconds old that the cache never got;
- ``ahead``: the cache holds a version newer than the database's (the database went back:
  a restore, a failover to a lagging replica);
- ``value``: same version, other bytes (or a value for a deleted row): written behind the
  library's back.

Entries are read through the cache backend's ``get`` and rows through the source's ``read``
only (never raw ``wt:*`` values), so a change of encoding does not break the sampler.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..caches.base import Cache
from ..errors import ConfigError
from ..protocol import Entry, Kind
from ..sources.base import Row, Source

AnomalyKind = Literal["stale", "ahead", "value"]
MAX_REPORTED = 100  # inconsistent keys kept per report (the counts are exact)


def cache_version(row: Row) -> int:
    """The version a cache entry of ``row`` carries: the one place that knows how row
    versions map to cache versions (where a DB epoch will be composed in)."""
    return row.version


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A key whose cache entry stayed wrong for at least the grace period."""

    key: str
    kind: AnomalyKind
    cache_version: int
    db_version: int
    seen_at: float  # wall-clock time of the first look

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "cache_version": self.cache_version,
                "db_version": self.db_version, "seen_at": round(self.seen_at, 3)}


@dataclass
class Round:
    """One pass: keys sampled, entries compared (values), suspects re-checked, anomalies."""

    sampled: int = 0
    compared: int = 0
    suspects: int = 0
    inconsistent: list[Anomaly] = field(default_factory=list)
    started_at: float = 0.0  # wall clock
    seconds: float = 0.0


def nines(compared: int, inconsistent: int) -> float:
    """-log10 of the inconsistent share; for none in n, of the 3/n bound (as the checker)."""
    if compared == 0:
        return 0.0
    if inconsistent == 0:
        return max(0.0, math.log10(compared / 3.0))
    return -math.log10(inconsistent / compared)


@dataclass
class Report:
    """Rounds added up over a window."""

    namespace: str
    grace: float
    window: float | None
    rounds: int = 0
    sampled: int = 0
    compared: int = 0
    suspects: int = 0
    inconsistent: int = 0
    keys: list[Anomaly] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def consistency(self) -> float:
        return 1.0 - self.inconsistent / self.compared if self.compared else 1.0

    @property
    def nines(self) -> float:
        return nines(self.compared, self.inconsistent)

    @property
    def ok(self) -> bool:
        return self.inconsistent == 0

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "grace_s": self.grace, "window_s": self.window,
                "rounds": self.rounds, "sampled": self.sampled, "compared": self.compared,
                "suspects": self.suspects, "inconsistent": self.inconsistent,
                "consistency": self.consistency, "nines": round(self.nines, 3),
                "nines_is_bound": self.inconsistent == 0, "seconds": round(self.seconds, 3),
                "keys": [a.to_json() for a in self.keys], "ok": self.ok}

    @classmethod
    def of(cls, rounds: Iterable[Round], namespace: str, grace: float,
           window: float | None = None) -> Report:
        report = cls(namespace, grace, window)
        for r in rounds:
            report.rounds += 1
            report.sampled += r.sampled
            report.compared += r.compared
            report.suspects += r.suspects
            report.inconsistent += len(r.inconsistent)
            report.seconds += r.seconds
            room = MAX_REPORTED - len(report.keys)
            report.keys.extend(r.inconsistent[:max(0, room)])
        return report


def scan_keys(cache: Cache, namespace: str, count: int = 1000) -> Iterator[str]:
    """The namespace's keys in the cache, once over (SCAN on Redis; a snapshot in memory)."""
    prefix = f"wt:{namespace}:"
    client = getattr(cache, "client", None)
    if client is not None:  # Redis, Redis Cluster: key names only, values via cache.get
        for raw in client.scan_iter(match=prefix + "*", count=count):
            name = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)
            yield name[len(prefix):]
        return
    data = getattr(cache, "_data", None)  # MemoryCache (in-process only)
    if data is None:
        raise ConfigError(f"cannot list the keys of a {cache.name} cache: pass keys to sample")
    for name in list(data):
        if name.startswith(prefix):
            yield name[len(prefix):]


class Checker:
    """Samples keys of one namespace and compares cache entries with their rows.

    ``keys``: where keys come from -- None to SCAN the cache (round after round, resuming
    where the last one stopped, so a large keyspace is covered over time), or any iterable
    of keys (a file, recent writes). ``sample``: keys per round.
    """

    def __init__(self, source: Source, cache: Cache, namespace: str, *, grace: float = 1.0,
                 sample: int = 1000, keys: Iterable[str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not (isinstance(grace, int | float) and 0 <= grace < float("inf")):
            raise ConfigError(f"grace must be a finite number of seconds >= 0, got {grace!r}")
        if not isinstance(sample, int) or sample < 1:
            raise ConfigError(f"sample must be an int >= 1, got {sample!r}")
        self.source, self.cache, self.namespace = source, cache, namespace
        self.grace, self.sample = float(grace), sample
        self.clock, self.sleep = clock, sleep
        self._prefix = f"wt:{namespace}:"
        self._given = iter(keys) if keys is not None else None
        self._scan: Iterator[str] | None = None

    def round(self) -> Round:
        """Sample up to ``sample`` keys, compare, re-check the suspects after ``grace``."""
        found = Round(started_at=time.time())
        start = self.clock()
        suspects: list[tuple[str, Entry, Row, float]] = []
        for key in self._next_keys():
            found.sampled += 1
            entry = self.cache.get(self._prefix + key)
            if entry is None or entry.kind is not Kind.VALUE:
                continue  # nothing would be served from the cache
            row = self.source.read(key)
            found.compared += 1
            if not _same(entry, row):
                suspects.append((key, entry, row, self.clock()))
        found.suspects = len(suspects)
        for key, _, first_row, seen in suspects:
            wait = seen + self.grace - self.clock()
            if wait > 0:
                self.sleep(wait)
            anomaly = self._recheck(key, first_row, time.time() - (self.clock() - seen))
            if anomaly is not None:
                found.inconsistent.append(anomaly)
        found.seconds = self.clock() - start
        return found

    def _recheck(self, key: str, first: Row, seen_at: float) -> Anomaly | None:
        entry = self.cache.get(self._prefix + key)  # the cache first, then the row: a later
        if entry is None or entry.kind is not Kind.VALUE:  # row is never older than a
            return None  # committed version the cache holds
        row = self.source.read(key)
        if entry.version < cache_version(first):
            kind: AnomalyKind | None = "stale"
        elif entry.version > cache_version(row):
            kind = "ahead"
        elif entry.version == cache_version(row) and not _same(entry, row):
            kind = "value"
        else:
            kind = None  # it was a write in flight
        return None if kind is None else Anomaly(key, kind, entry.version, row.version, seen_at)

    def _next_keys(self) -> Iterator[str]:
        if self._given is not None:
            for _, key in zip(range(self.sample), self._given, strict=False):
                yield key
            return
        taken, restarted = 0, self._scan is None
        while taken < self.sample:
            if self._scan is None:
                self._scan = scan_keys(self.cache, self.namespace)
            for key in self._scan:
                yield key
                taken += 1
                if taken >= self.sample:
                    return
            self._scan = None  # the keyspace is done: start over next time
            if restarted:
                return  # smaller than a sample: each key once per round
            restarted = True


def _same(entry: Entry, row: Row) -> bool:
    return row.payload is not None and entry.version == cache_version(row) and (
        entry.payload == row.payload)


class Window:
    """The rounds of the last ``seconds`` (continuous mode)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self._rounds: deque[tuple[float, Round]] = deque()

    def add(self, found: Round) -> None:
        now = self.clock()
        self._rounds.append((now, found))
        while self._rounds and self._rounds[0][0] < now - self.seconds:
            self._rounds.popleft()

    def report(self, namespace: str, grace: float) -> Report:
        return Report.of((r for _, r in self._rounds), namespace, grace, self.seconds)
