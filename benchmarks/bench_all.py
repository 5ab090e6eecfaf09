"""Every row of the performance table against its baseline, in one run (issue 13).

    .venv/bin/python benchmarks/bench_all.py [--quick] [--report DIR] [--postgres URL]

The same as ``writethrough bench`` (library: ``writethrough.tools.bench``); kept
here so the benchmarks directory runs it without the CLI. Uses a throwaway
redis-server unless ``--redis`` is given, and ``WRITETHROUGH_POSTGRES_URL`` or
``--postgres`` for the PostgreSQL rows.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from writethrough.tools.bench import ROWS, BenchConfig, run_bench, write_report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report", metavar="DIR", default=None)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--postgres", default=None)
    parser.add_argument("--db-latency", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(ROWS)}")
    args = parser.parse_args()
    config = BenchConfig(
        quick=args.quick,
        redis_url=args.redis,
        postgres_url=args.postgres,
        db_latency_ms=args.db_latency,
        rounds=args.rounds,
        only=tuple(x for x in args.only.split(",") if x),
    )
    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<60}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step[:60], completed=done, total=total)

        report = run_bench(config, progress)
    out = Console()
    for row in report.rows:
        cells = ", ".join(f"{c.name} {c.shown()}" + (f" ({c.ratio:.2f}x)" if c.ratio else "")
                          for c in row.contenders)  # fmt: skip
        out.print(f"{row.path}: baseline {row.baseline.shown()}; {cells}; goal {row.goal}; met {row.met}")
    if args.report:
        for path in write_report(report, args.report):
            out.print(f"wrote {path}")
    out.print(f"{report.elapsed_s:.0f} s")


if __name__ == "__main__":
    main()
