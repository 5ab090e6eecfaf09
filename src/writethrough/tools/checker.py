"""The consistency checker: replay a recorded history and count what broke the guarantee.

Pure: ``check`` reads a list of ``Op`` and returns a ``Report``; nothing here talks to a
cache or a database. ``Recorder`` times calls and builds the history; ``write_history`` /
``read_history`` keep it as JSON lines.

Versions: a read records the version it returned, 0 for None. A None read carries no
version, so it is read charitably: its *effective* version is the newest delete of the key
that had started before the read ended (0 if none), i.e. the newest absence it may have seen.
A delete that raised (``ok=False``: its reply may have been lost after it committed) has no
known version either: it may explain a None read up to the version just below the first
write of the key that started after it ended (it committed before any of those).
"""

from __future__ import annotations

import json
import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal, Protocol

OpKind = Literal["write", "delete", "read"]
KINDS: tuple[str, ...] = ("write", "delete", "read")
OUTCOMES: tuple[str, ...] = ("updated", "invalidated", "pending_repair", "failed")
ACKED = ("updated", "invalidated")  # the outcomes the guarantee covers
MAX_MESSAGES = 100
Z95 = 1.959963984540054  # two-sided 95% normal quantile, for the Wilson bound


@dataclass(frozen=True, slots=True)
class Op:
    """One recorded operation. ``version``: written, or returned by a read (0 for None).

    ``outcome`` is the write's cache outcome (``"updated"``, ...); ``db_version`` what the DB
    held when a read ended, if the recorder knew; ``ok=False``: the call raised (kept, not
    checked).
    """

    client: str
    key: str
    kind: OpKind
    start: float
    end: float
    version: int
    outcome: str | None = None
    db_version: int | None = None
    ok: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"op kind must be one of {KINDS}, not {self.kind!r}")
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise ValueError(f"write outcome must be one of {OUTCOMES}, not {self.outcome!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Op:
        return cls(**data)


def write_history(path: str | Path, ops: Iterable[Op]) -> None:
    """Write ``ops`` as JSON lines, one op a line."""
    with open(path, "w", encoding="utf-8") as out:
        for op in ops:
            out.write(json.dumps(op.to_json(), separators=(",", ":")) + "\n")


def read_history(path: str | Path) -> list[Op]:
    with open(path, encoding="utf-8") as lines:
        return [Op.from_json(json.loads(line)) for line in lines if line.strip()]


class _Outcome(Protocol):
    @property
    def value(self) -> str: ...


class _Written(Protocol):
    @property
    def version(self) -> int: ...
    @property
    def cache(self) -> _Outcome: ...


class _Read(Protocol):
    @property
    def version(self) -> int: ...


class Recorder:
    """Times calls and records them as ``Op``; thread-safe.

        >>> rec = Recorder()
        >>> written = rec.write("c1", "user:1", lambda: store.put("user:1", {"n": 1}))
        >>> found = rec.read("c2", "user:1", lambda: store.get_versioned("user:1"))
        >>> report = check(rec.ops)

    A call that raises is recorded with ``ok=False`` and the exception propagates.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._ops: list[Op] = []
        self._lock = threading.Lock()

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def record(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def write(self, client: str, key: str, fn: Callable[[], _Written]) -> _Written:
        return self._write(client, key, fn, "write")

    def delete(self, client: str, key: str, fn: Callable[[], _Written]) -> _Written:
        return self._write(client, key, fn, "delete")

    def _write(self, client: str, key: str, fn: Callable[[], _Written], kind: OpKind) -> _Written:
        start = self.clock()
        try:
            result = fn()
        except BaseException:
            self.record(Op(client, key, kind, start, self.clock(), 0, ok=False))
            raise
        end = self.clock()
        self.record(Op(client, key, kind, start, end, result.version, result.cache.value))
        return result

    def read(
        self,
        client: str,
        key: str,
        fn: Callable[[], _Read | None],
        db_version: Callable[[], int | None] | None = None,
    ) -> _Read | None:
        """Record ``fn()``; ``db_version()``, if given, is asked what the DB held afterwards."""
        start = self.clock()
        try:
            found = fn()
        except BaseException:
            self.record(Op(client, key, "read", start, self.clock(), 0, ok=False))
            raise
        end = self.clock()
        held = db_version() if db_version is not None else None
        self.record(Op(client, key, "read", start, end, 0 if found is None else found.version,
                       db_version=held))
        return found


@dataclass
class Report:
    """What ``check`` found. ``violating_reads`` counts reads breaking (a), (b) or overdue (d)."""

    checked_reads: int = 0
    writes: int = 0
    failed_ops: int = 0
    stale_reads_after_ack: int = 0
    max_stale_window_s: float = 0.0
    stale_windows: list[float] = field(default_factory=list)
    monotonic_violations: int = 0
    final_divergence: int = 0
    reads_during_pending_repair: int = 0
    max_pending_lag_s: float = 0.0
    pending_repair_overdue: int = 0
    violating_reads: int = 0
    violations: list[str] = field(default_factory=list)
    dropped_messages: int = 0

    @property
    def ok(self) -> bool:
        return self.violating_reads == 0 and self.final_divergence == 0

    @property
    def upper_bound_rate(self) -> float:
        """95% upper bound on the violation rate: 3/n for zero in n, else Wilson's."""
        n, k = self.checked_reads, self.violating_reads
        if n == 0:
            return 1.0
        if k == 0:
            return min(1.0, 3.0 / n)
        p, z2 = k / n, Z95 * Z95
        centre = p + z2 / (2 * n)
        spread = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        return min(1.0, (centre + spread) / (1 + z2 / n))

    @property
    def nines(self) -> float:
        """-log10 of the rate: the observed one, or for zero in n the 3/n bound (log10(n/3))."""
        n, k = self.checked_reads, self.violating_reads
        if n == 0:
            return 0.0
        return max(0.0, math.log10(n / 3.0)) if k == 0 else -math.log10(k / n)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked_reads": self.checked_reads,
            "writes": self.writes,
            "stale_reads_after_ack": self.stale_reads_after_ack,
            "max_stale_window_s": self.max_stale_window_s,
            "reads_during_pending_repair": self.reads_during_pending_repair,
            "pending_repair_overdue": self.pending_repair_overdue,
            "final_divergence": self.final_divergence,
            "monotonic_violations": self.monotonic_violations,
            "violating_reads": self.violating_reads,
            "nines": round(self.nines, 3),
            "violation_rate_upper_95": self.upper_bound_rate,
        }

    def _note(self, message: str) -> None:
        if len(self.violations) < MAX_MESSAGES:
            self.violations.append(message)
        else:
            self.dropped_messages += 1


