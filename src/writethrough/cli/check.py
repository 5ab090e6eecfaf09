"""``writethrough check``: is the cache consistent with the database right now?

    $ writethrough check --source postgresql://app@db/app --cache redis://cache:6379/0 \\
          --namespace profiles                     # one round of 1000 keys
    $ writethrough check ... --watch --interval 10 --window 3600 --json   # continuously

Samples cached keys of the namespace (SCAN, or --keys FILE), compares each cached value's
version (and bytes) with the database row, re-checks what differs after --grace seconds
(a write in flight is not an inconsistency) and reports what stayed wrong, with the share
of consistent entries as nines. Exit status 1 if an inconsistency was found.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import IO

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..observe.check import Checker, Report, Window
from .args import (
    CACHE_ENV,
    SOURCE_ENV,
    Subparsers,
    add_url_arg,
    int_at_least,
    int_between,
    non_negative_float,
    positive_float,
)
from .output import EXIT_ERROR, EXIT_OK, table_console


def add_check(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough check``."""
    parser = subparsers.add_parser(
        "check", help="sample cached keys and compare them with the database (consistency nines)",
        description=(__doc__ or "").split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add_url_arg(parser, "--source", SOURCE_ENV, "source URL (postgresql://... or sqlite:///...)",
                required=True)
    add_url_arg(parser, "--cache", CACHE_ENV, "cache URL (redis://..., redis+cluster://...)",
                required=True)
    add("--namespace", default="default", help="the store's namespace (default)")
    add("--sample", type=int_between(1, 1_000_000), default=1000, help="keys per round (1000)")
    add("--grace", type=non_negative_float, default=1.0,
        help="seconds before a difference is re-checked (1)")
    add("--keys", metavar="FILE", default=None,
        help="check these keys (one a line; - for stdin) instead of scanning the cache")
    add("--watch", action="store_true", help="check round after round until Ctrl-C")
    add("--interval", type=non_negative_float, default=10.0,
        help="with --watch: seconds between rounds (10)")
    add("--window", type=positive_float, default=3600.0,
        help="with --watch: report over the rounds of the last SECONDS (3600)")
    add("--rounds", type=int_at_least(1), default=None, help="with --watch: stop after N rounds")
    add("--json", action="store_true", help="JSON on stdout (with --watch: one object a round)")
    return parser


def run_check(args: argparse.Namespace) -> int:
    """Run ``writethrough check``; return the exit code."""
    from ..caches import open_cache
    from ..sources import open_source

    cache = open_cache(args.cache)
    try:
        source = open_source(args.source, namespace=args.namespace)
        try:
            cache.open()
            source.open()
            keys = _keys(args.keys)
            checker = Checker(source, cache, args.namespace, grace=args.grace,
                              sample=args.sample, keys=keys)
            if not args.watch:
                found = checker.round()
                report = Report.of([found], args.namespace, args.grace)
                if args.json:
                    sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
                else:
                    print_report(report, scanned=args.keys is None)
                return EXIT_OK if report.ok else EXIT_ERROR
            return _watch(checker, args)
        finally:
            source.close()
    finally:
        cache.close()


def _keys(path: str | None) -> Iterator[str] | None:
    if path is None:
        return None
    stream: IO[str] = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115

    def lines() -> Iterator[str]:
        with stream:
            for line in stream:
                if key := line.rstrip("\n"):
                    yield key

    return lines()


def _watch(checker: Checker, args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    window, report, done = Window(args.window), None, 0
    out = Console(highlight=False, soft_wrap=True)
    try:
        while not stop.is_set():
            found = checker.round()
            window.add(found)
            report = window.report(args.namespace, args.grace)
            done += 1
            if args.json:
                data = report.to_json()
                data["round"] = {"sampled": found.sampled, "compared": found.compared,
                                 "suspects": found.suspects,
                                 "inconsistent": [a.to_json() for a in found.inconsistent]}
                sys.stdout.write(json.dumps(data) + "\n")
                sys.stdout.flush()
            else:
                out.print(round_line(found.started_at, found.compared, found.suspects,
                                     len(found.inconsistent), report))
                for a in found.inconsistent:
                    out.print(f"  [red]{escape(a.key)}[/] {a.kind}: cache v{a.cache_version}, "
                              f"DB v{a.db_version}")
            if args.rounds is not None and done >= args.rounds:
                break
            stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return EXIT_OK if report is None or report.ok else EXIT_ERROR


def round_line(started: float, compared: int, suspects: int, inconsistent: int,
               window: Report) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(started))
    bad = f"[red]{inconsistent:,} inconsistent[/]" if inconsistent else "0 inconsistent"
    return (f"{stamp} {compared:,} compared, {suspects:,} differed at first look, {bad}; "
            f"last {window.window:g} s: {window.compared:,} compared, {window.inconsistent:,} "
            f"inconsistent, {_nines(window)}")


def _nines(report: Report) -> str:
    if report.compared == 0:
        return "nothing cached to compare"
    if report.inconsistent == 0:
        return f">= {report.nines:.2f} nines (none in {report.compared:,}; the 3/n bound)"
    return f"{report.consistency:.4%} consistent, {report.nines:.2f} nines"


def print_report(report: Report, scanned: bool = True) -> None:
    out = table_console(100)
    how = "scanned from the cache" if scanned else "from the key list"
    out.print(f"[bold]writethrough check[/] namespace {escape(repr(report.namespace))}: "
              f"{report.sampled:,} keys {how}, {report.compared:,} cached values compared "
              f"with their rows in {report.seconds:.2f} s")
    out.print(f"{report.suspects:,} differed at first look; re-checked after {report.grace:g} s: "
              + (f"[bold red]{report.inconsistent:,} inconsistent[/]" if report.inconsistent
                 else "[green]all in flight, none inconsistent[/]" if report.suspects
                 else "[green]none inconsistent[/]"))
    out.print(f"consistency: {_nines(report)}")
    if report.keys:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for header in ("key", "problem", "cache version", "DB version"):
            table.add_column(header, justify="left" if header in ("key", "problem") else "right")
        why = {"stale": "cache older than the DB", "ahead": "cache newer than the DB",
               "value": "same version, other value"}
        for a in report.keys:
            table.add_row(escape(a.key), why[a.kind], f"{a.cache_version:,}", f"{a.db_version:,}")
        out.print(table)
        if report.inconsistent > len(report.keys):
            out.print(f"... and {report.inconsistent - len(report.keys):,} more")
