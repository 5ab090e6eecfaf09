"""Metrics and traces (issue 14) on real Redis and PostgreSQL: what the collector exposes is
the store's own counters; spans nest put > db.write, cache_step > cache.write; a store that
is not instrumented imports and runs none of it."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import writethrough
from conftest import unique_namespace
from servers import PostgresServer, RedisServer
from test_capture import ROOMY, captured_table
from test_capture import Captured as Table
from writethrough import CacheOutcome, CacheTimeout, Settings, Store
from writethrough.caches import open_cache
from writethrough.observe import instrument
from writethrough.observe.metrics import METRICS
from writethrough.sources import open_source
from writethrough.tools.faults import FaultyCache

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def table(postgres_srv: PostgresServer, redis_srv: RedisServer) -> Iterator[Table]:
    """A table captured by triggers (tests/test_capture.py's helper)."""
    with captured_table("triggers", postgres_srv.url, redis_srv.url + ROOMY) as t:
        yield t
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_metrics_are_the_store_counters(redis_srv: RedisServer, postgres_srv: PostgresServer) -> None:
    registry, ns = CollectorRegistry(), unique_namespace("obs")
    store = instrument(writethrough.open(postgres_srv.url, redis_srv.url, namespace=ns),
                       registry=registry)
    with store:
        payloads = [{"n": i, "pad": "x" * i} for i in range(20)]
        for i, v in enumerate(payloads):
            store.put(f"k{i}", v)  # cold keys: a writer lease, the row read back, filled
        for i in range(20):
            assert store.get(f"k{i}") == payloads[i]  # hits
            assert store.get(f"k{i}") == payloads[i]  # hits
            store.put(f"k{i}", payloads[i])  # warm: updated
        store.delete("k0")
        assert store.get("nope") is None
        m = scrape(registry)
        own = store.stats.snapshot()
    # The store's own counters, not a second count of them.
    assert value(m, "writethrough_cache_hits_total", namespace=ns) == own["hits"] == 40
    assert value(m, "writethrough_cache_misses_total", namespace=ns) == own["misses"] == 1
    assert value(m, "writethrough_cold_writes_total", namespace=ns) == own["cold_writes"] == 20
    assert value(m, "writethrough_source_writes_total", namespace=ns) == own["source_writes"] == 41
    assert value(m, "writethrough_fills_total", namespace=ns) == own["fills"]
    assert value(m, "writethrough_writes_total", namespace=ns, outcome="updated") == 40
    assert value(m, "writethrough_writes_total", namespace=ns, outcome="invalidated") == 1
    assert value(m, "writethrough_writes_total", namespace=ns, outcome="pending_repair") == 0
    assert value(m, "writethrough_operation_duration_seconds_count", namespace=ns, op="get") == 41
    assert value(m, "writethrough_operation_duration_seconds_count", namespace=ns, op="put") == 40
    assert value(m, "writethrough_cache_step_duration_seconds_count", namespace=ns, op="put") == 40
    assert value(m, "writethrough_cache_step_duration_seconds_count", namespace=ns, op="delete") == 1
    put_sum = value(m, "writethrough_operation_duration_seconds_sum", namespace=ns, op="put")
    step_sum = value(m, "writethrough_cache_step_duration_seconds_sum", namespace=ns, op="put")
    assert 0 < step_sum < put_sum  # the cache part is part of the put
    written = sum(len(json.dumps(v, separators=(",", ":"))) for v in payloads) * 2
    assert value(m, "writethrough_source_write_bytes_total", namespace=ns) == written
    assert value(m, "writethrough_puts_read_back_total", namespace=ns) == 20  # the first 20
    assert value(m, "writethrough_puts_tracked_total", namespace=ns) == 40
    assert value(m, "writethrough_breaker_state", namespace=ns, state="closed") == 1
    assert value(m, "writethrough_store_info", namespace=ns, strategy="write-through",
                 protocol="versioned", durability="best-effort") == 1
    # Every exposed name is documented in METRICS (the README's list), none has a key label.
    documented = {info.name for info in METRICS}
    for name, labels in m:
        base = re.sub(r"_(bucket|count|sum|created)$", "", name)
        assert base in documented or base + "_total" in documented or name in documented, name
        assert {k for k, _ in labels} <= {"namespace", "op", "outcome", "state", "le", "strategy",
                                          "protocol", "durability"}


def test_pending_repair_backlog_age_and_breaker(redis_srv: RedisServer, postgres_srv: PostgresServer) -> None:
    registry, ns = CollectorRegistry(), unique_namespace("obs")
    cache = FaultyCache(open_cache(redis_srv.url))
    settings = Settings(breaker_threshold=1, breaker_reset=0.05)
    store = instrument(Store(open_source(postgres_srv.url, namespace=ns), cache, namespace=ns,
                             settings=settings, repair_worker=False).open(), registry=registry)
    with store:
        store.put("a", 1)
        cache.fail("write", CacheTimeout("injected"))
        assert store.put("a", 2).cache is CacheOutcome.PENDING_REPAIR
        time.sleep(0.1)
        m = scrape(registry)
        assert value(m, "writethrough_writes_total", namespace=ns, outcome="pending_repair") == 1
        assert value(m, "writethrough_repair_backlog", namespace=ns) == 1
        assert value(m, "writethrough_repair_oldest_age_seconds", namespace=ns) >= 0.1
        assert value(m, "writethrough_breaker_state", namespace=ns, state="open") == 1
        assert value(m, "writethrough_breaker_opened_total", namespace=ns) == 1
        cache.heal()
        assert store.repair_once() == 1
        m = scrape(registry)
        assert value(m, "writethrough_repair_backlog", namespace=ns) == 0
        assert value(m, "writethrough_repairs_applied_total", namespace=ns) == 1
        assert value(m, "writethrough_breaker_state", namespace=ns, state="closed") == 1


def _tree(exported: tuple[ReadableSpan, ...]) -> dict[str, list[str]]:
    """span name -> names of its children (by parent span id)."""
    by_id = {s.context.span_id: s for s in exported}
    children: dict[str, list[str]] = {s.name: [] for s in exported}
    for s in exported:
        if s.parent is not None and s.parent.span_id in by_id:
            children[by_id[s.parent.span_id].name].append(s.name)
    return children


def test_spans_for_put_get_delete(
    redis_srv: RedisServer, postgres_srv: PostgresServer,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    ns = unique_namespace("obs")
    store = instrument(writethrough.open(postgres_srv.url, redis_srv.url, namespace=ns),
                       tracing=True, tracer_provider=provider, metrics=False)
    with store:
        store.put("k", {"v": 1})
        store.get("k")
        put_spans = exporter.get_finished_spans()
        tree = _tree(put_spans)
        assert tree["writethrough.put"] == ["writethrough.db.write", "writethrough.cache_step"]
        # A cold key: the write takes a writer lease, reads the row back and fills it.
        assert tree["writethrough.cache_step"] == ["writethrough.cache.write", "writethrough.db.read",
                                                   "writethrough.cache.fill"]
        assert tree["writethrough.get"] == ["writethrough.cache.get"]  # a hit
        by_name = {s.name: s for s in put_spans}
        put = by_name["writethrough.put"]
        assert put.attributes is not None
        assert put.attributes["writethrough.outcome"] == "updated"  # a cold key, filled
        assert put.attributes["writethrough.version"] == 1
        assert put.attributes["writethrough.namespace"] == ns
        get = by_name["writethrough.get"]
        assert get.attributes is not None and get.attributes["writethrough.cache.hit"] is True
        assert get.attributes["writethrough.version"] == 1
        db = by_name["writethrough.db.write"]
        assert db.attributes is not None and db.attributes["db.system.name"] == "postgresql"
        exporter.clear()
        assert store.get("k") == {"v": 1}
        assert store.put("k", {"v": 2}).cache is CacheOutcome.UPDATED
        store.delete("k")
        finished = exporter.get_finished_spans()
        names = [s.name for s in finished if s.parent is None]
        assert names == ["writethrough.get", "writethrough.put", "writethrough.delete"]
        roots = {s.name: s for s in finished if s.parent is None}
        assert roots["writethrough.get"].attributes["writethrough.cache.hit"] is True  # type: ignore[index]
        assert roots["writethrough.put"].attributes["writethrough.outcome"] == "updated"  # type: ignore[index]
        assert roots["writethrough.delete"].attributes["writethrough.version"] == 3  # type: ignore[index]
        # A failing DB call: the error is on the span, the store's error reaches the caller.
        exporter.clear()
        with pytest.raises(writethrough.InvalidKeyError):
            store.put("", 1)


def test_async_spans_keep_their_parents(
    redis_srv: RedisServer, postgres_srv: PostgresServer,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans

    async def run() -> None:
        ns = unique_namespace("obs")
        raw = await writethrough.open_async(source=postgres_srv.url, cache=redis_srv.url, namespace=ns)
        store = instrument(raw, tracing=True, tracer_provider=provider, metrics=False)
        async with store:
            await asyncio.gather(*(store.put(f"k{i}", i) for i in range(8)))
            await asyncio.gather(*(store.get(f"k{i}") for i in range(8)))

    asyncio.run(run())
    finished = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    puts = [s for s in finished if s.name == "writethrough.put"]
    assert len(puts) == 8 and all(s.parent is None for s in puts)
    for s in finished:
        if s.name in ("writethrough.db.write", "writethrough.cache_step"):
            assert s.parent is not None and by_id[s.parent.span_id].name == "writethrough.put"
        if s.name == "writethrough.cache.write":  # ran in the store's shielded task
            assert s.parent is not None and by_id[s.parent.span_id].name == "writethrough.cache_step"
    # Each put's children belong to that put's trace, not to a neighbour's.
    for put in puts:
        kids = [s for s in finished if s.parent is not None and s.parent.span_id == put.context.span_id]
        assert {k.context.trace_id for k in kids} == {put.context.trace_id} and len(kids) == 2


def test_a_plain_store_imports_none_of_it(tmp_path: Any) -> None:
    code = (
        "import sys, writethrough\n"
        f"s = writethrough.open('sqlite:///{tmp_path}/a.db')\n"
        "s.put('k', 1); s.get('k')\n"
        "assert type(s.source).__name__ == 'SQLiteSource', type(s.source)\n"
        "bad = [m for m in sys.modules if m.startswith(('writethrough.observe', 'prometheus_client', 'opentelemetry'))]\n"
        "assert not bad, bad\n"
        "from writethrough.observe import instrument\n"
        "o = instrument(s, metrics=False)\n"
        "o.put('k', 2)\n"
        "bad = [m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_listener_metrics_and_backlog(table: Table) -> None:
    from writethrough.observe.metrics import WritethroughCollector

    registry = CollectorRegistry()
    collector = WritethroughCollector()
    registry.register(collector)
    table.sql("INSERT INTO {t} (id, name) SELECT g, 'n' FROM generate_series(1, 30) g")
    with table.listener() as listener:
        collector.add_listener(listener)
        time.sleep(0.05)
        m = scrape(registry)
        label = table.namespace
        assert value(m, "writethrough_listener_backlog_events", namespaces=label) == 30
        assert value(m, "writethrough_listener_backlog_oldest_age_seconds", namespaces=label) >= 0.05
        assert listener.drain_once() == 30
        m = scrape(registry)
        assert value(m, "writethrough_listener_backlog_events", namespaces=label) == 0
        assert value(m, "writethrough_listener_events_applied_total", namespaces=label) == 30
        assert value(m, "writethrough_listener_cache_values_total", namespaces=label) == 30
        assert value(m, "writethrough_listener_lag_seconds", namespaces=label, quantile="0.99") > 0


def test_listen_command_serves_metrics_and_logs_status(postgres_srv: PostgresServer, table: Table) -> None:
    table.sql("INSERT INTO {t} (id, name) VALUES (1, 'a'), (2, 'b')")
    argv = [sys.executable, "-m", "writethrough", "listen", "--source", postgres_srv.url,
            "--table", table.name, "--key-column", "id", "--namespace", table.namespace,
            "--cache", table.cache_url, "--strategy", "write-through", "--poll-interval", "0.1",
            "--metrics-port", "0", "--metrics-addr", "127.0.0.1", "--status-interval", "0.3",
            "--log-format", "json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port, statuses = None, []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (port is None or len(statuses) < 2):
            line = proc.stderr.readline()
            if not line:
                break
            if line.startswith("{"):
                record = json.loads(line)
                port = record.get("metrics_port", port)
                if record["msg"].startswith("status "):
                    statuses.append(record)
        assert port is not None and len(statuses) >= 2, "no metrics port or status lines logged"
        assert statuses[-1]["applied"] == 2 and statuses[-1]["backlog"] == 0
        assert "lag_p99_ms" in statuses[-1] and "applied=2" in statuses[-1]["msg"]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        m = parse(text)
        assert value(m, "writethrough_listener_events_applied_total", namespaces=table.namespace) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "applied 2 change(s)" in out


def test_top_renders_a_frame_from_a_real_endpoint(
    redis_srv: RedisServer, postgres_srv: PostgresServer, table: Table,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from writethrough.cli import main
    from writethrough.observe.metrics import serve

    registry, ns = CollectorRegistry(), unique_namespace("top")
    server = serve(0, "127.0.0.1", registry)
    url = f"127.0.0.1:{server.server_port}"
    table.sql("INSERT INTO {t} (id, name) SELECT g, 'n' FROM generate_series(1, 5) g")
    cache = FaultyCache(open_cache(redis_srv.url))
    raw = Store(open_source(postgres_srv.url, namespace=ns), cache, namespace=ns,
                settings=Settings(breaker_threshold=1, breaker_reset=60.0), repair_worker=False)
    store = instrument(raw.open(), registry=registry)
    try:
        with store, table.listener() as listener:
            from writethrough.observe.metrics import collector

            collector(registry).add_listener(listener)
            for i in range(10):
                store.put(f"k{i}", i)
                store.get(f"k{i}")
                store.get(f"k{i}")
            listener.drain_once()
            cache.fail("write", CacheTimeout("injected"))
            store.put("k0", 99)  # pending repair; the breaker opens
            assert main(["top", url, "--once"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr().out
    row = next((line for line in out.splitlines() if line.startswith(ns)), out)  # out: say why
    # namespace, reads/s, hit ratio, puts/s, updated, invalidated, pending repair, ...
    cells = row.split()
    assert cells[4:7] == ["10", "0", "1"], row  # totals: 10 cold puts filled, 1 pending repair
    assert "100.0%" in row and "open" in row  # 20 hits in 20 reads; the breaker
    assert "stores" in out and "listeners" in out
    lrow = next(line for line in out.splitlines() if line.startswith(table.namespace))
    assert lrow.split()[2] == "5" and " 0 " in lrow  # applied 5, backlog 0


def test_repair_command_serves_metrics_and_stops_on_sigterm(tmp_path: Any) -> None:
    argv = [sys.executable, "-m", "writethrough", "repair", "--source", f"sqlite:///{tmp_path}/o.db",
            "--cache", "memory://", "--namespace", "jobs", "--interval", "0.05",
            "--metrics-port", "0", "--metrics-addr", "127.0.0.1", "--status-interval", "0.2",
            "--log-format", "json"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port, status = None, None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (port is None or status is None):
            line = proc.stderr.readline()
            if not line:
                break
            if line.startswith("{"):
                record = json.loads(line)
                port = record.get("metrics_port", port)
                if record["msg"].startswith("status "):
                    status = record
        assert port is not None and status is not None
        assert (status["namespace"], status["pending"], status["breaker"]) == ("jobs", 0, "closed")
        m = parse(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
        assert value(m, "writethrough_repairs_applied_total", namespace="jobs") == 0
        assert value(m, "writethrough_store_info", namespace="jobs", strategy="write-through",
                     protocol="versioned", durability="outbox") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "repaired 0 outbox row(s) in namespace 'jobs'" in out


def test_batches_are_observed(
    redis_srv: RedisServer, postgres_srv: PostgresServer,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A batch is one span with one DB child; outcomes are counted per key."""
    provider, exporter = spans
    ns = unique_namespace("obs")
    raw = writethrough.open(source=postgres_srv.url, cache=redis_srv.url, namespace=ns)
    with instrument(raw, tracing=True, tracer_provider=provider, metrics=False) as store:
        out = store.put_many({"a": 1, "b": 2, "c": 3})
        assert store.get_many(["a", "b", "c", "d"]) == {"a": 1, "b": 2, "c": 3}
        store.delete_many(["a"])
        assert sum(store.timings.outcomes.snapshot().values()) == 4
        assert {r.cache.value for r in out.values()} == {"updated"}
    finished = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}
    names = [s.name for s in finished]
    assert names.count("writethrough.put_many") == 1 and names.count("writethrough.get_many") == 1
    writes = [s for s in finished if s.name == "writethrough.db.write_many"]
    assert len(writes) == 1 and by_id[writes[0].parent.span_id].name == "writethrough.put_many"
