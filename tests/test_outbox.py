"""The durable outbox (durability="outbox"): race 4, a writer killed between its
commit and its cache write, repaired from the outbox — with a real SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import writethrough
from conftest import unique_namespace
from writethrough import CacheOutcome, CacheTimeout, ConfigError, Store
from writethrough.cli import main as cli_main
from writethrough.protocol import Kind
from writethrough.tools.faults import FaultyCache

MakeStore = Callable[..., Store]


def outbox_rows(store: Store) -> list[Any]:
    return store.source.outbox_claim(0.0, 1000, 0.0)  # type: ignore[attr-defined, no-any-return]


def test_outbox_rows_are_cleared_off_the_write_path(make_store: MakeStore) -> None:
    store = make_store(durability="outbox", repair_worker=False)
    for i in range(10):
        assert store.put(f"k{i}", i).cache in (CacheOutcome.UPDATED, CacheOutcome.INVALIDATED)
    assert len(outbox_rows(store)) == 10, "one outbox row per write, until cleared"
    store.repair_once()
    assert outbox_rows(store) == []
    assert store.stats.outbox_batches == 1, "all ten cleared in one statement"
    assert store.stats.outbox_repairs == 0


def test_a_failed_cache_write_is_repaired_and_its_row_cleared(make_store: MakeStore) -> None:
    store = make_store(durability="outbox", repair_worker=False)
    store.put("k", 1)
    store.get("k")
    cache = FaultyCache(store.cache)
    store.cache = cache  # type: ignore[assignment]
    cache.fail("write", CacheTimeout("down"))
    assert store.put("k", 2).cache is CacheOutcome.PENDING_REPAIR
    cache.heal()
    store.breaker.success()
    store.repair_once()
    store.repair_once()
    assert outbox_rows(store) == []
    assert store.get("k") == 2


def test_the_outbox_needs_a_source_that_has_one() -> None:
    with pytest.raises(ConfigError, match="protocol='versioned'"):
        writethrough.open(source="sqlite:///:memory:", durability="outbox", protocol="naive")
    with pytest.raises(ConfigError, match="durability"):
        writethrough.open(source="sqlite:///:memory:", durability="sometimes")  # type: ignore[arg-type]


WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import writethrough
    source, cache, namespace, durability = sys.argv[1:5]
    store = writethrough.open(source=source, cache=cache, namespace=namespace,
                              durability=durability, repair_worker=False)
    store.put("acct", {"balance": 500})
    store.get("acct")                          # cached: v1
    real_write = store.cache.write
    def die(*args, **kwargs):                  # committed; killed before the cache write
        os.kill(os.getpid(), signal.SIGKILL)
    store.cache.write = die
    store.put("acct", {"balance": 400})
    """
)


@pytest.mark.parametrize("durability", ["outbox", "best-effort"])
def test_a_writer_killed_between_commit_and_cache_write(
    redis_srv: Any, source_url: str, tmp_path: Path, durability: str
) -> None:
    namespace = unique_namespace("kill")
    done = subprocess.run(
        [sys.executable, "-c", WRITER, source_url, redis_srv.url, namespace, durability],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    with writethrough.open(source=source_url, cache=redis_srv.url, namespace=namespace,
                           repair_worker=False) as reader:
        assert reader.source.read("acct").version == 2, "the DB has the new value"
        entry = reader.cache.get(f"wt:{namespace}:acct")
        assert entry is not None and entry.version == 1, "the cache still has the old one"
        assert reader.get("acct") == {"balance": 500}, "race 4: stale"
    code = cli_main(["repair", "--source", source_url, "--cache", redis_srv.url,
                     "--namespace", namespace, "--once", "--grace", "0"])
    assert code == 0
    with writethrough.open(source=source_url, cache=redis_srv.url, namespace=namespace,
                           repair_worker=False) as reader:
        if durability == "outbox":
            entry = reader.cache.get(f"wt:{namespace}:acct")
            assert entry is not None and entry.kind is Kind.TOMBSTONE and entry.version == 2
            assert reader.get("acct") == {"balance": 400}, "converged from the outbox"
            assert reader.get("acct") == {"balance": 400}
        else:
            assert reader.get("acct") == {"balance": 500}, "without the outbox: stale until the TTL"


def test_repair_command_runs_against_an_empty_outbox(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["repair", "--source", "sqlite:///:memory:", "--cache", "memory://", "--once"]) == 0
    assert "repaired 0 outbox row(s)" in capsys.readouterr().out
