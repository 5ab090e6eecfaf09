"""``writethrough top``: a live view of a store's or listener's metrics endpoint.

    $ writethrough top http://app:9464/metrics              # refreshes in place; Ctrl-C quits
    $ writethrough top http://app:9464/metrics --once       # one frame: totals since start

Per namespace: reads/s and hit ratio, puts/s and their cache outcomes, p99 of get, put and
the cache step, the repair backlog and its age, the circuit breaker; per listener: events/s,
lag p50 / p99, backlog. Rates and outcomes are over the last interval (the first frame
shows totals since the process started).
"""

from __future__ import annotations

import argparse
import time

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..observe.advise import Scrape, histogram, scrape
from .args import Subparsers, positive_float
from .output import EXIT_OK, masked, table_console, us


def add_top(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough top``."""
    parser = subparsers.add_parser(
        "top", help="live view of a metrics endpoint: hit ratio, outcomes, repairs, lag, breaker",
        description=(__doc__ or "").split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the /metrics URL (http://host:port/metrics)")
    parser.add_argument("--interval", type=positive_float, default=2.0,
                        help="seconds between refreshes (2)")
    parser.add_argument("--once", action="store_true",
                        help="print one frame (totals since the process started) and exit")
    return parser


def run_top(args: argparse.Namespace) -> int:
    """Run ``writethrough top``; return the exit code."""
    url = _url(args.url)
    shown = masked(url)  # a /metrics URL may carry basic-auth credentials
    before, at = scrape(url), time.monotonic()
    if args.once:
        table_console(140).print(frame(shown, {}, before, 0.0))
        return EXIT_OK
    console = Console(highlight=False)
    with Live(frame(shown, {}, before, 0.0), console=console, auto_refresh=False,
              screen=False) as live:
        try:
            while True:
                time.sleep(args.interval)
                now = time.monotonic()
                try:
                    after = scrape(url)
                except Exception as exc:  # the process restarted or is gone for a moment
                    live.update(Text(masked(f"{url}: {exc}"), style="red"), refresh=True)
                    continue
                live.update(frame(shown, before, after, now - at), refresh=True)
                before, at = after, now
        except KeyboardInterrupt:
            pass
    return EXIT_OK


def _url(text: str) -> str:
    if "://" not in text:
        text = "http://" + text
    return text if text.rstrip("/").endswith("/metrics") else text.rstrip("/") + "/metrics"


def _labels(samples: Scrape, name: str, label: str) -> list[str]:
    return sorted({dict(labels)[label] for (n, labels) in samples if n == name and label in dict(labels)})


def _v(samples: Scrape, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _rate(before: Scrape, after: Scrape, seconds: float, name: str, **labels: str) -> float | None:
    if not before or seconds <= 0:
        return None
    return max(0.0, _v(after, name, **labels) - _v(before, name, **labels)) / seconds


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{us(seconds * 1e6)} µs" if seconds < 0.001 else f"{seconds * 1000:,.1f} ms"


def frame(url: str, before: Scrape, after: Scrape, seconds: float) -> RenderableType:
    """One screen: the stores' table, the listeners' table, a footer."""
    parts: list[RenderableType] = []
    header = Text.assemble(("writethrough top", "bold"), f"  {url}  ",
                           (time.strftime("%H:%M:%S"), "dim"),
                           ("" if before else "  (totals since start; rates from the next frame)",
                            "dim"))
    parts.append(header)
    namespaces = _labels(after, "writethrough_source_writes_total", "namespace")
    if namespaces:
        parts.append(_stores(before, after, seconds, namespaces))
    listeners = _labels(after, "writethrough_listener_events_applied_total", "namespaces")
    if listeners:
        parts.append(_listeners(before, after, seconds, listeners))
    if not namespaces and not listeners:
        parts.append(Text("no writethrough metrics at this endpoint (yet)", style="yellow"))
    return Group(*parts)


def _stores(before: Scrape, after: Scrape, seconds: float, namespaces: list[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="stores", title_justify="left", show_edge=False,
                  pad_edge=False)
    for h in ("namespace", "reads/s", "hit ratio", "puts/s", "updated", "invalidated",
              "pending\nrepair", "get p99", "put p99", "cache step\np99", "repair\nbacklog",
              "oldest\nrepair", "breaker"):
        table.add_column(h, justify="left" if h in ("namespace", "breaker") else "right",
                         no_wrap=True, min_width=max(map(len, namespaces)) if h == "namespace" else None)
    for ns in namespaces:
        hits = [_v(s, "writethrough_cache_hits_total", namespace=ns) for s in (before, after)]
        misses = [_v(s, "writethrough_cache_misses_total", namespace=ns) for s in (before, after)]
        reads = (hits[1] - hits[0]) + (misses[1] - misses[0]) if before else hits[1] + misses[1]
        got = (hits[1] - hits[0]) if before else hits[1]
        ratio = "-" if not reads else f"{got / reads:.1%}"
        read_rate = None if not before or seconds <= 0 else reads / seconds
        outcomes = []
        for outcome in ("updated", "invalidated", "pending_repair"):
            n = _v(after, "writethrough_writes_total", namespace=ns, outcome=outcome)
            if before:
                n -= _v(before, "writethrough_writes_total", namespace=ns, outcome=outcome)
            outcomes.append(f"{n:,.0f}")
        if outcomes[2] != "0":
            outcomes[2] = f"[red]{outcomes[2]}[/]"
        p99 = []
        for name, op in (("writethrough_operation_duration_seconds", "get"),
                         ("writethrough_operation_duration_seconds", "put"),
                         ("writethrough_cache_step_duration_seconds", "put")):
            hist = histogram(after, name, namespace=ns, op=op)
            if before:
                hist = hist - histogram(before, name, namespace=ns, op=op)
            p99.append(_ms(hist.quantile(0.99)) if hist.count else "-")
        backlog = _v(after, "writethrough_repair_backlog", namespace=ns)
        oldest = _v(after, "writethrough_repair_oldest_age_seconds", namespace=ns)
        states = [s for s in ("open", "half_open")
                  if _v(after, "writethrough_breaker_state", namespace=ns, state=s)]
        breaker = "[red]" + ", ".join(states) + "[/]" if states else "[green]closed[/]"
        table.add_row(escape(ns), _fmt_rate(read_rate), ratio,
                      _fmt_rate(_rate(before, after, seconds, "writethrough_source_writes_total",
                                      namespace=ns)),
                      *outcomes, *p99, f"[red]{backlog:,.0f}[/]" if backlog else "0",
                      f"{oldest:,.1f} s" if backlog else "-", breaker)
    return table


def _listeners(before: Scrape, after: Scrape, seconds: float, labels: list[str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="listeners", title_justify="left", show_edge=False,
                  pad_edge=False)
    for h in ("namespaces", "events/s", "applied", "lag p50", "lag p99", "backlog", "oldest event",
              "reconnects"):
        table.add_column(h, justify="left" if h == "namespaces" else "right", no_wrap=True,
                         min_width=max(map(len, labels)) if h == "namespaces" else None)
    for label in labels:
        def v(name: str, label: str = label, **more: str) -> float:
            return _v(after, name, namespaces=label, **more)

        backlog_key = ("writethrough_listener_backlog_events", (("namespaces", label),))
        backlog = f"{after[backlog_key]:,.0f}" if backlog_key in after else "?"
        table.add_row(
            escape(label),
            _fmt_rate(_rate(before, after, seconds, "writethrough_listener_events_applied_total",
                            namespaces=label)),
            f"{v('writethrough_listener_events_applied_total'):,.0f}",
            _ms(v("writethrough_listener_lag_seconds", quantile="0.5")),
            _ms(v("writethrough_listener_lag_seconds", quantile="0.99")),
            backlog, f"{v('writethrough_listener_backlog_oldest_age_seconds'):,.1f} s",
            f"{v('writethrough_listener_reconnects_total'):,.0f}")
    return table
