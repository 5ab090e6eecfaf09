"""``writethrough compare``: replay one seeded workload under each strategy, compare costs.

    $ writethrough compare --updates 5000 --keys 1000
    $ writethrough compare --json > result.json
    $ writethrough compare --plot compare.png
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..store import PROTOCOLS, STRATEGIES
from ..tools.compare import MAX_ZIPF
from .args import (
    CACHE_ENV,
    SOURCE_ENV,
    Subparsers,
    add_url_arg,
    float_between,
    int_at_least,
    non_negative_float,
    strategies,
)
from .output import EXIT_OK, table_console, us
from .plot import check_plot_path, save_plot

if TYPE_CHECKING:
    from ..tools.compare import CompareResult


def add_compare(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough compare``."""
    parser = subparsers.add_parser(
        "compare",
        help="replay one seeded workload under each strategy and compare the costs",
        description=(
            "Replay the same seeded workload (a user updates a profile and reads it right "
            "back, plus background reads over Zipf-popular keys) under each strategy, and "
            "print hit ratio, DB reads, extra DB reads per write, latencies and stale reads."
        ),
    )
    add = parser.add_argument
    add("--updates", type=int_at_least(1), default=5000, help="writes to replay (5000)")
    add("--keys", type=int_at_least(1), default=1000, help="distinct keys (1000)")
    add(
        "--reads-after-write",
        type=int_at_least(0),
        default=1,
        help="read-backs of the written key right after each write (1)",
    )
    add(
        "--background-reads",
        type=int_at_least(0),
        default=4,
        help="background reads over Zipf-popular keys per update (4)",
    )
    add("--zipf", type=float_between(0, MAX_ZIPF), default=1.1, help="Zipf exponent s (1.1)")
    add("--seed", type=int, default=42, help="workload seed (42)")
    add_url_arg(parser, "--source", SOURCE_ENV,
                "source URL (else a fresh SQLite file in a temp dir, deleted afterwards)")
    add_url_arg(parser, "--cache", CACHE_ENV, "cache URL (else memory://)", default="memory://")
    add("--protocol", choices=PROTOCOLS, default="versioned", help="versioned | naive")
    add(
        "--strategies",
        type=strategies,
        default=STRATEGIES,
        help="comma list (write-through,invalidate)",
    )
    add("--ttl", type=non_negative_float, default=300.0, help="cache TTL in seconds (300)")
    add(
        "--db-latency",
        metavar="MS",
        type=non_negative_float,
        default=0.0,
        help="add MS of round-trip delay in front of the DB, as with a remote database: a TCP "
        "fault proxy before PostgreSQL, a delaying source wrapper for SQLite (0)",
    )
    add(
        "--new-keys",
        metavar="SHARE",
        type=_share,
        default=0.0,
        help="share of the writes that create a new key (read back like the others), so "
        "read-after-create shows next to read-after-update (0)",
    )
    add("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    add("--plot", metavar="FILE.png", default=None, help="also draw the figures to FILE.png")
    return parser


def _share(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share in [0, 1], got {text}")
    return value


def run_compare(args: argparse.Namespace) -> int:
    """Run ``writethrough compare``; return the exit code."""
    from ..tools.compare import Workload, compare

    workload = Workload(
        updates=args.updates,
        keys=args.keys,
        reads_after_write=args.reads_after_write,
        background_reads_per_update=args.background_reads,
        zipf_s=args.zipf,
        seed=args.seed,
        new_keys=args.new_keys,
    )
    if args.plot:
        check_plot_path(args.plot)  # fail before the run, not after
    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json or not err.is_terminal,
    ) as bar:
        tasks = {name: bar.add_task(name, total=None, visible=False) for name in args.strategies}

        def progress(strategy: str, done: int, total: int) -> None:
            bar.update(tasks[strategy], completed=done, total=total, visible=True)

        result = compare(
            args.source,
            args.cache,
            workload,
            strategies=args.strategies,
            protocol=args.protocol,
            ttl=args.ttl,
            db_latency_ms=args.db_latency,
            progress=progress,
        )
    if args.plot:
        save_plot(result, args.plot)
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
        return EXIT_OK
    _print_compare(result, args.plot)
    return EXIT_OK


def _print_compare(result: CompareResult, plot: str | None) -> None:
    out = table_console(132)
    w = result.workload
    table = Table(
        title="writethrough compare",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    headers = (
        "strategy",
        "writes",
        "reads",
        "hit\nratio",
        "DB\nreads",
        "extra DB\n/write",
        "bg DB\nreads",
        "write µs\np50 / p99",
        "read µs\np50 / p99",
        "stale\nreads",
    )
    for header in headers:
        right = header != "strategy"
        table.add_column(
            header, justify="right" if right else "left", no_wrap=not right, overflow="fold"
        )
    for s in result.strategies:
        table.add_row(
            s.strategy,
            f"{s.writes:,}",
            f"{s.reads:,}",
            f"{s.hit_ratio:.3f}",
            f"{s.db_reads:,}",
            f"{s.extra_db_reads_per_write:.2f}",
            f"{s.background_db_reads:,}",
            f"{us(s.write_p50_us)} / {us(s.write_p99_us)}",
            f"{us(s.read_p50_us)} / {us(s.read_p99_us)}",
            f"[red]{s.stale_reads:,}[/]" if s.stale_reads else "0",
        )
    out.print(table)
    source = "SQLite in a temp file (deleted)" if result.source_temporary else result.source
    out.print(
        f"Workload: {w.updates:,} updates over {w.keys:,} keys; {w.reads_after_write} read-back(s) "
        f"per write; {w.background_reads_per_update} background reads per update (Zipf "
        f"s={w.zipf_s}); seed {w.seed}. Source {escape(source)}, cache {escape(result.cache)}, "
        f"protocol {result.protocol}, ttl {result.ttl:g}s."
    )
    if result.db_latency_ms:
        how = (
            "a TCP fault proxy in front of PostgreSQL: per round trip"
            if result.db_latency_how == "fault proxy"
            else "a delaying source wrapper: per DB call"
        )
        out.print(f"DB latency added: +{result.db_latency_ms:g} ms ({how}).")
    out.print(
        f"Warm-up, not measured: one put then one get per key ({w.keys:,} keys) before each "
        "strategy, so every key exists in the DB and is cached. "
        "'extra DB reads/write' counts the read-backs' DB reads only; "
        "'bg DB reads' are the background reads' own misses, reported apart."
    )
    for s in result.strategies:
        outcomes = ", ".join(f"{k} {v:,}" for k, v in s.outcomes.items()) or "none"
        read_back = (
            f"read-back p50/p99 {us(s.read_back_p50_us)} / {us(s.read_back_p99_us)} µs; "
            if s.read_backs
            else ""
        )
        out.print(
            f"  {s.strategy}: write outcomes {outcomes}; {read_back}"
            f"background miss ratio {s.background_miss_ratio:.2%}."
        )
        if s.creates:
            out.print(
                f"    read-after-update: {s.extra_db_reads_per_update:.2f} extra DB reads/write, "
                f"p50/p99 {us(s.update_read_back_p50_us)} / {us(s.update_read_back_p99_us)} µs; "
                f"read-after-create ({s.creates:,} new keys): "
                f"{s.extra_db_reads_per_create:.2f} extra DB reads/write, p50/p99 "
                f"{us(s.create_read_back_p50_us)} / {us(s.create_read_back_p99_us)} µs."
            )
    out.print(f"[bold]{escape(result.extrapolation())}[/]")
    out.print(escape(result.background_note()))
    if plot:
        out.print(f"Plot written to {escape(plot)}.")
