"""The strategy advisor behind ``writethrough advise``: from a recorded workload or a live
metrics endpoint, per namespace, what each strategy costs and which one fits.

    >>> workloads = from_history(read_ops("ops.jsonl"), window=1.0)
    >>> [advise(w).recommended for w in workloads]
    ['write-through']

The seed's rule, with the figures that decide it: keys read back right after they are
written -> write-through (under invalidate each read-back is a miss and a DB read); keys
written much more than read back, or write latency critical -> invalidate (write-through
would write values nobody reads soon, and a value is a bigger cache write than a tombstone).

Cost model, per day at the observed rates (``puts``: writes of a value; deletes cost the same
under both strategies and are left out):

- extra DB reads: invalidate, one per put read back within the window (its miss);
  write-through, one per put onto a key the cache did not hold (a cold write reads the row
  back under its writer lease, read back later or not), measured by the store's
  ``cold_writes`` counter (in a recording: writes flagged ``"cold": true``); 0 if unknown.
- cache bytes written: write-through, every put's value; invalidate, the values its
  read-backs fill back in.
- added write latency: the cache step after the commit (one conditional write either way);
  measured from a live store's histogram, not in a recording.
"""

from __future__ import annotations

import json
import urllib.request
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .timings import HistogramSnapshot

DAY = 86_400.0
STRATEGY_NAMES = ("write-through", "invalidate")


@dataclass
class Workload:
    """What one namespace did over ``seconds`` (counts, not rates)."""

    namespace: str
    seconds: float
    puts: int = 0
    deletes: int = 0
    reads: int = 0
    read_backs: int = 0  # puts whose key was read within ``window`` s after the put
    window: float = 1.0
    value_bytes: float | None = None  # mean serialized value size
    cold_share: float | None = None  # share of write-through puts that found the key uncached
    cache_step_p50: float | None = None  # seconds, live only
    cache_step_p99: float | None = None
    strategy: str | None = None  # the one in use, if known
    source: str = "history"

    @property
    def read_back_share(self) -> float:
        return self.read_backs / self.puts if self.puts else 0.0

    def per_s(self, n: float) -> float:
        return n / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "source": self.source, "seconds": round(self.seconds, 3),
                "puts": self.puts, "deletes": self.deletes, "reads": self.reads,
                "write_rate_per_s": round(self.per_s(self.puts + self.deletes), 3),
                "read_rate_per_s": round(self.per_s(self.reads), 3),
                "read_back_window_s": self.window, "read_back_share": round(self.read_back_share, 4),
                "value_bytes": self.value_bytes, "cold_share": self.cold_share,
                "cache_step_p50_s": self.cache_step_p50, "cache_step_p99_s": self.cache_step_p99,
                "strategy_in_use": self.strategy}


@dataclass(frozen=True)
class StrategyCost:
    strategy: str
    extra_db_reads_per_day: float
    cache_bytes_per_day: float | None  # None: value size unknown
    added_write_latency_p50: float | None  # seconds; None: not measured

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "extra_db_reads_per_day": round(self.extra_db_reads_per_day),
                "cache_bytes_per_day": None if self.cache_bytes_per_day is None
                else round(self.cache_bytes_per_day),
                "added_write_latency_p50_s": self.added_write_latency_p50}


@dataclass
class Advice:
    workload: Workload
    costs: list[StrategyCost]
    recommended: str
    reason: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"workload": self.workload.to_json(), "costs": [c.to_json() for c in self.costs],
                "recommended": self.recommended, "reason": self.reason, "notes": self.notes}


