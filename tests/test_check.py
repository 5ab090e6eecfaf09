"""``writethrough check`` on real Redis + PostgreSQL: inconsistencies planted behind the
library's back are found (with their kind); writes in flight and a concurrent write load are
not reported."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import writethrough
from conftest import unique_namespace
from servers import PostgresServer, RedisServer
from writethrough import Settings, Store
from writethrough.caches import open_cache
from writethrough.caches.base import Cache
from writethrough.cli import main
from writethrough.observe.check import Checker, Report, Window, nines
from writethrough.protocol import Entry
from writethrough.sources import open_source
from writethrough.sources.base import Source
from writethrough.tools.faults import FaultyCache

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def backends(redis_srv: RedisServer, postgres_srv: PostgresServer) -> Iterator[tuple[Source, Cache, str]]:
    ns = unique_namespace("chk")
    source, cache = open_source(postgres_srv.url, namespace=ns), open_cache(redis_srv.url)
    source.open()
    yield source, cache, ns
    truncate = getattr(source, "truncate_namespace", None)
    if truncate is not None:
        truncate()
    for key in cache.client.scan_iter(match=f"wt:{ns}:*"):  # type: ignore[attr-defined]
        cache.client.delete(key)  # type: ignore[attr-defined]
    source.close()
    cache.close()


def _warm(store: Store, n: int) -> None:
    for i in range(n):
        store.put(f"k{i}", {"i": i})
        assert store.get(f"k{i}") == {"i": i}  # the miss fills the value


def test_planted_inconsistencies_are_found(
    backends: tuple[Source, Cache, str], postgres_srv: PostgresServer, redis_srv: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, cache, ns = backends
    with writethrough.open(postgres_srv.url, redis_srv.url, namespace=ns) as store:
        _warm(store, 200)
        for i in range(5):  # tombstones and leases are never compared: nothing is served
            store.delete(f"gone{i}")
    # Behind the library's back: through the backends' own methods, and plain SQL.
    ttl = 300.0
    v = {k: source.read(k).version for k in ("k1", "k2", "k3", "k4")}
    cache.set(f"wt:{ns}:k1", Entry.value(v["k1"] - 1, b'{"i":"old"}'), ttl=ttl)  # stale
    cache.set(f"wt:{ns}:k2", Entry.value(v["k2"], b'{"i":"forged"}'), ttl=ttl)  # value
    cache.set(f"wt:{ns}:k3", Entry.value(v["k3"] + 5, b'{"i":3}'), ttl=ttl)  # ahead
    with psycopg.connect(postgres_srv.url, autocommit=True) as conn:  # the DB moves on alone
        conn.execute("UPDATE writethrough_items SET value = %s, version = version + 1 "
                     "WHERE namespace = %s AND key = %s", (b'{"i":"sql"}', ns, "k4"))
    checker = Checker(source, cache, ns, grace=0.2, sample=10_000)
    found = checker.round()
    assert found.compared == 200 and found.sampled >= 200
    by_key = {a.key: a for a in found.inconsistent}
    assert {k: a.kind for k, a in by_key.items()} == {
        "k1": "stale", "k2": "value", "k3": "ahead", "k4": "stale"}
    assert (by_key["k1"].cache_version, by_key["k1"].db_version) == (v["k1"] - 1, v["k1"])
    assert (by_key["k4"].cache_version, by_key["k4"].db_version) == (v["k4"], v["k4"] + 1)
    report = Report.of([found], ns, 0.2)
    assert report.inconsistent == 4 and not report.ok
    assert report.nines == pytest.approx(-__import__("math").log10(4 / 200))
    # The command says the same, with exit status 1, and as JSON.
    argv = ["check", "--source", postgres_srv.url, "--cache", redis_srv.url, "--namespace", ns,
            "--grace", "0.1"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "4 inconsistent" in out and "k1" in out and "cache older than the DB" in out
    assert main([*argv, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["inconsistent"] == 4 and data["compared"] == 200
    assert sorted(k["key"] for k in data["keys"]) == ["k1", "k2", "k3", "k4"]


def test_a_write_in_flight_is_re_checked_not_reported(
    backends: tuple[Source, Cache, str],
) -> None:
    source, cache, ns = backends
    gated = FaultyCache(cache)
    store = Store(source, gated, namespace=ns, settings=Settings(write_budget=30.0),
                  repair_worker=False)
    _warm(store, 3)
    gate = gated.pause("write")  # the next put commits, then waits before its cache write
    writer = threading.Thread(target=store.put, args=("k1", {"i": "new"}))
    writer.start()
    assert gate.wait_reached()

    def sleep(seconds: float) -> None:  # the grace period: the write lands meanwhile
        gate.release()
        writer.join(10)
        time.sleep(seconds)

    found = Checker(source, cache, ns, grace=0.05, sleep=sleep).round()
    assert found.compared == 3 and found.suspects == 1 and found.inconsistent == []


def test_no_false_alarms_under_a_concurrent_write_load(
    backends: tuple[Source, Cache, str], postgres_srv: PostgresServer, redis_srv: RedisServer,
) -> None:
    source, cache, ns = backends
    stop, errors, writes = threading.Event(), [], [0]
    with writethrough.open(postgres_srv.url, redis_srv.url, namespace=ns) as store:
        _warm(store, 30)

        def load(seed: int) -> None:
            i = 0
            try:
                while not stop.is_set():
                    key = f"k{(i * 7 + seed) % 30}"
                    store.put(key, {"i": i, "by": seed})
                    store.get(key)
                    writes[0] += 1
                    i += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=load, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        checker, window = Checker(source, cache, ns, grace=0.5, sample=1000), Window(60.0)
        try:
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                window.add(checker.round())
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    report = window.report(ns, 0.5)
    assert not errors
    print(f"\n{writes[0]} writes; {report.rounds} rounds, {report.compared} compared, "
          f"{report.suspects} differed at first look, {report.inconsistent} inconsistent")
    assert report.compared > 0 and writes[0] > 100
    assert report.inconsistent == 0, [a.to_json() for a in report.keys]


def test_nines_and_bad_settings(backends: tuple[Source, Cache, str]) -> None:
    source, cache, ns = backends
    assert nines(3000, 0) == pytest.approx(3.0) and nines(1000, 1) == pytest.approx(3.0)
    assert nines(0, 0) == 0.0
    with pytest.raises(writethrough.ConfigError):
        Checker(source, cache, ns, grace=-1)
    with pytest.raises(writethrough.ConfigError):
        Checker(source, cache, ns, sample=0)


def test_watch_prints_a_line_per_round(
    backends: tuple[Source, Cache, str], postgres_srv: PostgresServer, redis_srv: RedisServer,
    capsys: pytest.CaptureFixture[str], tmp_path: Any,
) -> None:
    ns = backends[2]
    with writethrough.open(postgres_srv.url, redis_srv.url, namespace=ns) as store:
        _warm(store, 10)
    keys = tmp_path / "keys.txt"
    keys.write_text("k1\nk2\nnope\n")
    common = ["check", "--source", postgres_srv.url, "--cache", redis_srv.url, "--namespace", ns]
    assert main([*common, "--watch", "--rounds", "2", "--interval", "0", "--grace", "0"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "compared" in ln]
    assert len(lines) == 2 and "10 compared" in lines[0] and "last 3600 s: 20 compared" in lines[1]
    assert main([*common, "--keys", str(keys), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["sampled"], data["compared"], data["inconsistent"]) == (3, 2, 0)
    assert main([*common, "--source", "postgresql://nobody@127.0.0.1:1/x"]) == 1  # server down: 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


@pytest.mark.cluster
def test_scan_covers_every_node_of_a_cluster(cluster_srv: Any, postgres_srv: PostgresServer) -> None:
    ns = unique_namespace("chk")
    with writethrough.open(postgres_srv.url, cluster_srv.url, namespace=ns) as store:
        _warm(store, 60)  # keys hash to every master
        v = store.source.read("k5").version
        store.cache.set(f"wt:{ns}:k5", Entry.value(v - 1, b'{"i":"old"}'), ttl=300.0)
        found = Checker(store.source, store.cache, ns, grace=0.05).round()
        assert found.compared == 60 and [(a.key, a.kind) for a in found.inconsistent] == [("k5", "stale")]
        for i in range(60):
            store.delete(f"k{i}")
