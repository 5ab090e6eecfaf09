"""Prometheus metrics (``pip install 'writethrough[metrics]'``): a custom collector that reads,
at scrape time, the counters the store and the listener already keep -- nothing is counted
twice, and a process that is never scraped pays nothing.

    >>> from prometheus_client import start_http_server
    >>> from writethrough.observe import instrument
    >>> store = instrument(writethrough.open(...))   # registers it with the default registry
    >>> start_http_server(9464)                       # GET :9464/metrics

Every metric is labelled by ``namespace`` (bounded by configuration; never a key). Several
stores of one namespace in a process are added up. ``METRICS`` lists every name.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .timings import OUTCOME_NAMES, HistogramSnapshot, Timings

try:
    from prometheus_client.core import (
        REGISTRY,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised by test_observe's import check
    raise ConfigError(
        f"metrics need prometheus-client, which is not installed ({exc.name}); "
        "install it with: pip install 'writethrough[metrics]'"
    ) from exc

if TYPE_CHECKING:
    from ..capture.listener import BaseListener as Listener
    from ..store import AsyncStore, Store

# core.Stats counter -> (metric name without _total, help). A counter the store gains later
# shows up as writethrough_<name>_total until it is named here.
STAT_METRICS: dict[str, tuple[str, str]] = {
    "hits": ("writethrough_cache_hits", "Reads served by their first cache lookup."),
    "misses": ("writethrough_cache_misses", "Reads whose first cache lookup found no value."),
    "late_hits": ("writethrough_cache_late_hits",
                  "Misses then served from the cache after all (another reader's fill landed)."),
    "source_reads": ("writethrough_source_reads", "Rows read from the database."),
    "source_writes": ("writethrough_source_writes", "Writes and deletes committed to the database."),
    "cache_writes": ("writethrough_cache_writes",
                     "Cache writes that got an answer (stored, superseded or kept)."),
    "cache_write_failures": ("writethrough_cache_write_failures",
                             "Cache writes that failed (timeout, connection, server error)."),
    "cache_read_failures": ("writethrough_cache_read_failures", "Cache reads that failed."),
    "stale_rejected": ("writethrough_stale_rejected",
                       "Conditional cache writes refused: the cache held the same or a newer version."),
    "fills": ("writethrough_fills", "Misses that filled the cache from the database."),
    "fills_dropped": ("writethrough_fills_dropped",
                      "Fills refused because their lease was gone (a write came first)."),
    "lease_waits": ("writethrough_lease_waits",
                    "Readers that waited for another process's fill of the key."),
    "flight_joins": ("writethrough_single_flight_joins",
                     "Readers that joined this process's own load of the key."),
    "below_floor": ("writethrough_below_floor_reads",
                    "Hits older than this process's last DB read of the key, read again from the DB."),
    "read_through": ("writethrough_read_through",
                     "DB reads that did not fill the cache (cache down, lease busy, pending repair)."),
    "pending_repair_reads": ("writethrough_pending_repair_reads",
                             "Reads of keys with a pending repair, served from the DB."),
    "repairs_recorded": ("writethrough_repairs_recorded",
                         "Cache writes that failed within the budget and were recorded for repair."),
    "repairs_applied": ("writethrough_repairs_applied", "Recorded repairs applied to the cache."),
    "outbox_batches": ("writethrough_outbox_batches", "DB statements that cleared outbox rows."),
    "outbox_repairs": ("writethrough_outbox_repairs",
                       "Outbox rows of dead or failed writers repaired (a tombstone each)."),
    "cold_writes": ("writethrough_cold_writes",
                    "Write-throughs onto uncached keys: a writer lease, one more DB read, a fill."),
    "cache_data_errors": ("writethrough_cache_data_errors",
                          "Cache entries that could not be decoded (garbage), treated as misses."),
    "lease_renewals": ("writethrough_lease_renewals", "Leases extended while a slow DB read ran."),
    "lease_renewals_lost": ("writethrough_lease_renewals_lost",
                            "Lease renewals that found the lease gone (a write replaced it)."),
    "floors_pushed": ("writethrough_read_floors_pushed",
                      "Read floors that left memory as tombstones in the cache."),
    "floors_dropped": ("writethrough_read_floors_dropped",
                       "Read floors forgotten while the cache was down (monotonic reads at risk)."),
    "epoch_changes": ("writethrough_epoch_changes",
                      "Database epoch changes seen (a restore, a failover, a truncated table)."),
    "epoch_bumps_on_evidence": ("writethrough_epoch_bumps_on_evidence",
                                "Epochs bumped because the cache held a value newer than the "
                                "database's row (the database went back)."),
}
LISTENER_METRICS: dict[str, tuple[str, str]] = {
    "applied": ("writethrough_listener_events_applied", "Change events applied and deleted."),
    "batches": ("writethrough_listener_batches", "Batches of events applied."),
    "values": ("writethrough_listener_cache_values", "Values stored in the cache."),
    "tombstones": ("writethrough_listener_cache_tombstones", "Tombstones stored in the cache."),
    "superseded": ("writethrough_listener_superseded",
                   "Events whose version the cache already held (or newer)."),
    "rechecked": ("writethrough_listener_rechecked",
                  "Values written again because their row moved on meanwhile."),
    "cache_errors": ("writethrough_listener_cache_errors", "Batches that failed on the cache."),
    "source_errors": ("writethrough_listener_source_errors", "Batches that failed on the database."),
    "reconnects": ("writethrough_listener_reconnects", "Database reconnects."),
    "truncates": ("writethrough_listener_truncates",
                  "TRUNCATEs seen (each bumped its namespace's epoch and flushed it)."),
    "flushed": ("writethrough_listener_flushed",
                "Cache entries removed after an epoch bump (TRUNCATE, re-created table)."),
}
BREAKER_STATES = ("closed", "open", "half_open")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


def _metric_list() -> list[MetricInfo]:
    ns = ("namespace",)
    out = [MetricInfo(n + "_total", "counter", ns, h) for n, h in STAT_METRICS.values()]
    out += [
        MetricInfo("writethrough_writes_total", "counter", ("namespace", "outcome"),
                   "Writes by cache outcome: updated, invalidated, pending_repair, failed (naive)."),
        MetricInfo("writethrough_operation_duration_seconds", "histogram", ("namespace", "op"),
                   "Duration of get, put (and apply_write) and delete (and apply_delete)."),
        MetricInfo("writethrough_cache_step_duration_seconds", "histogram", ("namespace", "op"),
                   "The cache part of a put or delete: from the DB commit to the call's return."),
        MetricInfo("writethrough_source_write_bytes_total", "counter", ns,
                   "Bytes of values written to the database (serialized)."),
        MetricInfo("writethrough_puts_tracked_total", "counter", ns,
                   "Puts followed for read-backs."),
        MetricInfo("writethrough_puts_read_back_total", "counter", ns,
                   "Puts whose key this process read within the read-back window."),
        MetricInfo("writethrough_read_back_window_seconds", "gauge", ns,
                   "The read-back window of writethrough_puts_read_back_total."),
        MetricInfo("writethrough_repair_backlog", "gauge", ns,
                   "Cache repairs recorded and not yet applied."),
        MetricInfo("writethrough_repair_oldest_age_seconds", "gauge", ns,
                   "Age of the oldest pending repair (0 if none)."),
        MetricInfo("writethrough_outbox_backlog", "gauge", ns,
                   "Outbox rows past their grace, waiting for a repair (durability=outbox; counted "
                   "by the repair round every few seconds)."),
        MetricInfo("writethrough_outbox_oldest_age_seconds", "gauge", ns,
                   "Age of the oldest such outbox row (0 if none)."),
        MetricInfo("writethrough_breaker_state", "gauge", ("namespace", "state"),
                   "Stores whose cache circuit breaker is in each state (closed, open, half_open)."),
        MetricInfo("writethrough_breaker_opened_total", "counter", ns,
                   "Times the circuit breaker opened."),
        MetricInfo("writethrough_store_info", "gauge",
                   ("namespace", "strategy", "protocol", "durability"),
                   "Stores open, by settings."),
    ]
    ls = ("namespaces",)
    out += [MetricInfo(n + "_total", "counter", ls, h) for n, h in LISTENER_METRICS.values()]
    out += [
        MetricInfo("writethrough_listener_lag_seconds", "gauge", ("namespaces", "quantile"),
                   "Seconds from a row's change to its cache write, over the last events applied."),
        MetricInfo("writethrough_listener_backlog_events", "gauge", ls,
                   "Changes waiting to be applied (triggers: rows of writethrough_changes)."),
        MetricInfo("writethrough_listener_backlog_oldest_age_seconds", "gauge", ls,
                   "Age of the oldest waiting change event (0 if none)."),
    ]
    return out


METRICS: list[MetricInfo] = _metric_list()


class WritethroughCollector:
    """Reads the stores' and listeners' counters at each scrape (``collector()`` makes one
    per registry). Holds them weakly: a store that is garbage-collected drops out."""

    def __init__(self) -> None:
        self._stores: weakref.WeakKeyDictionary[Any, Timings | None] = weakref.WeakKeyDictionary()
        self._listeners: weakref.WeakSet[Listener] = weakref.WeakSet()
        self._lock = threading.Lock()

    def add_store(self, store: Store | AsyncStore, timings: Timings | None = None) -> None:
        with self._lock:
            self._stores[store] = timings

    def add_listener(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.add(listener)

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration; collect() runs at scrape time only

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            stores = list(self._stores.items())
            listeners = list(self._listeners)
        yield from self._store_metrics(stores)
        yield from self._listener_metrics(listeners)

    # -- stores --------------------------------------------------------------------

    def _store_metrics(self, stores: list[tuple[Any, Timings | None]]) -> Iterator[Metric]:
        stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        outcomes: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(OUTCOME_NAMES, 0))
        durations: dict[tuple[str, str], HistogramSnapshot] = {}
        steps: dict[tuple[str, str], HistogramSnapshot] = {}
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        windows: dict[str, float] = {}
        backlog: dict[str, int] = defaultdict(int)
        oldest: dict[str, float] = defaultdict(float)
        outbox: dict[str, int] = defaultdict(int)
        outbox_age: dict[str, float] = defaultdict(float)
        breaker: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(BREAKER_STATES, 0))
        opened: dict[str, int] = defaultdict(int)
        info: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for store, timings in stores:
            ns = store.namespace
            for name, value in store.stats.snapshot().items():
                stats[ns][name] += value
            pending = store.repairs.snapshot()
            backlog[ns] += len(pending)
            if pending:
                oldest[ns] = max(oldest[ns], store.clock() - pending[0].recorded_at)
            counted = getattr(store, "outbox_backlog", None)
            if counted is not None:
                outbox[ns] += counted[0]
                outbox_age[ns] = max(outbox_age[ns], counted[1])
            breaker[ns][store.breaker.state.value] += 1
            opened[ns] += store.breaker.opened
            s = store.settings
            info[(ns, s.strategy, s.protocol, s.durability)] += 1
            if timings is None:
                continue
            for outcome, n in timings.outcomes.snapshot().items():
                outcomes[ns][outcome] = outcomes[ns].get(outcome, 0) + n
            for table, source in ((durations, timings.ops), (steps, timings.cache_step)):
                for op, histogram in source.items():
                    snap = histogram.snapshot()
                    table[(ns, op)] = table[(ns, op)] + snap if (ns, op) in table else snap
            for name, n in timings.counts.snapshot().items():
                counts[ns][name] += n
            if timings.read_backs is not None:
                for name, n in timings.read_backs.counts.snapshot().items():
                    counts[ns]["read_back_" + name] += n
                windows[ns] = timings.read_backs.window

        for stat in sorted({name for per in stats.values() for name in per}):
            name, doc = STAT_METRICS.get(stat, (f"writethrough_{stat}", f"core.Stats counter {stat}."))
            counter = CounterMetricFamily(name, doc, labels=["namespace"])
            for ns, per in sorted(stats.items()):
                counter.add_metric([ns], per.get(stat, 0))
            yield counter
        yield _family(GaugeMetricFamily, "writethrough_repair_backlog", backlog)
        yield _family(GaugeMetricFamily, "writethrough_repair_oldest_age_seconds",
                      {ns: oldest.get(ns, 0.0) for ns in backlog})
        if outbox:
            yield _family(GaugeMetricFamily, "writethrough_outbox_backlog", outbox)
            yield _family(GaugeMetricFamily, "writethrough_outbox_oldest_age_seconds", outbox_age)
        family = GaugeMetricFamily("writethrough_breaker_state", _help("writethrough_breaker_state"),
                                   labels=["namespace", "state"])
        for ns, states in sorted(breaker.items()):
            for state, n in states.items():
                family.add_metric([ns, state], n)
        yield family
        yield _family(CounterMetricFamily, "writethrough_breaker_opened", opened)
        family = GaugeMetricFamily("writethrough_store_info", _help("writethrough_store_info"),
                                   labels=["namespace", "strategy", "protocol", "durability"])
        for labels, n in sorted(info.items()):
            family.add_metric(list(labels), n)
        yield family
        if not outcomes and not durations:
            return
        counter = CounterMetricFamily("writethrough_writes", _help("writethrough_writes_total"),
                                      labels=["namespace", "outcome"])
        for ns, per in sorted(outcomes.items()):
            for outcome, n in per.items():
                counter.add_metric([ns, outcome], n)
        yield counter
        for name, table in (("writethrough_operation_duration_seconds", durations),
                            ("writethrough_cache_step_duration_seconds", steps)):
            hist = HistogramMetricFamily(name, _help(name), labels=["namespace", "op"])
            for (ns, op), snap in sorted(table.items()):
                hist.add_metric([ns, op], snap.cumulative(), sum_value=snap.sum)
            yield hist
        yield _family(CounterMetricFamily, "writethrough_source_write_bytes",
                      {ns: per.get("source_write_bytes", 0) for ns, per in counts.items()})
        if windows:
            yield _family(CounterMetricFamily, "writethrough_puts_tracked",
                          {ns: counts[ns].get("read_back_tracked", 0) for ns in windows})
            yield _family(CounterMetricFamily, "writethrough_puts_read_back",
                          {ns: counts[ns].get("read_back_read_back", 0) for ns in windows})
            yield _family(GaugeMetricFamily, "writethrough_read_back_window_seconds", windows)

    # -- listeners -------------------------------------------------------------------

    def _listener_metrics(self, listeners: list[Listener]) -> Iterator[Metric]:
        if not listeners:
            return
        rows = []
        for listener in listeners:
            label = ",".join(listener.namespaces)
            try:
                backlog = listener.backlog()
            except Exception:  # a scrape must not fail because the DB is away for a moment
                backlog = None
            rows.append((label, listener.stats.snapshot(), listener.lag_percentiles(), backlog))
        for stat, (name, doc) in LISTENER_METRICS.items():
            counter = CounterMetricFamily(name, doc, labels=["namespaces"])
            for label, stats, _, _ in rows:
                counter.add_metric([label], stats.get(stat, 0))
            yield counter
        family = GaugeMetricFamily("writethrough_listener_lag_seconds",
                                   _help("writethrough_listener_lag_seconds"),
                                   labels=["namespaces", "quantile"])
        for label, _, lag, _ in rows:
            for q, value in (("0.5", lag.p50), ("0.99", lag.p99), ("1", lag.max)):
                family.add_metric([label, q], value)
        yield family
        found = [(label, b) for label, _, _, b in rows if b is not None]
        yield _family(GaugeMetricFamily, "writethrough_listener_backlog_events",
                      {label: b.events for label, b in found}, label="namespaces")
        yield _family(GaugeMetricFamily, "writethrough_listener_backlog_oldest_age_seconds",
                      {label: b.oldest_age for label, b in found}, label="namespaces")


def _help(name: str) -> str:
    for m in METRICS:
        if m.name == name or m.name == name + "_total":
            return m.help
    raise KeyError(name)


def _family(cls: Any, name: str, values: dict[str, Any], label: str = "namespace") -> Metric:
    family = cls(name, _help(name), labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family  # type: ignore[no-any-return]


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, WritethroughCollector] = (
    weakref.WeakKeyDictionary()
)
_COLLECTORS_LOCK = threading.Lock()


def collector(registry: CollectorRegistry | None = None) -> WritethroughCollector:
    """The collector registered with ``registry`` (the default one if None), made once."""
    registry = REGISTRY if registry is None else registry
    with _COLLECTORS_LOCK:
        found = _COLLECTORS.get(registry)
        if found is None:
            found = _COLLECTORS[registry] = WritethroughCollector()
            registry.register(found)
        return found


def serve(port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None) -> Any:
    """Expose ``/metrics`` of ``registry`` on ``addr:port`` (a daemon thread); returns the
    server (``server.shutdown()`` stops it). Port 0 picks a free one: ``server.server_port``."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr, registry=REGISTRY if registry is None else registry)
    return server
