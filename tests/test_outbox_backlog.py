"""The durable outbox's backlog as a metric (issue 14): rows past their grace that wait
for a repair, and the oldest one's age, counted by the repair round, on SQLite and on a
real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import writethrough
from conftest import unique_namespace
from servers import PostgresServer
from writethrough import CacheOutcome, CacheUnavailable, Settings
from writethrough.caches.memory import MemoryCache
from writethrough.observe import instrument
from writethrough.observe.status import store_fields
from writethrough.tools.faults import FaultyCache


def gauges(registry: CollectorRegistry, ns: str) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.labels.get("namespace") == ns
            and s.name.startswith("writethrough_outbox_")}


@pytest.fixture(params=["sqlite", "postgresql"])
def source_url(request: Any, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_srv")
    return server.url


def test_rows_waiting_for_a_repair_are_counted_and_then_cleared(source_url: str) -> None:
    ns = unique_namespace("obacklog")
    cache = FaultyCache(MemoryCache())
    source = writethrough.sources.open_source(source_url, namespace=ns)
    registry = CollectorRegistry()
    plain = writethrough.Store(source, cache, namespace=ns,  # type: ignore[arg-type]
                               settings=Settings(durability="outbox", outbox_grace=0.0),
                               repair_worker=False)
    store = instrument(plain, registry=registry)
    with store:
        cache.fail("write", CacheUnavailable("injected: the cache is down"))
        for i in range(3):
            assert store.put(f"k{i}", i).cache is CacheOutcome.PENDING_REPAIR
        store.repair_once()  # the breaker is open: nothing repaired, the rows are counted
        assert store.outbox_backlog is not None and store.outbox_backlog[0] == 3
        seen = gauges(registry, ns)
        assert seen["writethrough_outbox_backlog"] == 3
        assert seen["writethrough_outbox_oldest_age_seconds"] >= 0.0
        assert store_fields(store)()["outbox_waiting"] == 3
        cache.heal()
        store.breaker.success()
        plain._backlog_at = -1e9  # count again now, not in five seconds
        store.repair_once()  # the repairs, and the outbox rows they settled, are cleared
        assert store.outbox_backlog == (0, 0.0)
        assert gauges(registry, ns)["writethrough_outbox_backlog"] == 0
