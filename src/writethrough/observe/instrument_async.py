"""Metrics and traces around a store, the store itself untouched.

``instrument_async.py`` is written by hand; ``scripts/unasync.py`` generates the sync
twin ``instrument_sync.py`` from it (a test checks they match).
The store's source (and, when tracing, its cache) is wrapped in a proxy that marks when
the DB step ended and opens child spans; a thin store wrapper times each call, counts the
write outcomes and opens the operation's span. A store that is not instrumented runs none
of this code. See ``writethrough.observe.instrument``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from ..caches.base import AsyncCache
from ..core import Versioned, WriteResult
from ..protocol import Entry, Kind, LeaseOutcome, WriteOutcome
from ..sources.base import AsyncSource, Logged, OutboxRow, Row
from ..store import AsyncStore
from .timings import Timings
from .tracing import db_system, version_attribute

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

_perf = time.perf_counter
_BATCH_WRITES = ("write_many", "delete_many", "write_many_logged", "delete_many_logged")


class _Op:
    """The store call in flight in this context (a thread, or a task and those it starts)."""

    __slots__ = ("db_done", "hit", "otel_token", "span", "step", "version")

    def __init__(self, span: Span | None) -> None:
        self.span = span
        self.step: Span | None = None  # the cache step's span, once the DB step ended
        self.db_done = 0.0  # perf_counter() when the DB step ended
        self.hit: bool | None = None
        self.version: int | None = None
        self.otel_token: object = None


_CURRENT: ContextVar[_Op | None] = ContextVar("writethrough_observed_op", default=None)


class AsyncObservedStore:
    """An ``AsyncStore`` that records latencies and write outcomes (``timings``) and, with a
    tracer, opens a span per get / put / delete with child spans for the DB and the cache step.

        >>> observed = AsyncObservedStore(store, tracer=get_tracer())
        >>> await observed.put("user:42", {"name": "Alice"})   # spans: put > db.write, cache_step

    Everything else (``stats``, ``repairs``, ``namespace``...) is the store's.
    """

    def __init__(
        self, store: AsyncStore, *, timings: Timings | None = None, tracer: Tracer | None = None
    ) -> None:
        self.store = store
        self.timings = timings or Timings()
        self.tracer = tracer
        self._ops = self.timings.ops
        self._get = self._ops["get"]
        self._steps = self.timings.cache_step
        self._read_backs = self.timings.read_backs
        self._attributes = {
            "writethrough.namespace": store.namespace,
            "writethrough.strategy": store.settings.strategy,
        }
        if not isinstance(store.source, AsyncObservedSource):
            source = AsyncObservedSource(store.source, self)
            store.source = source
            if getattr(store, "_outbox", None) is not None:  # the store keeps its outbox apart
                store._outbox = source
        if tracer is not None and not isinstance(store.cache, AsyncObservedCache):
            store.cache = AsyncObservedCache(store.cache, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def open(self) -> AsyncObservedStore:
        await self.store.open()
        return self

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> AsyncObservedStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reads -------------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        if self.tracer is None:  # the hit path, kept short: a timer and a histogram bucket
            start = _perf()
            found = await self.store.get(key, default)
            self._get.observe(_perf() - start)
            if self._read_backs is not None:
                self._read_backs.read(key)
            return found
        op, token, start = self._begin("get")
        try:
            found = await self.store.get(key, default)
        except BaseException as exc:
            self._failed(op, token, exc)
            raise
        finally:
            self._get.observe(_perf() - start)
        self._read(key, op, token)
        return found

    async def get_versioned(self, key: str) -> Versioned | None:
        op, token, start = self._begin("get")
        try:
            found = await self.store.get_versioned(key)
        except BaseException as exc:
            self._failed(op, token, exc)
            raise
        finally:
            self._get.observe(_perf() - start)
        if found is not None:
            op.version = found.version
        self._read(key, op, token)
        return found

    # -- writes ------------------------------------------------------------------

    async def put(self, key: str, value: Any) -> WriteResult:
        op, token, start = self._begin("put")
        try:
            result = await self.store.put(key, value)
        except BaseException as exc:
            self._failed(op, token, exc)
            raise
        return self._written("put", key, op, token, start, result)

    async def delete(self, key: str) -> WriteResult:
        op, token, start = self._begin("delete")
        try:
            result = await self.store.delete(key)
        except BaseException as exc:
            self._failed(op, token, exc)
            raise
        return self._written("delete", key, op, token, start, result)

    async def apply_write(self, key: str, version: int, value: Any) -> WriteResult:
        op, token, start = self._begin("put", committed=True)
        try:
            result = await self.store.apply_write(key, version, value)
        except BaseException as exc:
            self._failed(op, token, exc)
            raise
        return self._written("put", key, op, token, start, result)

    async def apply_delete(self, key: str, version: int) -> WriteResult:
        op, token, start = self._begin("delete", committed=True)
        try:
            result = await self.store.apply_delete(key, version)
        except BaseException as exc:
            self._failed(op, token, exc)
            raise
        return self._written("delete", key, op, token, start, result)

    # -- batches: one span per batch; outcomes and read-backs counted per key; the
    # per-operation latency histograms stay per key (a batch is not timed into them)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return await self._read_many("get_many", keys)  # type: ignore[no-any-return]

    async def get_many_versioned(self, keys: Iterable[str]) -> dict[str, Versioned]:
        return await self._read_many("get_many_versioned", keys)  # type: ignore[no-any-return]

    async def put_many(self, mapping: Mapping[str, Any]) -> dict[str, WriteResult]:
        return await self._write_many("put_many", mapping)

    async def delete_many(self, keys: Iterable[str]) -> dict[str, WriteResult]:
        return await self._write_many("delete_many", keys)

    async def _read_many(self, name: str, keys: Iterable[str]) -> Any:
        op, token, _ = self._begin(name)
        try:
            found = await getattr(self.store, name)(keys)
        except BaseException as exc:
            self._failed(op, token, exc)
            raise
        _CURRENT.reset(token)
        if self._read_backs is not None:
            for key in found:
                self._read_backs.read(key)
        if op.span is not None:
            op.span.set_attribute("writethrough.batch.found", len(found))
            self._end(op)
        return found

    async def _write_many(self, name: str, items: Any) -> dict[str, WriteResult]:
        op, token, _ = self._begin(name)
        try:
            results: dict[str, WriteResult] = await getattr(self.store, name)(items)
        except BaseException as exc:
            self._failed(op, token, exc)
            raise
        _CURRENT.reset(token)
        for key, result in results.items():
            self.timings.outcomes.add(result.cache.value)
            if name == "put_many" and self._read_backs is not None:
                self._read_backs.wrote(key)
        if op.span is not None:
            op.span.set_attribute("writethrough.batch.size", len(results))
            if op.step is not None:
                op.step.end()
            self._end(op)
        return results

    # -- the bookkeeping, the same in both shells --------------------------------

    def _begin(self, name: str, committed: bool = False) -> tuple[_Op, Token[_Op | None], float]:
        span = None
        if self.tracer is not None:
            from opentelemetry import context, trace

            span = self.tracer.start_span(f"writethrough.{name}", attributes=self._attributes)
            if span.is_recording():
                op = _Op(span)
                op.otel_token = context.attach(trace.set_span_in_context(span))
                if committed:  # apply_write / apply_delete: the whole call is the cache step
                    op.step = self.start_child("writethrough.cache_step", op)
            else:  # no SDK, or not sampled: no child spans either
                op = _Op(None)
        else:
            op = _Op(None)
        start = _perf()
        if committed:
            op.db_done = start
        return op, _CURRENT.set(op), start

    def _read(self, key: str, op: _Op, token: Token[_Op | None]) -> None:
        _CURRENT.reset(token)
        if self._read_backs is not None:
            self._read_backs.read(key)
        if op.span is not None:
            op.span.set_attribute("writethrough.cache.hit", bool(op.hit))
            if op.version is not None:
                op.span.set_attribute("writethrough.version", version_attribute(op.version))
            self._end(op)

    def _written(
        self, name: str, key: str, op: _Op, token: Token[_Op | None], start: float, result: WriteResult
    ) -> WriteResult:
        end = _perf()
        _CURRENT.reset(token)
        self._ops[name].observe(end - start)
        if op.db_done:
            self._steps[name].observe(end - op.db_done)
        self.timings.outcomes.add(result.cache.value)
        if name == "put" and self._read_backs is not None:
            self._read_backs.wrote(key)
        if op.span is not None:
            attributes = {
                "writethrough.outcome": result.cache.value,
                "writethrough.version": version_attribute(result.version),
            }
            if op.step is not None:
                op.step.set_attributes(attributes)
                op.step.end()
            op.span.set_attributes(attributes)
            self._end(op)
        return result

    def _failed(self, op: _Op, token: Token[_Op | None], exc: BaseException) -> None:
        _CURRENT.reset(token)
        if op.span is not None:
            from opentelemetry.trace import Status, StatusCode

            for span in (op.step, op.span):
                if span is not None:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            if op.step is not None:
                op.step.end()
            self._end(op)

    def _end(self, op: _Op) -> None:
        from opentelemetry import context

        context.detach(op.otel_token)  # type: ignore[arg-type]
        if op.span is not None:
            op.span.end()

    def start_child(self, name: str, op: _Op) -> Span:
        """A span under ``op``'s span, whatever context is current (a shielded task's)."""
        from opentelemetry import trace

        assert self.tracer is not None and op.span is not None
        parent: Context = trace.set_span_in_context(op.span)
        return self.tracer.start_span(name, context=parent)

    def child_context(self, op: _Op) -> Context:
        """Where a backend call's span goes: under the cache step once it began, else the op."""
        from opentelemetry import trace

        span = op.step if op.step is not None else op.span
        assert span is not None
        return trace.set_span_in_context(span)


