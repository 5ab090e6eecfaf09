"""``writethrough.tools.bench``: the suite runs against real servers and writes its report.

Only shapes and counts are asserted (figures that must hold by construction), never a
timing: the bench is where timings live, as ratios measured side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from writethrough import ConfigError
from writethrough.tools.bench import BenchConfig, run_bench, write_report
from writethrough.tools.bench.model import interleave, median_ratio


def test_ratios_are_medians_of_per_repetition_ratios() -> None:
    ratio, spread = median_ratio([2.0, 3.0, 10.0], [1.0, 1.0, 1.0])
    assert ratio == 3.0 and spread == (2.0, 10.0)
    # Not the ratio of medians: a slow stretch that hits both sides cancels out.
    assert median_ratio([2.0, 20.0, 2.2], [1.0, 10.0, 1.0])[0] == 2.0


def test_interleave_runs_each_contender_n_times_per_repetition_plus_a_warm_up() -> None:
    calls: list[str] = []
    timed = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 4)
    assert calls.count("a") == calls.count("b") == 3 * 5
    assert len(timed["a"].wall_ns) == len(timed["b"].cpu_ns) == 4
    assert calls[:6] == ["a"] * 3 + ["b"] * 3 and calls[6:12] == ["b"] * 3 + ["a"] * 3  # rotates


def test_unknown_rows_and_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown bench row"):
        run_bench(BenchConfig(only=("nope",)))
    with pytest.raises(ConfigError):
        BenchConfig(db_latency_ms=-1)
    with pytest.raises(ConfigError):
        BenchConfig(rounds=0)


@pytest.mark.redis
@pytest.mark.postgres
def test_a_quick_run_measures_rows_and_writes_markdown_json_and_plots(
    redis_srv: Any, postgres_srv: Any, tmp_path: Path
) -> None:
    config = BenchConfig(
        quick=True,
        rounds=1,
        redis_url=redis_srv.url,
        postgres_url=postgres_srv.url,
        db_latency_ms=1.0,
        only=("redis_calls", "read_100", "put_100", "put", "memory_entry", "import", "compare"),
    )
    steps: list[str] = []
    report = run_bench(config, lambda step, done, total: steps.append(step))
    assert steps  # the progress callback was fed
    calls = report.row("redis_calls")
    assert calls.baseline.value == 3.0  # DEL; GET (miss); SET: by construction
    assert calls.contender("writethrough write-through").value == 2.0  # EVALSHA; GET hit
    assert calls.contender("writethrough invalidate").value is not None
    many = report.row("read_100")
    get_many = many.contender("writethrough get_many")
    assert get_many.value is not None and many.contender("writethrough get loop").value is not None
    put_many = report.row("put_100").contender("writethrough put_many")
    assert put_many.value is not None
    keys = {row.key for row in report.rows}
    assert {"put_write_through", "put_invalidate", "put_write_through_db1ms"} <= keys
    assert "+1 ms per DB round trip" in report.row("put_invalidate_db1ms").detail
    for row in report.rows:
        for measure in [row.baseline, *row.contenders]:
            assert measure.value is not None or measure.note, (row.key, measure.name)
    memory = report.row("memory_entry").contender("writethrough MemoryCache")
    assert memory.value is not None and memory.value < 1000  # not orjson's 4 KB buffers
    assert report.row("import").contenders[0].extra["heavy_modules_loaded"] == []
    assert [c["db_latency"] for c in report.compare] == [0.0, 1.0]
    assert report.compare[1]["workload"]["db_latency_how"] == "fault proxy"

    written = write_report(report, tmp_path / "report")
    names = {p.name for p in written}
    assert {"README.md", "bench.json", "latency.png", "db_queries.png"} <= names
    markdown = (tmp_path / "report" / "README.md").read_text()
    table = markdown.split("## Rows")[0]
    assert "| path | baseline |" in table
    assert sum(line.startswith("| ") for line in table.splitlines()) == 2 + len(report.rows)  # header, rule, rows
    assert "redis-server" in markdown and "postgresql" in markdown  # versions are stated
    data = json.loads((tmp_path / "report" / "bench.json").read_text())
    assert {r["key"] for r in data["rows"]} == keys
    for png in ("latency.png", "db_queries.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
