"""Redis and Redis Cluster specifics, against real servers (no mocks).

The behaviour suite (test_store, test_races, test_threads, ...) already runs on
Redis and the cluster; this file adds what only a real server can show: the Lua
script agrees with the pure protocol on every state, scripts come back after a
restart, FLUSHALL, a moving slot, faults on the wire, and the herd.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import writethrough
from servers import ServerUnavailable, redis_server, unavailable
from writethrough import CacheOutcome
from writethrough.caches.redis import RedisCache
from writethrough.caches.redis_codec import MARKER, decode, encode
from writethrough.protocol import (
    Entry,
    Kind,
    decide_fill,
    decide_lease,
    decide_renew,
    decide_write,
    visible,
)
from writethrough.tools.faultproxy import FaultProxy
from writethrough.tools.faults import FaultySource

versions = st.one_of(st.integers(0, 2**64), st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1]))
entries = st.one_of(
    st.none(),
    st.builds(Entry.value, versions, st.binary(max_size=20)),
    st.builds(Entry.tombstone, versions, st.booleans()),
    st.builds(Entry.lease, st.binary(min_size=8, max_size=8), versions, st.booleans()),
)
TAG = b"0123456789abcdef"


@given(entries.filter(lambda e: e is not None))
def test_entries_encode_and_decode(entry: Entry) -> None:
    assert decode(encode(entry, TAG), TAG) == entry
    assert decode(encode(entry, TAG), b"fedcba9876543210") is None, "another lifetime: absent"


@pytest.fixture
def cache(redis_srv: Any) -> Iterator[RedisCache]:
    cache = writethrough.caches.open_cache(redis_srv.url)
    assert isinstance(cache, RedisCache)
    cache.get("wt:lua:k")  # connect: the lifetime marker is set
    yield cache
    cache.close()


def _set(cache: RedisCache, key: str, entry: Entry | None) -> None:
    cache.client.delete(key)
    if entry is not None:
        cache.client.set(key, encode(entry, cache.client.get(MARKER)))


def _expected(current: Entry | None, floor: int) -> Entry | None:
    return visible(current, floor)


def _row_ok(entry: Entry | None) -> bool:
    return entry is None or entry.version % 10**19 <= 2**63 - 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    current=entries,
    kind=st.sampled_from([Kind.VALUE, Kind.TOMBSTONE]),
    version=versions.filter(lambda v: v > 0),
    token=st.sampled_from([None, b"tokenAAA", b"tokenBBB"]),
    floor=st.sampled_from([0, 2**53, 10**19]),
)
def test_lua_write_agrees_with_the_pure_protocol(
    cache: RedisCache, current: Entry | None, kind: Kind, version: int, token: bytes | None, floor: int
) -> None:
    _set(cache, "wt:lua:k", current)
    seen = visible(current, floor) if _row_ok(current) else None
    expected = decide_write(seen, kind, version, b"pay:load", token)
    outcome = cache.write("wt:lua:k", kind, version, b"pay:load", ttl=60, tombstone_ttl=10,
                          token=token, floor=floor)
    assert outcome is expected.outcome
    assert cache.get("wt:lua:k") == (expected.store or current)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(current=entries, token=st.sampled_from([b"tokenAAA", b"tokenBBB"]), filled=entries,
       floor=st.sampled_from([0, 2**53]))
def test_lua_lease_and_fill_agree_with_the_pure_protocol(
    cache: RedisCache, current: Entry | None, token: bytes, filled: Entry | None, floor: int
) -> None:
    _set(cache, "wt:lua:k", current)
    seen = visible(current, floor) if _row_ok(current) else None
    lease = decide_lease(seen, token, floor)
    outcome, found = cache.lease("wt:lua:k", token, lease_ttl=5, floor=floor)
    assert outcome is lease.outcome
    assert found == (None if outcome.value == "granted" else seen)
    assert cache.get("wt:lua:k") == (lease.store or current)
    if filled is None or filled.kind is Kind.LEASE:
        return
    _set(cache, "wt:lua:k", current)
    stored = decide_fill(seen, token, filled)
    assert cache.fill("wt:lua:k", token, filled, ttl=60, floor=floor) is (stored is not None)
    assert cache.get("wt:lua:k") == (stored or current)
    assert cache.renew("wt:lua:k", token, lease_ttl=5, floor=floor) is decide_renew(
        visible(stored or current, floor), token)


def test_scripts_come_back_after_a_restart_and_flushall() -> None:
    try:
        manager = redis_server()
        server = manager.__enter__()
    except ServerUnavailable as exc:
        unavailable(f"Redis: {exc}")
    try:
        with writethrough.open(source="sqlite:///:memory:", cache=server.url) as store:
            store.put("k", 1)
            store.get("k")
            server.restart()  # data and the script cache are gone
            sha = store.cache._script.sha  # type: ignore[attr-defined]
            assert redis.Redis(port=server.port).script_exists(sha) == [False]
            # The first command after a restart may meet the dead pooled connection;
            # the ladder retries it.
            result = store.put("k", 2)
            assert result.cache is not CacheOutcome.PENDING_REPAIR
            assert store.get("k") == 2
            redis.Redis(port=server.port).flushall()
            assert store.put("k", 3).cache is CacheOutcome.UPDATED  # cold key: writer lease
            assert store.get("k") == 3
    finally:
        manager.__exit__(None, None, None)


def test_a_moving_cluster_slot_is_followed(cluster_srv: Any) -> None:
    from servers import keyslot

    with writethrough.open(source="sqlite:///:memory:", cache=cluster_srv.url, namespace="mv") as store:
        store.put("user:1", "a")
        store.get("user:1")
        slot = keyslot("wt:mv:user:1")
        owner = cluster_srv.slot_owner(slot)
        target = next(p for p in cluster_srv.ports if p != owner)
        cluster_srv.move_slot(slot, target, finish=False)  # ASK while migrating
        assert store.put("user:1", "b").cache is CacheOutcome.UPDATED
        assert store.get("user:1") == "b"
        cluster_srv.move_slot(slot, target)  # MOVED afterwards
        assert store.put("user:1", "c").cache is CacheOutcome.UPDATED
        assert store.get("user:1") == "c"
        assert store.stats.cache_write_failures == 0


@pytest.fixture
def proxy(redis_srv: Any) -> Iterator[FaultProxy]:
    port = int(redis_srv.url.rsplit(":", 1)[1].split("/")[0])
    with FaultProxy("127.0.0.1", port) as p:
        yield p


@pytest.mark.parametrize("protocol", ["naive", "versioned"])
def test_the_seed_race_cache_times_out_after_the_db_commit(proxy: FaultProxy, protocol: str) -> None:
    """DB write succeeds, the cache times out. Naive: old value until TTL; versioned: repaired."""
    url = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.05"
    with writethrough.open(
        source="sqlite:///:memory:", cache=url, protocol=protocol, namespace=f"seed{protocol}",
        repair_interval=0.02,
    ) as store:
        store.put("acct", {"balance": 500})
        store.get("acct")
        store.get("acct")
        proxy.blackhole()
        started = time.monotonic()
        result = store.put("acct", {"balance": 400})
        elapsed = time.monotonic() - started
        assert elapsed < 0.6, f"the ladder took {elapsed:.3f}s: something retried on its own"
        proxy.reset()  # the held request dies with its connection: the write is lost
        if protocol == "naive":
            assert result.cache is CacheOutcome.FAILED
            proxy.pass_through()
            reads = [store.get("acct") for _ in range(5)]
            assert reads == [{"balance": 500}] * 5, "naive: the old value stays until the TTL"
            return
        assert result.cache is CacheOutcome.PENDING_REPAIR
        assert store.get("acct") == {"balance": 400}  # read-your-writes, from the DB
        proxy.pass_through()
        deadline = time.monotonic() + 5
        while len(store.repairs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(store.repairs) == 0, "the repair worker fixed the cache"
        reads = [store.get("acct") for _ in range(20)]
        assert reads == [{"balance": 400}] * 20
        assert store.cache.get(f"wt:{store.namespace}:acct").version == result.version  # type: ignore[union-attr]


def test_reads_never_fail_while_the_cache_is_down(proxy: FaultProxy) -> None:
    url = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.05"
    with writethrough.open(source="sqlite:///:memory:", cache=url, namespace="down") as store:
        store.put("k", 1)
        proxy.refuse()
        assert store.get("k") == 1
        assert store.put("k", 2).cache is CacheOutcome.PENDING_REPAIR
        assert [store.get("k") for _ in range(20)] == [2] * 20
        assert store.stats.source_reads >= 20


@pytest.mark.parametrize("protocol", ["versioned", "naive"])
def test_herd_of_200_threads_on_one_cold_key(redis_srv: Any, protocol: str) -> None:
    with writethrough.open(
        source="sqlite:///:memory:", cache=f"{redis_srv.url}?socket_timeout=0.5",
        namespace=f"herd{protocol}",
        protocol=protocol, lease_wait=2.0, cache_options={"max_connections": 256},
    ) as store:
        store.put("hot", "v")
        store.cache.delete(f"wt:{store.namespace}:hot")
        source = FaultySource(store.source)
        source.fail("read", lambda: time.sleep(0.02))  # a 20 ms query, so the herd overlaps
        store.source = source  # type: ignore[assignment]
        barrier = threading.Barrier(200)
        results: list[object] = []

        def reader() -> None:
            barrier.wait()
            results.append(store.get("hot"))

        threads = [threading.Thread(target=reader) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == ["v"] * 200
        loads = source.calls.get("read", 0)
        print(f"\nherd ({protocol}): 200 concurrent misses -> {loads} DB loads")
        if protocol == "versioned":
            assert loads <= 3, f"{loads} DB loads for one key"


@pytest.mark.parametrize("fault", ["delay", "drop", "blackhole", "reset"])
def test_no_stale_read_after_an_acknowledged_write_under_wire_faults(
    proxy: FaultProxy, fault: str
) -> None:
    """Writes and reads through a faulty wire: every read that starts after a write was
    acknowledged UPDATED/INVALIDATED returns that version or newer; after healing and
    repair the cache agrees with the DB."""
    import random

    url = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.03"
    with writethrough.open(
        source="sqlite:///:memory:", cache=url, namespace=f"wire{fault}{time.time_ns()}",
        repair_interval=0.02, write_budget=0.05,
    ) as store:
        rng = random.Random(7)
        keys = [f"k{i}" for i in range(5)]
        acked = dict.fromkeys(keys, 0)
        outcomes: dict[str, int] = {}
        for i in range(300):
            if i == 50:
                {"delay": lambda: proxy.delay(0.02, jitter=0.03),
                 "drop": lambda: proxy.drop(0.3, seed=1, stall=0.05),
                 "blackhole": proxy.blackhole,
                 "reset": lambda: None}[fault]()
            if fault == "reset" and i % 20 == 0:
                proxy.reset()
            if i == 250:
                proxy.pass_through()
            key = rng.choice(keys)
            if rng.random() < 0.4:
                result = store.put(key, i)
                outcomes[result.cache.value] = outcomes.get(result.cache.value, 0) + 1
                if result.cache in (CacheOutcome.UPDATED, CacheOutcome.INVALIDATED):
                    acked[key] = max(acked[key], result.version)
            else:
                got = store.get_versioned(key)
                version = 0 if got is None else got.version
                assert version >= acked[key], f"stale read of {key}: v{version} < v{acked[key]}"
        deadline = time.monotonic() + 5
        while len(store.repairs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(store.repairs) == 0
        time.sleep(0.1)  # let any request held on the wire land
        for key in keys:
            row = store.source.read(key)
            entry = store.cache.get(f"wt:{store.namespace}:{key}")
            if entry is not None and entry.kind is Kind.VALUE:
                assert entry.version == row.version
            got = store.get_versioned(key)
            assert got is not None and got.version == row.version
        print(f"\n{fault}: outcomes {outcomes}, stats {store.stats.snapshot()}")


def test_rediss_urls_use_tls_connections() -> None:
    from writethrough.caches.redis import async_from_url, from_url
    from writethrough.urls import parse_url

    parsed = parse_url("rediss://u:p%40ss@cache.example:6380/2?socket_timeout=0.2", kind="cache",
                       schemes={"rediss": ""})
    sync_cache = from_url(parsed)
    kwargs = sync_cache.client.connection_pool.connection_kwargs
    assert issubclass(sync_cache.client.connection_pool.connection_class, redis.SSLConnection)
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("cache.example", 6380, 2, "p@ss")
    assert kwargs["socket_timeout"] == 0.2
    async_cache = async_from_url(parsed)
    assert issubclass(async_cache.client.connection_pool.connection_class, redis.asyncio.SSLConnection)
    assert parsed.redacted() == "rediss://u:***@cache.example:6380/2?socket_timeout=0.2"


def test_more_threads_than_pooled_connections_wait_for_a_connection(redis_srv: Any) -> None:
    with writethrough.open(source="sqlite:///:memory:", cache=f"{redis_srv.url}?socket_timeout=0.5",
                           namespace="pool",
                           cache_options={"max_connections": 4}) as store:
        store.put("k", 1)
        store.get("k")
        results: list[object] = []
        threads = [threading.Thread(target=lambda: results.append(store.get("k"))) for _ in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [1] * 64
        assert store.stats.cache_read_failures == 0
