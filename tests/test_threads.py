"""Many threads putting and getting the same keys never leave the cache behind the DB."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from writethrough import CacheOutcome, Store
from writethrough.protocol import Kind

MakeStore = Callable[..., Store]
KEYS = [f"k{i}" for i in range(4)]


@pytest.mark.parametrize("strategy", ["write-through", "invalidate"])
def test_concurrent_puts_gets_and_evictions(make_any_store: MakeStore, strategy: str) -> None:
    store = make_any_store(strategy=strategy, write_budget=1.0)
    acked: dict[str, int] = dict.fromkeys(KEYS, 0)
    lock = threading.Lock()
    violations: list[str] = []
    outcomes: list[CacheOutcome] = []
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            key = rng.choice(KEYS)
            if rng.random() < 0.4:
                result = store.put(key, {"by": seed})
                # PENDING_REPAIR (a timeout on a loaded machine) counts too: this
                # process reads a pending key from the DB, so the floor still holds.
                outcomes.append(result.cache)
                with lock:
                    acked[key] = max(acked[key], result.version)
            else:
                with lock:
                    floor = acked[key]
                got = store.get_versioned(key)
                version = 0 if got is None else got.version
                if version < floor:
                    violations.append(f"{key}: read v{version} after ack of v{floor}")

    def evictor() -> None:
        rng = random.Random(99)
        while not stop.is_set():
            store.cache.delete(f"wt:{store.namespace}:{rng.choice(KEYS)}")
            stop.wait(0.002)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    chaos = threading.Thread(target=evictor)
    chaos.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    chaos.join()
    assert violations == []
    assert len(outcomes) > 100 and CacheOutcome.FAILED not in outcomes
    for key in KEYS:
        row = store.source.read(key)
        entry = store.cache.get(f"wt:{store.namespace}:{key}")
        if entry is not None and entry.kind is Kind.VALUE:
            assert entry.version == row.version, f"{key}: cache v{entry.version}, DB v{row.version}"
        assert store.get_versioned(key) is not None
        assert store.get_versioned(key).version == row.version  # type: ignore[union-attr]
