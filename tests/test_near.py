"""The near cache (``redis://...?near=N``): an L1 kept coherent by Redis client tracking.

Real Redis throughout (the tests' own server). What is asserted: hits come from the
L1 without a round trip; another process's write reaches the L1 within a bound;
the writer reads its own write; a read racing an invalidation never fills an older
value; losing the tracking connection flushes and disables the L1. The size of the
staleness window is measured by ``writethrough bench`` (row "near cache"), not here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import writethrough
from conftest import unique_namespace
from writethrough import ConfigError
from writethrough.caches.near import AsyncNearCache, Coherence, NearCache, split_near
from writethrough.protocol import Entry

pytestmark = pytest.mark.redis
ROOMY = "socket_timeout=1&socket_connect_timeout=1"


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return condition()


@pytest.fixture
def stores(redis_srv: Any, tmp_path: Path) -> Iterator[tuple[writethrough.Store, writethrough.Store]]:
    """(a reader with a near cache, a writer without): two processes' view of one Redis."""
    namespace = unique_namespace("near")
    source = f"sqlite:///{tmp_path}/near.db"
    reader = writethrough.open(
        source=source, cache=f"{redis_srv.url}?{ROOMY}&near=1000", namespace=namespace
    )
    writer = writethrough.open(source=source, cache=f"{redis_srv.url}?{ROOMY}", namespace=namespace)
    assert isinstance(reader.cache, NearCache) and reader.cache.tracker.connected.is_set()
    yield reader, writer
    reader.close()
    writer.close()


def _warm(store: writethrough.Store, key: str) -> None:
    """Read until the value sits in the L1 (the first reads fill Redis, then the L1)."""
    cache = store.cache
    assert isinstance(cache, NearCache)
    ckey = f"wt:{store.namespace}:{key}"
    assert _wait(lambda: store.get(key) is not None and cache.coherence.l1.get(ckey) is not None)


class _CountingInner:
    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.gets = inner, inner.name, 0

    def get(self, key: str) -> Entry | None:
        self.gets += 1
        found: Entry | None = self.inner.get(key)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_hits_come_from_the_l1_without_a_round_trip(stores: Any) -> None:
    reader, writer = stores
    writer.put("user:1", {"name": "Ann"})
    _warm(reader, "user:1")
    counting = _CountingInner(reader.cache.inner)
    reader.cache.inner = counting
    hits = reader.cache.coherence.hits
    for _ in range(100):
        assert reader.get("user:1") == {"name": "Ann"}
    assert counting.gets == 0
    assert reader.cache.coherence.hits == hits + 100


def test_another_processs_write_reaches_the_l1_within_a_bound(stores: Any) -> None:
    reader, writer = stores
    writer.put("user:2", {"v": 0})
    for i in range(1, 30):
        _warm(reader, "user:2")
        acked = writer.put("user:2", {"v": i}).version
        # Bounded, not zero: the invalidation message arrives shortly after the ack.
        assert _wait(lambda: reader.get_versioned("user:2").version >= acked, 2.0), i  # noqa: B023
    assert reader.cache.coherence.invalidations > 0


def test_the_writer_always_reads_its_own_write(stores: Any) -> None:
    reader, writer = stores
    for i in range(100):
        reader.put("user:3", {"v": i})  # the near-cache process writes...
        assert reader.get("user:3") == {"v": i}  # ...and reads it back at once
        if i % 10 == 0:
            writer.put("user:3", {"v": -i})  # interleaved writes from the other process
            assert _wait(lambda: reader.get("user:3") == {"v": -i}, 2.0)  # noqa: B023