class AsyncObservedSource:
    """The store's source, marking when each DB step ends (and tracing it)."""

    def __init__(self, inner: AsyncSource, owner: AsyncObservedStore) -> None:
        self.inner = inner
        self.name = inner.name
        self._owner = owner
        self._bytes = owner.timings.counts
        self._system = db_system(inner.name)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        # The batch methods, observed -- only where the source has them (the store drives
        # a source without them key by key).
        if name == "read_many":
            return self._read_many
        if name in _BATCH_WRITES:
            return functools.partial(self._many, name)
        return found

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def read(self, key: str) -> Row:
        op = _CURRENT.get()
        if op is None or op.span is None:
            return await self.inner.read(key)
        with self._span("read", op) as span:
            row = await self.inner.read(key)
            span.set_attribute("writethrough.version", version_attribute(row.version))
        op.version = row.version
        return row

    async def write(self, key: str, payload: bytes) -> int:
        self._bytes.add("source_write_bytes", len(payload))
        op = _CURRENT.get()
        if op is None or op.span is None:
            version = await self.inner.write(key, payload)
        else:
            with self._span("write", op) as span:
                version = await self.inner.write(key, payload)
                span.set_attribute("writethrough.version", version_attribute(version))
        self._committed(op)
        return version

    async def delete(self, key: str) -> int:
        op = _CURRENT.get()
        if op is None or op.span is None:
            version = await self.inner.delete(key)
        else:
            with self._span("delete", op) as span:
                version = await self.inner.delete(key)
                span.set_attribute("writethrough.version", version_attribute(version))
        self._committed(op)
        return version

    async def write_logged(self, key: str, payload: bytes) -> Logged:
        self._bytes.add("source_write_bytes", len(payload))
        op = _CURRENT.get()
        if op is None or op.span is None:
            logged: Logged = await self.inner.write_logged(key, payload)  # type: ignore[attr-defined]
        else:
            with self._span("write", op) as span:
                logged = await self.inner.write_logged(key, payload)  # type: ignore[attr-defined]
                span.set_attribute("writethrough.version", version_attribute(logged.version))
        self._committed(op)
        return logged

    async def delete_logged(self, key: str) -> Logged:
        op = _CURRENT.get()
        if op is None or op.span is None:
            logged: Logged = await self.inner.delete_logged(key)  # type: ignore[attr-defined]
        else:
            with self._span("delete", op) as span:
                logged = await self.inner.delete_logged(key)  # type: ignore[attr-defined]
                span.set_attribute("writethrough.version", version_attribute(logged.version))
        self._committed(op)
        return logged

    async def _read_many(self, keys: Sequence[str]) -> dict[str, Row]:
        op = _CURRENT.get()
        if op is None or op.span is None:
            return await self.inner.read_many(keys)  # type: ignore[attr-defined,no-any-return]
        with self._span("read_many", op):
            rows: dict[str, Row] = await self.inner.read_many(keys)  # type: ignore[attr-defined]
        return rows

    async def _many(self, name: str, items: Any) -> Any:
        if isinstance(items, Mapping):
            self._bytes.add("source_write_bytes", sum(len(p) for p in items.values()))
        op = _CURRENT.get()
        if op is None or op.span is None:
            found = await getattr(self.inner, name)(items)
        else:
            with self._span(name, op):
                found = await getattr(self.inner, name)(items)
        self._committed(op)
        return found

    async def outbox_claim(self, older_than: float, limit: int, claim_for: float) -> list[OutboxRow]:
        rows: list[OutboxRow] = await self.inner.outbox_claim(older_than, limit, claim_for)  # type: ignore[attr-defined]
        return rows

    async def outbox_done(self, ids: list[int]) -> None:
        await self.inner.outbox_done(ids)  # type: ignore[attr-defined]

    def _span(self, what: str, op: _Op) -> Any:
        tracer = self._owner.tracer
        assert tracer is not None
        return tracer.start_as_current_span(
            f"writethrough.db.{what}",
            context=self._owner.child_context(op),
            attributes={"db.system.name": self._system, "db.operation.name": what},
        )

    def _committed(self, op: _Op | None) -> None:
        """The DB step ended: what follows is the cache step."""
        if op is not None and not op.db_done:
            op.db_done = _perf()
            if op.span is not None:
                op.step = self._owner.start_child("writethrough.cache_step", op)