# Per key, writes sorted by time with a running max of versions:
# ends[i] is the i-th time, maxes[i + 1] the newest version among the first i + 1, maxes[0] = 0.
_Index = tuple[list[float], list[int]]


def _index(pairs: list[tuple[float, int]]) -> _Index:
    pairs.sort()
    maxes = [0]
    for _, version in pairs:
        maxes.append(max(maxes[-1], version))
    return [t for t, _ in pairs], maxes


_EMPTY: _Index = ([], [0])


def check(
    ops: Iterable[Op],
    *,
    final_cache: Mapping[str, int | None] | None = None,
    final_db: Mapping[str, int] | None = None,
    repair_healed_at: float | None = None,
    repair_interval: float | None = None,
) -> Report:
    """Check a history against the guarantee; see the module docstring for None reads.

    (a) a read starting after a write was acked ``updated``/``invalidated`` returns an older
    version; the stale window runs from the first ack of a version newer than the one read.
    (b) a client's read returns an older version than one of its earlier reads of the key.
    (c) after quiescence, each ``final_cache`` entry is absent (None) or equals ``final_db``.
    (d) reads older than a ``pending_repair`` write that had ended are counted (allowed);
    one starting after ``repair_healed_at + repair_interval`` is a violation.
    """
    report = Report()
    reads: list[Op] = []
    acked: dict[str, list[tuple[float, int]]] = {}
    pending: dict[str, list[tuple[float, int]]] = {}
    deletes: dict[str, list[tuple[float, int]]] = {}
    failed_deletes: list[Op] = []
    known: dict[str, list[tuple[float, int]]] = {}  # key -> (start, version) of writes with one
    for op in ops:
        if not op.ok:
            report.failed_ops += 1
            if op.kind == "delete":
                failed_deletes.append(op)
        elif op.kind == "read":
            reads.append(op)
        else:
            report.writes += 1
            if op.outcome in ACKED:
                acked.setdefault(op.key, []).append((op.end, op.version))
            elif op.outcome == "pending_repair":
                pending.setdefault(op.key, []).append((op.end, op.version))
            if op.kind == "delete":  # any delete may explain a None read, acked or not
                deletes.setdefault(op.key, []).append((op.start, op.version))
            known.setdefault(op.key, []).append((op.start, op.version))
    for op in failed_deletes:  # committed or not, before any write that started after it ended
        later = [v for t, v in known.get(op.key, ()) if t > op.end]
        deletes.setdefault(op.key, []).append((op.start, min(later) - 1 if later else 1 << 127))
    acked_ix = {key: _index(pairs) for key, pairs in acked.items()}
    pending_ix = {key: _index(pairs) for key, pairs in pending.items()}
    deletes_ix = {key: _index(pairs) for key, pairs in deletes.items()}
    overdue_after = (
        repair_healed_at + repair_interval
        if repair_healed_at is not None and repair_interval is not None
        else math.inf
    )
    reads.sort(key=attrgetter("start"))
    floors: dict[tuple[str, str], int] = {}  # newest value version each client has read, by key
    stale_windows = report.stale_windows
    pending_lag = 0.0
    stale = monotonic = in_pending = overdue = bad = 0
    for read in reads:
        key, start, version = read.key, read.start, read.version
        effective = version
        if version == 0 and key in deletes_ix:
            d_starts, d_maxes = deletes_ix[key]
            effective = d_maxes[bisect_left(d_starts, read.end)]
        broken = False
        ends, maxes = acked_ix.get(key, _EMPTY)
        newest = maxes[bisect_left(ends, start)]
        if effective < newest:
            broken = True
            stale += 1
            since = ends[bisect_right(maxes, effective) - 1]
            stale_windows.append(start - since)
            report._note(
                f"stale read after ack: key={key!r} client={read.client!r} read v{version} "
                f"at {start:.6f}; v{newest} acked, first newer ack at {since:.6f} "
                f"({start - since:.6f} s before)"
            )
        else:
            ends, maxes = pending_ix.get(key, _EMPTY)
            owed = maxes[bisect_left(ends, start)]
            if effective < owed:
                in_pending += 1
                since = ends[bisect_right(maxes, effective) - 1]
                pending_lag = max(pending_lag, start - since)
                if start > overdue_after:
                    broken = True
                    overdue += 1
                    report._note(
                        f"pending repair not ended within the repair interval: key={key!r} "
                        f"client={read.client!r} read v{version} at {start:.6f}; v{owed} "
                        f"pending since {since:.6f}, healed at {repair_healed_at}"
                    )
        seen = (read.client, key)
        floor = floors.get(seen, 0)
        if effective < floor:
            broken = True
            monotonic += 1
            report._note(
                f"non-monotonic read: key={key!r} client={read.client!r} read v{version} "
                f"at {start:.6f} after reading v{floor}"
            )
        elif version > floor:  # a None read's version is a guess: it never raises the floor
            floors[seen] = version
        bad += broken
    report.checked_reads = len(reads)
    report.stale_reads_after_ack = stale
    report.max_stale_window_s = max(stale_windows, default=0.0)
    report.monotonic_violations = monotonic
    report.reads_during_pending_repair = in_pending
    report.max_pending_lag_s = pending_lag
    report.pending_repair_overdue = overdue
    report.violating_reads = bad
    if final_cache is not None:
        _check_final(report, final_cache, final_db)
    return report


def _check_final(
    report: Report, final_cache: Mapping[str, int | None], final_db: Mapping[str, int] | None
) -> None:
    if final_db is None:
        raise ValueError("final_cache needs final_db to compare with")
    for key, cached in final_cache.items():
        held = final_db.get(key)
        if cached is not None and cached != held:
            report.final_divergence += 1
            report._note(f"final divergence: key={key!r} cache v{cached}, DB v{held}")
