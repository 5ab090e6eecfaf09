"""``writethrough bench``: every row of the performance table against its baseline, in one run.

    $ writethrough bench --quick
    $ writethrough bench --report docs/bench --postgres postgresql://app@127.0.0.1/app
    $ writethrough bench --only get_hit,near --json

The measuring is in ``writethrough.tools.bench``; this module parses, shows a progress
bar, prints the table and writes the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .args import Subparsers, int_at_least, non_negative_float
from .output import EXIT_OK, table_console


def _rows(text: str) -> tuple[str, ...]:
    from ..tools.bench import ROWS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ROWS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(ROWS)}; got {text!r}")
    return names


def add_bench(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough bench``."""
    parser = subparsers.add_parser(
        "bench",
        help="measure every hot path against its baseline (and cashews, aiocache, dogpile.cache)",
        description=(
            "Run each row of the performance table (get hit, async get hit, put under both "
            "strategies, Redis calls per put+get, 100 keys, the herds, memory:// bytes per "
            "entry, the near cache, import time, compare's DB queries per write) against its "
            "baseline side by side in this process: contenders interleaved, ratios are medians "
            "of per-repetition ratios. Peers need the bench extra: pip install "
            "'writethrough[bench]'."
        ),
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smaller sizes: the whole run in under 60 s")
    add(
        "--report",
        metavar="DIR",
        default=None,
        help="also write DIR/README.md, DIR/bench.json and PNG plots (plots need matplotlib)",
    )
    add(
        "--redis",
        metavar="URL",
        default=None,
        help="Redis to measure on (default: a throwaway redis-server of this run)",
    )
    add(
        "--postgres",
        metavar="URL",
        default=None,
        help="PostgreSQL for the put and compare rows (default: $WRITETHROUGH_POSTGRES_URL; "
        "without one those rows are n/a)",
    )
    add(
        "--db-latency",
        metavar="MS",
        type=non_negative_float,
        default=1.0,
        help="the put and compare rows are also run with MS of round-trip delay in front of "
        "the DB (a TCP fault proxy before PostgreSQL); 0: only without (1.0)",
    )
    add("--rounds", type=int_at_least(1), default=None, help="repetitions per row (5 quick, 9 full)")
    add("--only", type=_rows, default=(), help="comma list of rows to run (default: all)")
    add("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    return parser


def run_bench(args: argparse.Namespace) -> int:
    """Run ``writethrough bench``; return the exit code."""
    from ..tools.bench import BenchConfig, run_bench, write_report

    config = BenchConfig(
        quick=args.quick,
        redis_url=args.redis,
        postgres_url=args.postgres,
        db_latency_ms=args.db_latency,
        rounds=args.rounds,
        only=args.only,
    )
    if args.report:
        target = Path(args.report)
        if target.exists() and not target.is_dir():
            from ..errors import ConfigError

            raise ConfigError(f"--report {args.report!r} exists and is not a directory")
    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<58}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json or not err.is_terminal,
    ) as bar:
        task = bar.add_task("starting", total=None)
        progress: Callable[[str, int, int], None] = lambda step, done, total: bar.update(  # noqa: E731
            task, description=escape(step.replace("`", "")[:58]), completed=done, total=total
        )
        report = run_bench(config, progress)
    written = write_report(report, args.report) if args.report else []
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2, default=str) + "\n")
        return EXIT_OK
    out = table_console(140)
    table = Table(
        title="writethrough bench" + (" --quick" if args.quick else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for header in ("path", "baseline", "writethrough (ratio)", "peers (ratio)", "goal", "met"):
        table.add_column(header, overflow="fold")
    for row in report.rows:
        ours = [c for c in row.contenders if c.name.startswith("writethrough")]
        peers = [c for c in row.contenders if not c.name.startswith("writethrough")]
        table.add_row(
            escape(row.path.replace("`", "")),
            escape(f"{row.baseline.name}: {row.baseline.shown()}"),
            "\n".join(escape(_cell(c)) for c in ours),
            "\n".join(escape(_cell(c)) for c in peers) or "—",
            escape(row.goal),
            {True: "[green]yes[/]", False: "[red]no[/]", None: "—"}[row.met],
        )
    out.print(table)
    for row in report.rows:
        if row.detail:
            out.print(f"[bold]{escape(row.path.replace('`', ''))}[/]: {escape(row.detail)}")
    versions = report.meta.get("versions", {}) | report.meta.get("servers", {})
    out.print("Versions: " + escape(", ".join(f"{k} {v}" for k, v in versions.items())))
    out.print(f"Took {report.elapsed_s:.0f} s.")
    for path in written:
        out.print(f"Wrote {escape(str(path))}.")
    return EXIT_OK


def _cell(measure: object) -> str:
    from ..tools.bench.model import Measure

    assert isinstance(measure, Measure)
    ratio = "" if measure.ratio is None or measure.ratio != measure.ratio else f" ({measure.ratio:.2f}x)"
    return f"{measure.name}: {measure.shown()}{ratio}"
