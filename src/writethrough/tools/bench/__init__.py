"""``writethrough bench``: every row of the performance table against its baseline, in one run.

    from writethrough.tools.bench import BenchConfig, run_bench, write_report
    report = run_bench(BenchConfig(quick=True, postgres_url="postgresql://..."))
    write_report(report, "docs/bench")     # README.md + PNG plots

Rows (issue 13's table): sync get hit, async get hit at 64 tasks (and the ops/s
curve against concurrency), put under both strategies (also with a delay in front
of the DB), Redis calls per put+get pair, 100 keys, the two herds, memory:// bytes
per entry, ``import writethrough``; then ``compare`` on the same servers with and
without the DB delay (DB queries per write per strategy). Each row runs its baseline
and contenders side by side, interleaved; ratios are medians of per-repetition ratios.

No terminal output here: the CLI (``writethrough bench``) renders it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from ...errors import ConfigError
from .context import (
    BenchConfig,
    Context,
    Progress,
    machine,
    server_versions,
    throwaway_redis,
    versions,
)
from .model import Measure, Report, Row
from .report import write_report

__all__ = ["ROWS", "BenchConfig", "Measure", "Report", "Row", "run_bench", "write_report"]

# row key -> what it measures, in the report's order
ROWS = {
    "get_hit": "sync get hit",
    "async_get_hit": "async get hit + ops/s against concurrency",
    "put": "put, both strategies, with and without the DB delay",
    "redis_calls": "Redis calls per put+get pair",
    "read_100": "100 keys read",
    "put_100": "100 keys written (put_many)",
    "herd_async": "herd of 1,000 asyncio tasks",
    "herd_threads": "herd of 200 threads",
    "memory_entry": "memory:// bytes per entry",
    "near": "near cache: hit, and the staleness window across processes",
    "import": "import writethrough",
    "compare": "compare: DB queries per write per strategy, with and without the DB delay",
}


@contextlib.contextmanager
def _servers(config: BenchConfig) -> Iterator[tuple[str | None, str, str | None, str]]:
    postgres = config.postgres_url or os.environ.get("WRITETHROUGH_POSTGRES_URL")
    pg_note = "" if postgres else "n/a (no PostgreSQL: pass --postgres URL)"
    if config.redis_url:
        yield config.redis_url, "", postgres, pg_note
        return
    try:
        with throwaway_redis() as url:
            yield url, "", postgres, pg_note
    except ConfigError as exc:
        yield None, f"n/a ({exc})", postgres, pg_note


def run_bench(config: BenchConfig, progress: Progress | None = None) -> Report:
    """Run the rows of ``config`` (all by default) and return the report."""
    from . import cases_async, cases_local, cases_sync

    unknown = set(config.only) - set(ROWS)
    if unknown:
        raise ConfigError(f"unknown bench row(s) {sorted(unknown)}; known: {sorted(ROWS)}")
    started = time.perf_counter()
    meta: dict[str, Any] = {"machine": machine(), "versions": versions()}
    with _servers(config) as (redis_url, redis_note, postgres_url, pg_note):
        ctx = Context(config, redis_url, postgres_url, redis_note, pg_note, progress=progress)
        meta["servers"] = server_versions(redis_url, postgres_url)
        meta["settings"] = {
            "quick": config.quick,
            "repetitions": config.reps,
            "db_latency_ms": config.db_latency_ms,
            "redis": "throwaway redis-server (this run's own)" if not config.redis_url else "given",
            "postgres": "given" if postgres_url else "none",
        }
        report = Report([], meta)
        wanted = set(config.only or ROWS)
        steps: list[tuple[str, Callable[[], None]]] = [
            ("get_hit", lambda: report.rows.append(cases_sync.get_hit(ctx))),
            ("async_get_hit", lambda: _async_row(ctx, report, cases_async)),
            ("put", lambda: report.rows.extend(cases_sync.put_rows(ctx))),
            ("redis_calls", lambda: report.rows.append(cases_sync.redis_calls(ctx))),
            ("read_100", lambda: report.rows.append(cases_sync.read_many(ctx))),
            ("put_100", lambda: report.rows.append(cases_sync.put_many_row(ctx))),
            ("herd_async", lambda: report.rows.append(cases_async.herd_async(ctx))),
            ("herd_threads", lambda: report.rows.append(cases_sync.herd_threads(ctx))),
            ("memory_entry", lambda: report.rows.append(cases_local.memory_per_entry(ctx))),
            ("near", lambda: report.rows.append(cases_sync.near_cache(ctx))),
            ("import", lambda: report.rows.append(cases_local.import_time(ctx))),
            ("compare", lambda: _compare(ctx, report)),
        ]
        seconds: dict[str, float] = {}
        meta["step_seconds"] = seconds
        try:
            for key, step in steps:
                if key in wanted:
                    began = time.perf_counter()
                    step()
                    seconds[key] = round(time.perf_counter() - began, 1)
        finally:
            shutil.rmtree(ctx.tmpdir, ignore_errors=True)
    report.elapsed_s = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        meta["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _async_row(ctx: Context, report: Report, cases_async: Any) -> None:
    row, curves = cases_async.async_get_hit(ctx)
    report.rows.append(row)
    report.concurrency = curves


def _compare(ctx: Context, report: Report) -> None:
    """DB queries per write per strategy (read-after-update and read-after-create), and the
    latencies, with and without the DB delay: the compare tool on the bench's servers."""
    from ..compare import Workload, compare

    workload = Workload(updates=ctx.config.n(100, 2000), keys=ctx.config.n(50, 500), new_keys=0.2)
    source = ctx.postgres_url or ctx.sqlite_url("compare")
    cache = ctx.redis_url + "?socket_timeout=1&socket_connect_timeout=1" if ctx.redis_url else "memory://"
    latencies = [0.0] + ([ctx.config.db_latency_ms] if ctx.config.db_latency_ms else [])
    ctx.start("compare (DB queries per write)", len(latencies))
    for ms in latencies:
        result = compare(source, cache, workload, db_latency_ms=ms)
        data = result.to_json()
        data["db_latency"] = ms
        report.compare.append(data)
        ctx.tick()