def test_a_read_racing_an_invalidation_does_not_fill_the_l1() -> None:
    coherence = Coherence(100, 60.0)
    coherence.tracking(True)
    old = Entry.value(1, b"old")
    # The read began, then the key changed (the message came in before the reply).
    generation = coherence.begin("k")
    coherence.invalidate("k")
    coherence.end("k", generation, old)
    assert coherence.lookup("k") is None
    # Two overlapping reads: the invalidation spoils both.
    g1, g2 = coherence.begin("k"), coherence.begin("k")
    coherence.invalidate("k")
    coherence.end("k", g1, old)
    coherence.end("k", g2, old)
    assert coherence.lookup("k") is None
    # A read that began before tracking was lost (and came back) does not fill either.
    generation = coherence.begin("k")
    coherence.tracking(False)
    coherence.tracking(True)
    coherence.end("k", generation, old)
    assert coherence.lookup("k") is None
    # Overlapping reads that end newest-first: the older one does not replace the newer.
    g_old, g_new = coherence.begin("k"), coherence.begin("k")
    coherence.end("k", g_new, Entry.value(2, b"new"))
    coherence.end("k", g_old, old)
    assert coherence.lookup("k") == Entry.value(2, b"new")
    coherence.invalidate("k")
    # Reads of a hot key that overlap without end still fill once the invalidation is
    # behind them (only reads that began before it are spoiled).
    spoiled = coherence.begin("h")
    coherence.invalidate("h")
    fresh = coherence.begin("h")
    coherence.end("h", fresh, Entry.value(3, b"h3"))
    assert coherence.lookup("h") == Entry.value(3, b"h3")
    coherence.end("h", spoiled, Entry.value(2, b"h2"))
    assert coherence.lookup("h") == Entry.value(3, b"h3")
    # A spoiled read that saw a newer version than the L1 holds drops the older one
    # (its caller must not read back in time next).
    coherence.end("o", coherence.begin("o"), Entry.value(4, b"o4"))
    late = coherence.begin("o")
    coherence.invalidate("x")  # any invalidation after it began spoils nothing of "o"...
    coherence.invalidate("o")  # ...this one does
    coherence.end("o", coherence.begin("o"), Entry.value(4, b"o4"))  # refilled meanwhile
    coherence.end("o", late, Entry.value(5, b"o5"))
    assert coherence.lookup("o") is None
    # An undisturbed read fills; tombstones and leases never do.
    coherence.end("k", coherence.begin("k"), old)
    assert coherence.lookup("k") == old
    coherence.end("t", coherence.begin("t"), Entry.tombstone(2))
    assert coherence.lookup("t") is None
    # A FLUSHALL message (no key list) empties the L1.
    coherence.invalidate(None)
    assert coherence.lookup("k") is None


def test_losing_the_tracking_connection_flushes_and_disables_the_l1(
    stores: Any, redis_srv: Any
) -> None:
    reader, writer = stores
    writer.put("user:4", {"v": 1})
    _warm(reader, "user:4")
    cache: NearCache = reader.cache
    reconnects = cache.tracker.reconnects
    # Kill the tracking connection at the server, as a network failure would.
    with redis.Redis.from_url(redis_srv.url, decode_responses=True) as admin:
        ours = [c["id"] for c in admin.client_list() if c.get("name") == "writethrough-near"]
        assert ours
        for client_id in ours:
            admin.client_kill_filter(_id=client_id)
    assert _wait(lambda: cache.tracker.reconnects > reconnects, 5.0)
    # While it was down the L1 was flushed; once back, tracking works again.
    assert _wait(lambda: cache.tracker.connected.is_set(), 5.0)
    assert reader.get("user:4") == {"v": 1}
    writer.put("user:4", {"v": 2})
    assert _wait(lambda: reader.get("user:4") == {"v": 2}, 2.0)


def test_while_tracking_is_off_reads_go_to_redis(stores: Any) -> None:
    reader, writer = stores
    writer.put("user:5", {"v": 1})
    _warm(reader, "user:5")
    reader.cache.coherence.tracking(False)  # as when the connection just dropped
    counting = _CountingInner(reader.cache.inner)
    reader.cache.inner = counting
    assert reader.get("user:5") == {"v": 1}
    assert reader.get("user:5") == {"v": 1}
    assert counting.gets == 2  # nothing served from (or kept in) the L1


def test_async_store_with_a_near_cache(redis_srv: Any, tmp_path: Path) -> None:
    async def run() -> None:
        namespace = unique_namespace("anear")
        source = f"sqlite:///{tmp_path}/anear.db"
        reader = await writethrough.open_async(
            source=source, cache=f"{redis_srv.url}?{ROOMY}&near=100", namespace=namespace
        )
        writer = await writethrough.open_async(
            source=source, cache=f"{redis_srv.url}?{ROOMY}", namespace=namespace
        )
        try:
            assert isinstance(reader.cache, AsyncNearCache)
            await writer.put("k", {"v": 1})
            for _ in range(5):
                assert await reader.get("k") == {"v": 1}
            assert reader.cache.coherence.hits > 0
            await writer.put("k", {"v": 2})
            deadline = time.monotonic() + 2
            while await reader.get("k") != {"v": 2}:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.001)
            await reader.put("k", {"v": 3})
            assert await reader.get("k") == {"v": 3}
        finally:
            await reader.close()
            await writer.close()

    asyncio.run(run())


