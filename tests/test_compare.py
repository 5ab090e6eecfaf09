"""``writethrough.tools.compare``: the seeded workload and what each strategy costs."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import writethrough
from writethrough.store import ProtocolName
from writethrough.tools.compare import (
    CompareResult,
    Op,
    Workload,
    _percentile_us,
    compare,
    generate,
    initial_profiles,
    run_strategy,
)

SMALL = Workload(updates=300, keys=100)


@pytest.fixture(scope="module")
def small_result() -> CompareResult:
    return compare(workload=SMALL)


# -- the workload ----------------------------------------------------------------


def test_same_seed_same_ops_other_seed_other_ops() -> None:
    assert generate(Workload(updates=200, keys=50, seed=7)) == generate(
        Workload(updates=200, keys=50, seed=7)
    )
    assert generate(Workload(updates=200, keys=50, seed=7)) != generate(
        Workload(updates=200, keys=50, seed=8)
    )
    assert initial_profiles(SMALL) == initial_profiles(Workload(updates=300, keys=100))


def test_each_write_is_followed_by_its_read_backs_then_background_reads() -> None:
    workload = Workload(updates=50, keys=20, reads_after_write=2, background_reads_per_update=3)
    ops = generate(workload)
    assert len(ops) == 50 * (1 + 2 + 3)
    for start in range(0, len(ops), 6):
        write, *rest = ops[start : start + 6]
        assert write.kind == "write" and isinstance(write.value, dict)
        assert [op.kind for op in rest] == ["read_back", "read_back", "read", "read", "read"]
        assert all(op.key == write.key for op in rest[:2])
    keys = {op.key for op in ops}
    assert keys <= {f"user:{i}" for i in range(20)}


def test_background_reads_are_zipf_popular() -> None:
    ops = generate(Workload(updates=2000, keys=100, reads_after_write=0))
    counts = Counter(op.key for op in ops if op.kind == "read")
    assert counts.most_common(1)[0][0] == "user:0"
    assert counts["user:0"] > 5 * counts.get("user:50", 0)


def test_profiles_are_about_value_bytes() -> None:
    op = generate(Workload(updates=1, keys=1, value_bytes=200))[0]
    assert op.value is not None and set(op.value) == {"name", "balance", "revision", "bio"}
    assert 190 <= len(json.dumps(op.value, separators=(",", ":"))) <= 210


@pytest.mark.parametrize(
    "bad", [{"updates": 0}, {"keys": -1}, {"reads_after_write": -1}, {"zipf_s": float("nan")}]
)
def test_bad_workloads_are_config_errors(bad: dict[str, float]) -> None:
    with pytest.raises(writethrough.ConfigError):
        Workload(**bad)  # type: ignore[arg-type]


# -- the measurements ------------------------------------------------------------


def test_read_after_write_write_through_costs_nothing_invalidate_one_read(
    small_result: CompareResult,
) -> None:
    through = small_result.get("write-through")
    invalidate = small_result.get("invalidate")
    assert through.extra_db_reads_per_write == 0.0
    assert invalidate.extra_db_reads_per_write == 1.0
    for result in (through, invalidate):
        assert result.stale_reads == 0
        assert result.writes == 300
        assert result.reads == 300 * (1 + 4)
        assert result.read_backs == 300
        assert result.background_db_reads == 0  # the read-back refilled the key
        assert result.db_reads == result.read_back_db_reads + result.background_db_reads
    assert through.outcomes == {"updated": 300}
    assert invalidate.outcomes == {"invalidated": 300}
    assert through.hit_ratio == 1.0
    assert invalidate.hit_ratio == pytest.approx(1200 / 1500)


def test_latencies_are_positive_microseconds(small_result: CompareResult) -> None:
    for result in small_result.strategies:
        assert 0 < result.write_p50_us <= result.write_p99_us
        assert 0 < result.read_p50_us <= result.read_p99_us


def test_extrapolation_is_computed_from_the_measurements(small_result: CompareResult) -> None:
    sentence = small_result.extrapolation()
    assert sentence == (
        "At 1,000,000 updates/day, invalidate costs ~1,000,000 extra DB queries/day; "
        "write-through ~0."
    )
    small_result.get("invalidate").read_back_db_reads = 150  # half as many
    try:
        assert "invalidate costs ~500,000 extra" in small_result.extrapolation()
    finally:
        small_result.get("invalidate").read_back_db_reads = 300


def test_json_shape(small_result: CompareResult) -> None:
    data = json.loads(json.dumps(small_result.to_json()))
    assert set(data) == {"strategies", "workload"}
    assert [s["strategy"] for s in data["strategies"]] == ["write-through", "invalidate"]
    required = {
        "strategy", "writes", "reads", "hit_ratio", "db_reads", "extra_db_reads_per_write",
        "stale_reads", "read_back_db_reads", "background_db_reads", "write_p50_us",
        "write_p99_us", "read_p50_us", "read_p99_us", "outcomes",
        "extra_db_queries_per_day_at_1m_updates",
    }  # fmt: skip
    for entry in data["strategies"]:
        assert required <= set(entry)
    assert data["strategies"][1]["extra_db_queries_per_day_at_1m_updates"] == 1_000_000
    assert data["strategies"][0]["extra_db_queries_per_day_at_1m_updates"] == 0
    workload = data["workload"]
    for name in (
        "updates",
        "keys",
        "reads_after_write",
        "background_reads_per_update",
        "zipf_s",
        "seed",
        "value_bytes",
        "source",
        "cache",
        "protocol",
        "ttl",
    ):
        assert name in workload
    assert workload["updates"] == 300 and workload["keys"] == 100


def test_without_read_backs_the_misses_show_up_apart_in_the_background() -> None:
    result = compare(workload=Workload(updates=300, keys=50, reads_after_write=0))
    invalidate = result.get("invalidate")
    assert invalidate.extra_db_reads_per_write == 0.0
    assert invalidate.background_db_reads > 0
    assert 0 < invalidate.background_miss_ratio < 1
    assert result.get("write-through").background_db_reads == 0
    assert invalidate.stale_reads == 0


def test_naive_protocol_has_the_same_costs_single_threaded() -> None:
    result = compare(workload=Workload(updates=200, keys=50), protocol="naive")
    assert result.get("write-through").extra_db_reads_per_write == 0.0
    assert result.get("invalidate").extra_db_reads_per_write == 1.0


def test_two_read_backs_still_cost_one_db_read() -> None:
    result = compare(workload=Workload(updates=200, keys=50, reads_after_write=2))
    assert result.get("invalidate").extra_db_reads_per_write == 1.0
    assert result.get("write-through").extra_db_reads_per_write == 0.0


def test_each_strategy_gets_its_own_namespace(tmp_path: Path) -> None:
    db = tmp_path / "given.db"
    result = compare(f"sqlite:///{db}", workload=Workload(updates=50, keys=10))
    assert not result.source_temporary
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT namespace, count(*) FROM writethrough_items GROUP BY namespace"
        ).fetchall()
    assert sorted(n for n, _ in rows) == sorted(s.namespace for s in result.strategies)
    assert all(count == 10 for _, count in rows)


def test_the_default_temporary_source_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = compare(workload=Workload(updates=20, keys=5))
    assert result.source_temporary
    assert list(tmp_path.iterdir()) == []


def test_run_strategy_reports_progress(tmp_path: Path) -> None:
    workload = Workload(updates=100, keys=10)
    calls: list[tuple[str, int, int]] = []
    with writethrough.open(
        source=f"sqlite:///{tmp_path / 'p.db'}", strategy="invalidate", namespace="p"
    ) as store:
        result = run_strategy(
            store,
            generate(workload),
            warmup=initial_profiles(workload),
            progress=lambda *args: calls.append(args),
        )
    assert result.extra_db_reads_per_write == 1.0
    total = 10 * 2 + 100 * 6
    assert calls[0] == ("invalidate", 20, total)
    assert calls[-1] == ("invalidate", total, total)
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)


@pytest.mark.parametrize(
    ("protocol", "method", "stale", "outcome"),
    [("naive", "set", 1, "failed"), ("versioned", "write", 0, "pending_repair")],
)
def test_a_failed_cache_update_shows_as_stale_reads_only_under_naive(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    protocol: ProtocolName,
    method: str,
    stale: int,
    outcome: str,
) -> None:
    """Race 1: the DB commits v2, the cache update fails; the cache still holds v1."""
    with writethrough.open(
        source=f"sqlite:///{tmp_path / 's.db'}", namespace="s", protocol=protocol
    ) as store:
        real = getattr(store.cache, method)

        def flaky(key: str, *args: Any, **kwargs: Any) -> Any:
            version = args[0].version if method == "set" else args[1]
            if version >= 2:
                raise writethrough.CacheTimeout("injected")
            return real(key, *args, **kwargs)

        monkeypatch.setattr(store.cache, method, flaky)
        ops = [Op("write", "user:0", {"v": 2}), Op("read_back", "user:0")]
        result = run_strategy(store, ops, warmup=[("user:0", {"v": 1})])
    assert result.outcomes == {outcome: 1}
    assert result.stale_reads == stale


def test_bad_strategy_or_protocol_is_a_config_error() -> None:
    with pytest.raises(writethrough.ConfigError):
        compare(workload=Workload(updates=1, keys=1), strategies=["write-back"])  # type: ignore[list-item]
    with pytest.raises(writethrough.ConfigError):
        compare(workload=Workload(updates=1, keys=1), protocol="eventual")  # type: ignore[arg-type]
    with pytest.raises(writethrough.ConfigError):
        compare("foo://x", workload=Workload(updates=1, keys=1))


def test_percentiles_use_nearest_rank() -> None:
    samples = sorted(range(1000, 101_000, 1000))  # 1..100 µs
    assert _percentile_us(samples, 50) == 50.0
    assert _percentile_us(samples, 99) == 99.0
    assert _percentile_us([], 50) == 0.0


# -- new keys and DB latency -------------------------------------------------------


def test_new_keys_share_creates_keys_and_reads_them_back() -> None:
    workload = Workload(updates=400, keys=50, new_keys=0.25)
    ops = generate(workload)
    writes = [op for op in ops if op.kind == "write"]
    created = [op for op in writes if op.new]
    assert 60 <= len(created) <= 140  # ~100 of 400
    assert len({op.key for op in created}) == len(created)  # each a key never seen before
    assert all(op.key.startswith("new:") for op in created)
    for i, op in enumerate(ops):
        if op.kind == "write":
            assert ops[i + 1] == Op("read_back", op.key, None, op.new)
    # Without new keys the ops are the ones the seed always gave.
    assert generate(Workload(updates=50, keys=10)) == generate(
        Workload(updates=50, keys=10, new_keys=0.0)
    )
    with pytest.raises(writethrough.ConfigError):
        Workload(new_keys=1.5)


def test_read_after_create_and_read_after_update_are_reported_apart() -> None:
    result = compare(workload=Workload(updates=300, keys=50, new_keys=0.3))
    for s in result.strategies:
        assert s.creates > 0 and s.create_read_backs == s.creates
        assert s.stale_reads == 0
        # Whatever the store does on a cold write, the figures add up.
        assert s.read_back_db_reads == s.create_read_back_db_reads + round(
            s.extra_db_reads_per_update * (s.writes - s.creates)
        )
        assert 0.0 <= s.extra_db_reads_per_create <= 1.0
    through, invalidate = result.get("write-through"), result.get("invalidate")
    assert through.extra_db_reads_per_update == 0.0  # a warm key: the read-back is a hit
    assert invalidate.extra_db_reads_per_update == 1.0
    assert invalidate.extra_db_reads_per_create == 1.0
    data = result.to_json()["strategies"][0]
    assert {"creates", "extra_db_reads_per_create", "create_read_back_p50_us"} <= set(data)


def test_db_latency_on_sqlite_delays_every_db_call_through_a_wrapper() -> None:
    result = compare(workload=Workload(updates=40, keys=10), db_latency_ms=2.0)
    assert (result.db_latency_ms, result.db_latency_how) == (2.0, "source wrapper")
    through, invalidate = result.get("write-through"), result.get("invalidate")
    # Lower bounds only: every write is a DB call that sleeps 2 ms first.
    assert through.write_p50_us >= 2000 and invalidate.write_p50_us >= 2000
    assert invalidate.read_back_p50_us >= 2000  # a miss: one DB read
    assert through.stale_reads == invalidate.stale_reads == 0
    assert result.to_json()["workload"]["db_latency_how"] == "source wrapper"


@pytest.mark.postgres
def test_db_latency_on_postgres_goes_through_the_fault_proxy(postgres_srv: Any) -> None:
    result = compare(
        postgres_srv.url, workload=Workload(updates=30, keys=10), db_latency_ms=2.0
    )
    assert result.db_latency_how == "fault proxy"
    assert "127.0.0.1:" in result.source  # the URL shown is the proxy's, password hidden
    for s in result.strategies:
        assert s.write_p50_us >= 2000  # at least one round trip through the proxy
        assert s.stale_reads == 0
    assert result.get("invalidate").read_back_p50_us >= 2000


def test_db_latency_keeps_user_password_and_query_and_rejects_nonsense() -> None:
    from writethrough.tools.dblatency import _with_host, db_latency

    url = "postgresql://app:s%40cret@db.example:5433/app?sslmode=disable"
    assert _with_host(url, "127.0.0.1", 4000) == (
        "postgresql://app:s%40cret@127.0.0.1:4000/app?sslmode=disable"
    )
    assert _with_host("postgresql://h?x=1", "127.0.0.1", 5) == "postgresql://127.0.0.1:5/?x=1"
    for bad in (-1, float("nan"), "5", True):
        with pytest.raises(writethrough.ConfigError), db_latency("sqlite:///x.db", bad):  # type: ignore[arg-type]
            pass
    with (
        pytest.raises(writethrough.ConfigError, match="one TCP host"),
        db_latency("postgresql://a:1,b:2/db", 1.0),
    ):
        pass