def advise(w: Workload, *, threshold: float = 0.1, latency_critical: bool = False) -> Advice:
    """Costs of both strategies for ``w`` and the one to use. ``threshold``: the share of
    puts read back within the window from which write-through pays off."""
    puts_day = w.per_s(w.puts) * DAY
    backs_day = puts_day * w.read_back_share
    size = w.value_bytes
    notes = []
    cold = w.cold_share
    if cold is None:
        cold = 0.0
        notes.append("cold-write share unknown (measured only under write-through): write-through's "
                     "extra DB reads assume every written key was cached")
    # A write-through onto an uncached key reads the row back under its writer lease
    # (on_empty="lease"): one DB read per cold put, read back later or not.
    wt = StrategyCost("write-through", puts_day * cold, None if size is None else puts_day * size,
                      w.cache_step_p50)
    inv = StrategyCost("invalidate", backs_day, None if size is None else backs_day * size,
                       w.cache_step_p50)
    if w.cache_step_p50 is not None and w.strategy:
        notes.append(f"cache step measured under {w.strategy}; the other strategy also makes one "
                     "conditional cache write after the commit (a tombstone instead of the value)")
    share = f"{w.read_back_share:.0%} of puts are read back within {w.window:g} s"
    if w.puts == 0:
        return Advice(w, [wt, inv], w.strategy or "write-through",
                      "no puts observed: nothing to choose between", notes)
    if latency_critical:
        return Advice(w, [wt, inv], "invalidate",
                      f"write latency critical -> invalidate: a tombstone is the smallest cache "
                      f"write after the commit ({share}; that costs ~{_n(backs_day)} DB reads/day)",
                      notes)
    if w.read_back_share >= threshold:
        return Advice(w, [wt, inv], "write-through",
                      f"read back right after writes ({share}) -> write-through: invalidate would "
                      f"turn each of those reads into a miss and a DB read, ~{_n(backs_day)} extra "
                      "DB reads/day", notes)
    wasted = "" if size is None else f" and {_bytes(puts_day * size)}/day of values into the cache"
    return Advice(w, [wt, inv], "invalidate",
                  f"written much more than read back ({share}, {w.per_s(w.reads):,.1f} reads/s vs "
                  f"{w.per_s(w.puts):,.1f} puts/s) -> invalidate: write-through would write "
                  f"{_n(puts_day)} values/day{wasted} mostly nobody reads soon; invalidate costs "
                  f"~{_n(backs_day)} DB reads/day", notes)


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


# -- a recorded workload ------------------------------------------------------------------


