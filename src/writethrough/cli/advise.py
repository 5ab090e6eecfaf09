"""``writethrough advise``: which strategy fits each namespace, and what each one costs.

    $ writethrough advise --history ops.jsonl           # a recorded workload (chaos --history)
    $ writethrough advise --metrics http://app:9464/metrics --interval 60   # a live store

Per namespace: write and read rates, the share of puts read back within --window seconds,
the value size; per strategy, extra DB reads per day, cache bytes written per day and the
cache step added to each write; then the recommendation and its reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..observe.advise import Advice, Workload, advise, from_history, from_metrics, read_ops, scrape
from .args import Subparsers, non_negative_float, positive_float
from .output import EXIT_OK, table_console, us


def _share(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a share in [0, 1], got {text}")
    return value


def add_advise(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough advise``."""
    parser = subparsers.add_parser(
        "advise", help="recommend a strategy per namespace from a recorded or live workload",
        description=(__doc__ or "").split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--history", metavar="FILE",
                       help="recorded ops as JSON lines (writethrough chaos --history)")
    given.add_argument("--metrics", metavar="URL",
                       help="a store's Prometheus endpoint (http://host:port/metrics)")
    add("--interval", type=non_negative_float, default=10.0,
        help="with --metrics: seconds between the two scrapes (10; 0: totals since start)")
    add("--window", type=positive_float, default=1.0,
        help="with --history: a put counts as read back if read within SECONDS (1)")
    add("--value-bytes", type=positive_float, default=None,
        help="with --history: the value size, if the recording does not say")
    add("--threshold", type=_share, default=0.1,
        help="share of puts read back from which write-through pays off (0.1)")
    add("--latency-critical", action="store_true",
        help="write latency matters more than DB reads: recommend invalidate")
    add("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    return parser


def run_advise(args: argparse.Namespace) -> int:
    """Run ``writethrough advise``; return the exit code."""
    if args.history:
        workloads = from_history(read_ops(args.history), args.window, args.value_bytes)
        what = f"recorded workload {args.history}"
    else:
        started = time.monotonic()
        before = scrape(args.metrics) if args.interval else {}
        if args.interval:
            Console(stderr=True).print(f"[dim]scraping {escape(args.metrics)} twice, "
                                       f"{args.interval:g} s apart ...[/]")
            time.sleep(args.interval)
        after = scrape(args.metrics)
        seconds = time.monotonic() - started if args.interval else _uptime(after)
        workloads = from_metrics(before, after, seconds)
        what = f"metrics of {args.metrics}"
    advices = [advise(w, threshold=args.threshold, latency_critical=args.latency_critical)
               for w in workloads]
    if args.json:
        sys.stdout.write(json.dumps({"from": what, "advice": [a.to_json() for a in advices]},
                                    indent=2) + "\n")
    else:
        print_advice(advices, what)
    return EXIT_OK


def _uptime(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    """Seconds the scraped process has run (process_start_time_seconds), for totals."""
    started = [v for (name, _), v in samples.items() if name == "process_start_time_seconds"]
    return max(1.0, time.time() - started[0]) if started else 1.0


def _short(n: float, unit: str = "") -> str:
    """3 significant figures with an SI suffix: 137M, 41.2G (unit appended)."""
    for suffix in ("", "k", "M", "G", "T"):
        if abs(n) < 999.5 or suffix == "T":
            return f"{n:.3g}{suffix}{unit}" if n < 100 or suffix else f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.3g}T{unit}"


def _size(n: float | None) -> str:
    return "?" if n is None else _short(n, "B")


def _latency(seconds: float | None) -> str:
    return "-" if seconds is None else f"{us(seconds * 1e6)} µs"


def print_advice(advices: list[Advice], what: str) -> None:
    out = table_console(150)
    if not advices:
        out.print(f"no namespace with writes or reads in the {escape(what)}")
        return
    table = Table(title=f"writethrough advise: {what}", title_justify="left", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, collapse_padding=True)
    headers = ("namespace", "puts/s", "reads/s", "read\nback", "value", "cold\nputs",
               "DB reads/day\nwrite-thr.", "DB reads/day\ninvalidate", "cache B/day\nwrite-thr.",
               "cache B/day\ninvalidate", "cache step\np50 / p99", "use")
    for h in headers:
        table.add_column(h, justify="left" if h in ("namespace", "use") else "right",
                         no_wrap=h in ("namespace", "use"))
    for a in advices:
        w, (wt, inv) = a.workload, a.costs
        table.add_row(
            escape(w.namespace), _short(w.per_s(w.puts)), _short(w.per_s(w.reads)),
            f"{w.read_back_share:.0%}", _size(w.value_bytes),
            "?" if w.cold_share is None else f"{w.cold_share:.0%}",
            _short(wt.extra_db_reads_per_day), _short(inv.extra_db_reads_per_day),
            _size(wt.cache_bytes_per_day), _size(inv.cache_bytes_per_day),
            "-" if w.cache_step_p50 is None else
            f"{_latency(w.cache_step_p50)} / {_latency(w.cache_step_p99)}",
            f"[bold]{a.recommended}[/]")
    out.print(table)
    for a in advices:
        out.print(f"[bold]{escape(a.workload.namespace)}[/]: {escape(a.reason)}.")
        for note in a.notes:
            out.print(f"  [dim]note: {escape(note)}[/]")
    spans = {round(a.workload.seconds, 1) for a in advices}
    windows = {a.workload.window for a in advices}
    out.print(f"Rates over {', '.join(f'{s:g}' for s in sorted(spans))} s of workload, "
              "extrapolated to a day. read back: puts whose key was read within "
              f"{', '.join(f'{x:g}' for x in sorted(windows))} s; cold puts: write-through puts "
              "onto an uncached key (a tombstone); cache step: the part of a write after the "
              "DB commit (estimated within histogram buckets).")


__all__ = ["Workload", "add_advise", "run_advise"]
