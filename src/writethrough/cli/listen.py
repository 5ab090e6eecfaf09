"""``writethrough listen``: the cache kept current from the database's own change events
(plain SQL, other services, migrations), recorded by ``writethrough install-triggers``.

    $ writethrough listen --source postgresql://app@db/app --cache redis://cache:6379/0 \\
          --namespace profiles --table profiles --key-column id --strategy write-through
    $ writethrough listen ... --once        # apply what is queued, then exit

``listen`` runs until Ctrl-C (or SIGTERM), logging a status line (events applied, lag
p50 / p99, backlog) every ``--status-interval`` seconds and serving Prometheus metrics on
``--metrics-port``; at the end it prints how many events it applied and the lag from each
change to its cache write (p50 / p99).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console

from .args import Subparsers, add_operating_args, add_table_args, positive_float
from .operating import operating

if TYPE_CHECKING:
    from ..events import Listener


def add_listen(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough listen``."""
    parser = subparsers.add_parser(
        "listen",
        help="apply the table's change events to the cache (LISTEN/NOTIFY + the events table)",
        description=(
            "Drain writethrough_events for NAMESPACE into the cache: write-through stores "
            "the row's current value (as JSON) with its version, invalidate stores a "
            "tombstone of the event's version. Catches up after a disconnect; several "
            "listeners may run at once."
        ),
    )
    add_table_args(parser)
    add = parser.add_argument
    add("--cache", required=True, help="cache URL (redis://..., redis+cluster://...)")
    add("--strategy", choices=("invalidate", "write-through"), default="invalidate",
        help="invalidate | write-through (invalidate)")
    add("--value-column", default=None, help="cache this column (as JSON), not the whole row")
    add("--ttl", type=positive_float, default=300.0, help="cache TTL in seconds (300)")
    add("--poll-interval", type=positive_float, default=1.0,
        help="seconds between drains without a notification (1)")
    add("--once", action="store_true", help="apply what is queued, then exit")
    add_operating_args(parser)
    return parser


def run_listen(args: argparse.Namespace) -> int:
    """Run ``writethrough listen``; return the exit code."""
    from ..events import Keyspace, Listener
    from ..observe.status import listener_fields

    space = Keyspace(args.namespace, args.table, args.key_column, args.strategy, ttl=args.ttl,
                     value_column=args.value_column, version_column=args.version_column)
    err = Console(stderr=True, highlight=False)
    with Listener(args.source, args.cache, {space.namespace: space},
                  poll_interval=args.poll_interval) as listener:
        if args.once:
            listener.drain_once()
        else:
            err.print(f"listening for {space.namespace!r} ({space.strategy}); Ctrl-C stops")
            fields = listener_fields(listener)
            with (operating(args, lambda c: c.add_listener(listener), fields),
                  contextlib.suppress(KeyboardInterrupt)):
                _run_until_signal(listener)
        _summary(listener)
    return 0


def _run_until_signal(listener: Listener) -> None:
    """Run in this thread; SIGTERM stops it like Ctrl-C (then the summary is printed)."""
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        listener.run(stop)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(listener: Listener) -> None:
    s, lag = listener.stats, listener.lag_percentiles()
    lags = (f"lag p50 {lag.p50 * 1000:.1f} ms, p99 {lag.p99 * 1000:.1f} ms, "
            f"max {lag.max * 1000:.1f} ms" if lag.count else "no lag measured")
    Console(highlight=False, soft_wrap=True).print(
        f"applied {s.applied:,} event(s) in {s.batches:,} batch(es): {s.values:,} value(s), "
        f"{s.tombstones:,} tombstone(s), {s.superseded:,} superseded; {lags}"
        + (f"; {s.reconnects} reconnect(s)" if s.reconnects else "")
    )