def read_ops(path: str | Path) -> list[dict[str, Any]]:
    """JSON lines as ``chaos --history`` writes them (``checker.Op``), extra fields allowed:
    ``namespace`` and ``bytes`` (the value's serialized size) if the recorder knew them."""
    ops = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                op = json.loads(line)
                if op["kind"] not in ("write", "delete", "read"):
                    raise ValueError(f"kind {op['kind']!r}")
                float(op["start"]), float(op["end"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{number}: not a recorded op ({exc})") from None
            ops.append(op)
    return ops


def namespace_of(op: Mapping[str, Any]) -> str:
    """The op's namespace, or its key's prefix before the last '/' (chaos: protocol/scenario)."""
    if op.get("namespace"):
        return str(op["namespace"])
    key = str(op["key"])
    return key.rpartition("/")[0] or "default"


def from_history(ops: Iterable[Mapping[str, Any]], window: float = 1.0,
                 value_bytes: float | None = None) -> list[Workload]:
    """One ``Workload`` per namespace of a recorded history (failed ops left out)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for op in ops:
        if op.get("ok", True):
            groups[namespace_of(op)].append(op)
    out = []
    for ns, group in sorted(groups.items()):
        start = min(float(op["start"]) for op in group)
        end = max(float(op["end"]) for op in group)
        w = Workload(ns, end - start, window=window, source="history")
        reads: dict[str, list[float]] = defaultdict(list)
        sizes: list[int] = []
        wt_outcomes: list[str] = []
        for op in group:
            if op["kind"] == "read":
                w.reads += 1
                reads[str(op["key"])].append(float(op["start"]))
            elif op["kind"] == "delete":
                w.deletes += 1
            else:
                w.puts += 1
                if isinstance(op.get("bytes"), int):
                    sizes.append(op["bytes"])
                if op.get("outcome") in ("updated", "invalidated"):
                    wt_outcomes.append(op["outcome"])
        for starts in reads.values():
            starts.sort()
        for op in group:
            if op["kind"] != "write":
                continue
            at, starts = float(op["end"]), reads.get(str(op["key"]), [])
            if bisect_right(starts, at + window) > bisect_left(starts, at):
                w.read_backs += 1
        w.value_bytes = sum(sizes) / len(sizes) if sizes else value_bytes
        if wt_outcomes and "updated" in wt_outcomes:  # only write-through ever says updated
            w.strategy = "write-through"
            flagged = [op for op in group if op["kind"] == "write" and "cold" in op]
            if flagged:  # a recording that says which puts found their key uncached
                w.cold_share = sum(1 for op in flagged if op["cold"]) / len(flagged)
        out.append(w)
    return out


# -- live metrics ----------------------------------------------------------------------------


Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout: float = 10.0) -> Scrape:
    """The samples of a ``/metrics`` endpoint (needs prometheus-client's parser)."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as exc:
        raise ConfigError("reading a metrics endpoint needs prometheus-client; install it with: "
                          "pip install 'writethrough[metrics]'") from exc
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read metrics from {url}: {exc}") from None
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _get(samples: Scrape, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def histogram(samples: Scrape, name: str, **labels: str) -> HistogramSnapshot:
    buckets = []
    for (sample, got), v in samples.items():
        have = dict(got)
        if sample == name + "_bucket" and all(have.get(k) == x for k, x in labels.items()):
            buckets.append((float(have["le"]), v))
    return HistogramSnapshot.from_cumulative(buckets, _get(samples, name + "_sum", **labels))


def namespaces(samples: Scrape) -> list[str]:
    return sorted({dict(labels)["namespace"] for (name, labels) in samples
                   if name == "writethrough_source_writes_total"})


def from_metrics(before: Scrape, after: Scrape, seconds: float) -> list[Workload]:
    """One ``Workload`` per namespace from two scrapes ``seconds`` apart (``before`` may be
    empty: the totals since the process started, over ``seconds``)."""
    out = []
    for ns in namespaces(after):
        def d(name: str, ns: str = ns, **labels: str) -> float:
            return _get(after, name, namespace=ns, **labels) - _get(before, name, namespace=ns, **labels)

        op = "writethrough_operation_duration_seconds_count"
        puts = d(op, op="put") or d("writethrough_source_writes_total")
        w = Workload(ns, seconds, puts=int(puts), deletes=int(d(op, op="delete")),
                     reads=int(d("writethrough_cache_hits_total") + d("writethrough_cache_misses_total")),
                     source="metrics")
        tracked = d("writethrough_puts_tracked_total")
        if tracked:
            w.read_backs = round(w.puts * d("writethrough_puts_read_back_total") / tracked)
        w.window = _get(after, "writethrough_read_back_window_seconds", namespace=ns) or 1.0
        written = d("writethrough_source_writes_total")
        if d("writethrough_source_write_bytes_total") and written:
            w.value_bytes = d("writethrough_source_write_bytes_total") / written
        for (name, labels), v in after.items():
            info = dict(labels)
            if name == "writethrough_store_info" and info.get("namespace") == ns and v:
                w.strategy = info["strategy"]
        if w.strategy == "write-through" and w.puts:
            w.cold_share = d("writethrough_cold_writes_total") / w.puts
        step = histogram(after, "writethrough_cache_step_duration_seconds", namespace=ns, op="put")
        if before:
            step = step - histogram(before, "writethrough_cache_step_duration_seconds",
                                    namespace=ns, op="put")
        if step.count:
            w.cache_step_p50, w.cache_step_p99 = step.quantile(0.5), step.quantile(0.99)
        out.append(w)
    return out