def test_concurrent_readers_never_go_back_after_an_invalidation(stores: Any) -> None:
    """Readers in threads hammer the key while the other process writes: once a reader has
    seen version v, a later read by it never returns an older one after the L1 caught up."""
    reader, writer = stores
    writer.put("user:6", {"v": 0})
    stop = threading.Event()
    went_back: list[tuple[int, int]] = []

    def read() -> None:
        newest = 0
        while not stop.is_set():
            found = reader.get_versioned("user:6")
            if found is not None:
                if found.version < newest:
                    went_back.append((newest, found.version))
                newest = max(newest, found.version)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 60):
            acked = writer.put("user:6", {"v": i}).version
            assert _wait(lambda: reader.get_versioned("user:6").version >= acked, 2.0)  # noqa: B023
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert went_back == []
    final = writer.get_versioned("user:6")
    assert final is not None
    assert _wait(lambda: reader.get_versioned("user:6") == final, 2.0)


@pytest.mark.parametrize(
    "url",
    [
        "memory://?near=10",
        "redis+cluster://127.0.0.1:7000?near=10",
        "redis://127.0.0.1:6379/0?near=0",
        "redis://127.0.0.1:6379/0?near=ten",
        "redis://127.0.0.1:6379/0?near=10&near_ttl=-1",
        "redis://127.0.0.1:6379/0?near_ttl=5",
    ],
)
def test_bad_near_options_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        writethrough.open(source="sqlite:///:memory:", cache=url)


def test_near_options_are_taken_off_the_url_the_backend_sees() -> None:
    assert split_near("redis://h:1/0?socket_timeout=1&near=5&near_ttl=2") == (
        "redis://h:1/0?socket_timeout=1",
        {"near": "5", "near_ttl": "2"},
    )
    assert split_near("redis://h:1/0?near=5") == ("redis://h:1/0", {"near": "5"})
    assert split_near("redis://h:1/0?socket_timeout=1") == ("redis://h:1/0?socket_timeout=1", {})


def test_a_moved_lifetime_marker_flushes_the_whole_l1() -> None:
    from writethrough.caches.near import INVALIDATE_CHANNEL, Tracker

    coherence = Coherence(100, 60.0)
    coherence.tracking(True)
    tracker = Tracker(coherence, connection_factory=lambda: None)
    for key in ("wt:a:1", "wt:a:2"):
        coherence.end(key, coherence.begin(key), Entry.value(1, b"v"))
    tracker._handle([b"message", INVALIDATE_CHANNEL, [b"wt:a:1"]])
    assert coherence.lookup("wt:a:1") is None and coherence.lookup("wt:a:2") is not None
    tracker._handle([b"message", INVALIDATE_CHANNEL, [b"wt:~epoch"]])  # a new reign
    assert coherence.lookup("wt:a:2") is None
    coherence.end("wt:a:3", coherence.begin("wt:a:3"), Entry.value(1, b"v"))
    tracker._handle([b"message", INVALIDATE_CHANNEL, None])  # FLUSHALL
    assert coherence.lookup("wt:a:3") is None


def test_batches_through_the_near_cache(stores: Any) -> None:
    """get_many serves the L1 first and the rest in one MGET; a batch write drops its keys
    from the L1, so the writing process reads its own write; others' writes arrive."""
    reader, writer = stores
    keys = [f"many:{i}" for i in range(10)]
    writer.put_many({k: i for i, k in enumerate(keys)})
    for key in keys:
        _warm(reader, key)
    hits = reader.cache.coherence.hits
    assert reader.get_many(keys) == {k: i for i, k in enumerate(keys)}
    assert reader.cache.coherence.hits == hits + len(keys)  # all from the L1
    mine = reader.put_many({keys[0]: "mine"})
    assert reader.get_many(keys[:1]) == {keys[0]: "mine"}  # its own write, at once
    acked = writer.put_many({k: -i for i, k in enumerate(keys)})
    assert _wait(lambda: all(v.version >= acked[k].version  # bounded, not zero
                             for k, v in reader.get_many_versioned(keys).items()), 2.0)
    assert acked[keys[0]].version > mine[keys[0]].version
    reader.delete_many(keys[:3])
    assert reader.get_many(keys[:3]) == {}
