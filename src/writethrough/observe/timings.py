"""What an instrumented store measures beyond the counters it keeps itself (``core.Stats``):
latencies, write outcomes, bytes written, writes read back. Pure Python, no dependencies.

    >>> h = Histogram()
    >>> h.observe(0.0004)
    >>> h.snapshot().quantile(0.5)   # linear within the bucket (0.00025, 0.0005]
    0.000375

Histograms have fixed bucket bounds (seconds), as Prometheus histograms do, so a scrape is
a copy of a few integers and any two snapshots subtract into the rate over the interval.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

# 100 µs .. 5 s: a cache hit on the same host is ~50-200 µs, a put with a PostgreSQL commit
# ~1-5 ms, a write budget 50 ms; lease waits and pool waits reach the seconds.
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip
OUTCOME_NAMES: tuple[str, ...] = ("updated", "invalidated", "pending_repair", "failed")


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Counts per bucket (``counts[i]``: observations <= ``bounds[i]``, not cumulative; the
    last one is +Inf), their sum and count."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count), ...]`` ending with ``("+Inf", count)``: Prometheus' form."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out

    def quantile(self, q: float) -> float:
        """Quantile ``q`` estimated as Prometheus' ``histogram_quantile`` does: linear within
        the bucket it falls in (0.0 if empty; the last finite bound if it falls in +Inf)."""
        n = self.count
        if n == 0:
            return 0.0
        rank, total, lower = q * n, 0, 0.0
        for bound, c in zip(self.bounds, self.counts, strict=False):
            if c and total + c >= rank:
                return lower + (bound - lower) * (rank - total) / c
            total += c
            lower = bound
        return self.bounds[-1]

    def __add__(self, other: HistogramSnapshot) -> HistogramSnapshot:
        if other.bounds != self.bounds and other.count == 0:  # nothing there (not scraped)
            return self
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return HistogramSnapshot(self.bounds, counts, self.sum + other.sum)

    def __sub__(self, older: HistogramSnapshot) -> HistogramSnapshot:
        if older.bounds != self.bounds and older.count == 0:  # nothing there (not scraped)
            return self
        counts = tuple(a - b for a, b in zip(self.counts, older.counts, strict=True))
        return HistogramSnapshot(self.bounds, counts, self.sum - older.sum)

    @staticmethod
    def from_cumulative(buckets: list[tuple[float, float]], total: float) -> HistogramSnapshot:
        """From ``[(le, cumulative count), ...]`` as scraped (``le`` may be inf)."""
        buckets = sorted(buckets)
        bounds = tuple(le for le, _ in buckets if le != float("inf"))
        counts, before = [], 0.0
        for _, cum in buckets:
            counts.append(int(cum - before))
            before = cum
        if len(counts) == len(bounds):  # no +Inf bucket given
            counts.append(0)
        return HistogramSnapshot(bounds, tuple(counts), total)


class Histogram:
    """A thread-safe latency histogram with fixed bucket bounds (seconds)."""

    __slots__ = ("_counts", "_lock", "_sum", "bounds")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        i = bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return HistogramSnapshot(self.bounds, tuple(self._counts), self._sum)


class Counts:
    """Named counters that may grow by more than one (bytes), thread-safe."""

    __slots__ = ("_lock", "_values")

    def __init__(self, names: tuple[str, ...] = ()) -> None:
        self._values = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class ReadBacks:
    """Which writes were read back within ``window`` seconds, over the last ``max_keys`` keys
    written: ``tracked`` writes, ``read_back`` of them read within the window.

    The seed's question for choosing a strategy: is a key read right after it is written?
    """

    def __init__(self, window: float = 1.0, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window, self.max_keys, self.clock = window, max_keys, clock
        self.counts = Counts(("tracked", "read_back"))
        self._written: OrderedDict[str, float] = OrderedDict()  # key -> write time, unread
        self._lock = threading.Lock()

    def wrote(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            self._written[key] = now
            self._written.move_to_end(key)
            if len(self._written) > self.max_keys:
                self._written.popitem(last=False)
        self.counts.add("tracked")

    def read(self, key: str) -> None:
        if key not in self._written:  # the common case, lock-free
            return
        with self._lock:
            at = self._written.pop(key, None)
        if at is not None and self.clock() - at <= self.window:
            self.counts.add("read_back")


@dataclass
class Timings:
    """Everything an instrumented store measures: ``ops[op]`` durations of get / put /
    delete (apply_write counts as put, apply_delete as delete), ``cache_step[op]`` the part
    after the DB commit, ``outcomes`` of writes, ``counts`` of bytes written to the source.
    """

    ops: dict[str, Histogram] = field(
        default_factory=lambda: {op: Histogram() for op in ("get", "put", "delete")})
    cache_step: dict[str, Histogram] = field(
        default_factory=lambda: {op: Histogram() for op in ("put", "delete")})
    outcomes: Counts = field(default_factory=lambda: Counts(OUTCOME_NAMES))
    counts: Counts = field(default_factory=lambda: Counts(("source_write_bytes",)))
    read_backs: ReadBacks | None = None

