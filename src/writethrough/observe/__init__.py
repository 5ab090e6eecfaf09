"""Operating a store: metrics, traces, the consistency sampler, the strategy advisor.

    import writethrough
    from writethrough.observe import instrument

    store = instrument(writethrough.open(source=..., cache=...), tracing=True)
    store.put("user:42", {...})   # latency, outcome, read-backs recorded; a span if an SDK is set

- ``instrument(store)``: the store with latencies, write outcomes and read-backs measured
  (``observe.timings``), registered with the Prometheus collector (``observe.metrics``,
  needs ``writethrough[metrics]``) and, with ``tracing=True``, OpenTelemetry spans
  (``observe.tracing``, needs ``writethrough[tracing]``). A store not instrumented runs
  none of this code.
- ``observe.check``: compare sampled cache entries with their rows (``writethrough check``).
- ``observe.advise``: which strategy fits a keyspace (``writethrough advise``).

Nothing here is imported by the store; optional dependencies load only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, overload

from ..store import AsyncStore, Store
from .instrument_async import AsyncObservedStore
from .instrument_sync import ObservedStore
from .timings import Histogram, HistogramSnapshot, ReadBacks, Timings

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client.registry import CollectorRegistry


@overload
def instrument(
    store: Store, *, metrics: bool = ..., tracing: bool = ..., read_back_window: float | None = ...,
    registry: CollectorRegistry | None = ..., tracer_provider: TracerProvider | None = ...,
) -> ObservedStore: ...


@overload
def instrument(
    store: AsyncStore, *, metrics: bool = ..., tracing: bool = ...,
    read_back_window: float | None = ..., registry: CollectorRegistry | None = ...,
    tracer_provider: TracerProvider | None = ...,
) -> AsyncObservedStore: ...


def instrument(
    store: Store | AsyncStore,
    *,
    metrics: bool = True,
    tracing: bool = False,
    read_back_window: float | None = 1.0,
    registry: CollectorRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> ObservedStore | AsyncObservedStore:
    """``store`` with its operations measured; use the returned object in its place.

    - ``metrics``: register the store with the Prometheus collector of ``registry`` (the
      default registry if None); its counters are read at scrape time.
    - ``tracing``: a span per get / put / delete (children: the DB step, the cache step and
      each cache call), through ``opentelemetry-api``; a no-op until an SDK is configured.
      ``tracer_provider``: where the spans go (the global provider if None).
    - ``read_back_window``: follow whether each put's key is read back within this many
      seconds (what ``writethrough advise`` needs); None to skip it.

    Call it right after opening, before the store is shared: it wraps the store's source
    (and cache, when tracing) in place.
    """
    from ..errors import ConfigError

    if read_back_window is not None and not (
        isinstance(read_back_window, int | float) and 0 < read_back_window < float("inf")
    ):
        raise ConfigError(f"read_back_window must be > 0 seconds or None, got {read_back_window!r}")
    timings = Timings(read_backs=ReadBacks(float(read_back_window)) if read_back_window else None)
    tracer: Any = None
    if tracing:
        from .tracing import get_tracer

        tracer = get_tracer(tracer_provider)
    if metrics:
        from .metrics import collector

        collector(registry).add_store(store, timings)
    if isinstance(store, AsyncStore):
        return AsyncObservedStore(store, timings=timings, tracer=tracer)
    if isinstance(store, Store):
        return ObservedStore(store, timings=timings, tracer=tracer)
    raise ConfigError(f"instrument() takes a Store or an AsyncStore, not {type(store).__name__}")


__all__ = [
    "AsyncObservedStore",
    "Histogram",
    "HistogramSnapshot",
    "ObservedStore",
    "ReadBacks",
    "Timings",
    "instrument",
]