class AsyncObservedCache:
    """The store's cache, each call a span under the operation (or its cache step)."""

    shares_reads = False  # the store traces each reader's cache call: none shared

    def __init__(self, inner: AsyncCache, owner: AsyncObservedStore) -> None:
        self.inner = inner
        self.name = inner.name
        self._owner = owner
        self._system = db_system(inner.name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def get(self, key: str) -> Entry | None:
        op = _CURRENT.get()
        if op is None or op.span is None:
            return await self.inner.get(key)
        with self._span("get", op) as span:
            entry = await self.inner.get(key)
            found = entry is not None and entry.kind is Kind.VALUE
            span.set_attribute("writethrough.cache.hit", found)
        if op.hit is None:
            op.hit = found
            if entry is not None and found:
                op.version = entry.version
        return entry

    async def write(
        self,
        key: str,
        kind: Kind,
        version: int,
        payload: bytes,
        *,
        ttl: float,
        tombstone_ttl: float,
        token: bytes | None = None,
        lease_ttl: float = 2.0,
        floor: int = 0,
    ) -> WriteOutcome:
        op = _CURRENT.get()
        if op is None or op.span is None:
            return await self.inner.write(key, kind, version, payload, ttl=ttl, tombstone_ttl=tombstone_ttl,
                                          token=token, lease_ttl=lease_ttl, floor=floor)
        with self._span("write", op) as span:
            outcome = await self.inner.write(key, kind, version, payload, ttl=ttl, tombstone_ttl=tombstone_ttl,
                                             token=token, lease_ttl=lease_ttl, floor=floor)
            span.set_attribute("writethrough.cache.result", outcome.value)
        return outcome

    async def lease(
        self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0
    ) -> tuple[LeaseOutcome, Entry | None]:
        op = _CURRENT.get()
        if op is None or op.span is None:
            return await self.inner.lease(key, token, lease_ttl=lease_ttl, floor=floor)
        with self._span("lease", op) as span:
            found = await self.inner.lease(key, token, lease_ttl=lease_ttl, floor=floor)
            span.set_attribute("writethrough.cache.result", found[0].value)
        return found

    async def fill(self, key: str, token: bytes, entry: Entry, *, ttl: float, floor: int = 0) -> bool:
        op = _CURRENT.get()
        if op is None or op.span is None:
            return await self.inner.fill(key, token, entry, ttl=ttl, floor=floor)
        with self._span("fill", op) as span:
            stored = await self.inner.fill(key, token, entry, ttl=ttl, floor=floor)
            span.set_attribute("writethrough.cache.result", "stored" if stored else "dropped")
        return stored

    async def renew(self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0) -> bool:
        return await self.inner.renew(key, token, lease_ttl=lease_ttl, floor=floor)

    async def set(self, key: str, entry: Entry, *, ttl: float) -> None:
        op = _CURRENT.get()
        if op is None or op.span is None:
            return await self.inner.set(key, entry, ttl=ttl)
        with self._span("set", op):
            await self.inner.set(key, entry, ttl=ttl)

    async def delete(self, key: str) -> None:
        op = _CURRENT.get()
        if op is None or op.span is None:
            return await self.inner.delete(key)
        with self._span("delete", op):
            await self.inner.delete(key)

    def _span(self, what: str, op: _Op) -> Any:
        tracer = self._owner.tracer
        assert tracer is not None
        return tracer.start_as_current_span(
            f"writethrough.cache.{what}",
            context=self._owner.child_context(op),
            attributes={"db.system.name": self._system, "db.operation.name": what},
        )
