"""What a benchmark run produces, and the one way ratios are computed. No I/O.

Every row has a baseline and contenders measured side by side in the same process,
in interleaved repetitions (baseline, writethrough, peers, baseline, ...). A
contender's ratio is the **median of its per-repetition ratios** to the baseline
of the same repetition, so a machine that slows down for a while slows both.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Measure:
    """One contender (or the baseline) in one row.

    ``value`` is in ``unit`` (µs/op, ops/s, calls, B, ms). ``note`` says why there
    is no value ("n/a (not implemented)", "n/a (cashews not installed)").
    """

    name: str
    value: float | None = None
    unit: str = ""
    ratio: float | None = None  # median of per-repetition ratios to the baseline
    ratio_range: tuple[float, float] | None = None  # (min, max) of those ratios
    cpu_us: float | None = None  # process CPU per op
    cpu_ratio: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def shown(self) -> str:
        """The value as the report prints it, or the note."""
        if self.value is None:
            return self.note or "n/a"
        return f"{_num(self.value)} {self.unit}".strip()


@dataclass
class Row:
    """One row of the issue's table: a path, its baseline, writethrough and the peers."""

    key: str
    path: str
    baseline: Measure
    contenders: list[Measure]
    goal: str
    met: bool | None = None  # None: no verdict (n/a, or no goal that a figure can meet)
    detail: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # name -> µs per op

    def contender(self, name: str) -> Measure:
        for measure in self.contenders:
            if measure.name == name:
                return measure
        raise KeyError(name)


@dataclass
class Report:
    """A whole run: rows, curves for the plots, and where and when it ran."""

    rows: list[Row]
    meta: dict[str, Any]
    concurrency: dict[str, dict[int, float]] = field(default_factory=dict)  # name -> tasks -> ops/s
    compare: list[dict[str, Any]] = field(default_factory=list)  # compare results, as JSON
    elapsed_s: float = 0.0

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(key)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """A report read back from ``bench.json`` (latency samples are not kept there)."""

        def measure(m: dict[str, Any]) -> Measure:
            if m.get("ratio_range") is not None:
                m = {**m, "ratio_range": tuple(m["ratio_range"])}
            return Measure(**m)

        rows = [
            Row(
                r["key"],
                r["path"],
                measure(r["baseline"]),
                [measure(c) for c in r["contenders"]],
                r["goal"],
                r["met"],
                r["detail"],
            )
            for r in data["rows"]
        ]
        curves = {k: {int(t): v for t, v in c.items()} for k, c in data["concurrency"].items()}
        return cls(rows, data["meta"], curves, data["compare"], data["elapsed_s"])

    def to_json(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            data = asdict(row)
            data.pop("samples")
            rows.append(data)
        return {
            "meta": self.meta,
            "rows": rows,
            "concurrency": {k: {str(t): v for t, v in c.items()} for k, c in self.concurrency.items()},
            "compare": self.compare,
            "elapsed_s": round(self.elapsed_s, 1),
        }


def _num(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def median_ratio(ours: Sequence[float], base: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Median (and range) of the per-repetition ratios ``ours[i] / base[i]``."""
    ratios = [o / b for o, b in zip(ours, base, strict=True) if b > 0]
    if not ratios:
        return float("nan"), (float("nan"), float("nan"))
    return statistics.median(ratios), (min(ratios), max(ratios))


@dataclass
class Timed:
    """Per-repetition wall and CPU nanoseconds per op of one contender."""

    wall_ns: list[float] = field(default_factory=list)
    cpu_ns: list[float] = field(default_factory=list)


def interleave(
    contenders: dict[str, Callable[[], object]],
    n: int,
    rounds: int,
    tick: Callable[[], None] | None = None,
) -> dict[str, Timed]:
    """Run each contender ``n`` times per repetition, contenders interleaved, after one
    untimed warm-up repetition. The order rotates each repetition, so no contender
    always runs right after the same other one."""
    names = list(contenders)
    timed = {name: Timed() for name in names}
    for rep in range(rounds + 1):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            fn = contenders[name]
            wall0, cpu0 = time.perf_counter_ns(), time.process_time_ns()
            for _ in range(n):
                fn()
            wall, cpu = time.perf_counter_ns() - wall0, time.process_time_ns() - cpu0
            if rep:  # repetition 0 warms up
                timed[name].wall_ns.append(wall / n)
                timed[name].cpu_ns.append(cpu / n)
        if tick is not None:
            tick()
    return timed


def sample_latencies(
    contenders: dict[str, Callable[[], object]], n: int
) -> dict[str, list[float]]:
    """``n`` individually timed calls per contender (µs), interleaved call by call."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    clock = time.perf_counter_ns
    for _ in range(n):
        for name, fn in contenders.items():
            t0 = clock()
            fn()
            samples[name].append((clock() - t0) / 1000)
    return samples


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def timed_measures(
    timed: dict[str, Timed], baseline: str, unit: str = "µs/op"
) -> tuple[Measure, list[Measure]]:
    """Measures (µs per op, CPU per op, ratios to ``baseline``) from :func:`interleave`."""
    base = timed[baseline]
    measures = []
    for name, t in timed.items():
        ratio, spread = median_ratio(t.wall_ns, base.wall_ns)
        cpu_ratio, _ = median_ratio(t.cpu_ns, base.cpu_ns)
        measures.append(
            Measure(
                name,
                statistics.median(t.wall_ns) / 1000,
                unit,
                ratio=ratio,
                ratio_range=spread,
                cpu_us=statistics.median(t.cpu_ns) / 1000,
                cpu_ratio=cpu_ratio,
            )
        )
    first = next(m for m in measures if m.name == baseline)
    return first, [m for m in measures if m.name != baseline]
