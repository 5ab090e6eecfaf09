"""``writethrough listen``: the cache kept current from the database's own changes (plain
SQL, other services, migrations), captured by ``writethrough install``.

    $ writethrough listen --source postgresql://listener@db/app --cache redis://cache:6379/0 \\
          --namespace profiles --table profiles --key-column id --strategy write-through
    $ writethrough listen ... --once        # apply what was committed until now, then exit
    $ writethrough listen ... --status      # the group's slot: backlog, WAL kept; parked keys

``--capture auto`` (default) streams the WAL (logical decoding) where the table was
installed that way, else reads the triggers' changes table. ``listen`` runs until Ctrl-C
or SIGTERM (it stops at the next cache write), logging a status line every
``--status-interval`` seconds and serving Prometheus metrics on ``--metrics-port``; then it
prints what it applied, the lag from commit to cache write (p50 / p99), and for logical
capture the WAL the slot keeps.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console

from ..errors import CacheError, SourceError
from .args import (
    CACHE_ENV,
    Subparsers,
    add_operating_args,
    add_table_args,
    add_url_arg,
    int_between,
    positive_float,
)
from .operating import operating
from .output import EXIT_ERROR, error

if TYPE_CHECKING:
    from ..capture import LogicalListener, TriggerListener


def add_listen(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough listen``."""
    parser = subparsers.add_parser(
        "listen",
        help="apply the table's committed changes to the cache (WAL or triggers)",
        description=(
            "Apply every committed change of TABLE to the cache under NAMESPACE: "
            "write-through stores the row's current value (as JSON) with its version, "
            "invalidate stores a tombstone. Logical capture streams the WAL through a "
            "replication slot (one per --group; a second listener of the group waits as a "
            "standby) and confirms only what reached the cache; triggers capture drains "
            "writethrough_changes (several listeners share it). A key whose cache write "
            "fails is parked and retried, never lost, never blocking the others."
        ),
    )
    add_table_args(parser)
    add = parser.add_argument
    add_url_arg(parser, "--cache", CACHE_ENV, "cache URL (redis://..., redis+cluster://...)",
                required=True)
    add("--strategy", choices=("invalidate", "write-through"), default="invalidate",
        help="invalidate | write-through (invalidate)")
    add("--capture", choices=("auto", "logical", "triggers"), default="auto",
        help="logical (WAL) | triggers | auto: as the table was installed (auto)")
    add("--group", default="main",
        help="listener group: one replication slot, one active listener (main)")
    add("--value-column", default=None, help="cache this column (as JSON), not the whole row")
    add("--ttl", type=positive_float, default=300.0, help="cache TTL in seconds (300)")
    add("--batch-size", type=int_between(1, 100_000), default=500, help="changes per batch (500)")
    add("--poll-interval", type=positive_float, default=0.2,
        help="triggers capture: seconds between polls (0.2)")
    add("--once", action="store_true", help="apply what was committed until now, then exit")
    add("--status", action="store_true",
        help="print the slot's backlog and retained WAL and the parked keys, then exit")
    add_operating_args(parser)
    return parser


def run_listen(args: argparse.Namespace) -> int:
    from ..capture import Keyspace
    from ..capture.choose import open_listener

    space = Keyspace(args.namespace, args.table, args.key_column, args.strategy, ttl=args.ttl,
                     value_column=args.value_column, version_column=args.version_column)
    err = Console(stderr=True, highlight=False)
    with open_listener(args.source, args.cache, {space.namespace: space}, capture=args.capture,
                       group=args.group, batch_size=args.batch_size,
                       poll_interval=args.poll_interval) as listener:
        if args.status:
            _status(listener)
            return 0
        try:
            if args.once:
                listener.drain_once()
            else:
                from ..observe.status import listener_fields

                err.print(f"listening for {space.namespace!r} ({space.strategy}, "
                          f"{_kind(listener)}); Ctrl-C stops")
                with operating(args, lambda c: c.add_listener(listener),
                               listener_fields(listener)):
                    _run_until_signal(listener)
        except KeyboardInterrupt:
            pass
        except (CacheError, SourceError) as exc:  # --once: nothing past the failure is lost
            _summary(listener)
            error(f"{exc} (nothing was lost: run it again once this is fixed)")
            return EXIT_ERROR
        _summary(listener)
    return 0


def _kind(listener: LogicalListener | TriggerListener) -> str:
    from ..capture import LogicalListener

    return f"logical, slot {listener.slot}" if isinstance(listener, LogicalListener) \
        else "triggers"


def _run_until_signal(listener: LogicalListener | TriggerListener) -> None:
    """Run in this thread; SIGTERM stops it like Ctrl-C, between batches."""
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        listener.run(stop)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _slot_line(listener: LogicalListener | TriggerListener) -> str:
    from ..capture import LogicalListener

    if not isinstance(listener, LogicalListener):
        return f"; {listener.queued():,} change(s) queued"
    status = listener.slot_status()
    if status is None:
        return ""
    return (f"; slot {status.slot}: {status.behind_bytes / 1024:,.0f} kB behind, "
            f"{status.retained_bytes / 1024:,.0f} kB of WAL kept ({status.wal_status})")


def _summary(listener: LogicalListener | TriggerListener) -> None:
    s, lag = listener.stats, listener.lag_percentiles()
    lags = (f"lag p50 {lag.p50 * 1000:.1f} ms, p99 {lag.p99 * 1000:.1f} ms, "
            f"max {lag.max * 1000:.1f} ms" if lag.count else "no lag measured")
    extra = "".join(f"; {n:,} {what}" for n, what in (
        (s.parked, "parked"), (s.unparked, "unparked"), (s.truncates, "TRUNCATE(s)"),
        (s.skipped, "skipped"), (s.reconnects, "reconnect(s)")) if n)
    try:
        slot = _slot_line(listener)
    except (SourceError, CacheError):
        slot = ""
    Console(highlight=False, soft_wrap=True).print(
        f"applied {s.applied:,} change(s) in {s.batches:,} batch(es): {s.values:,} value(s), "
        f"{s.tombstones:,} tombstone(s), {s.superseded:,} superseded{extra}; {lags}{slot}")


def _status(listener: LogicalListener | TriggerListener) -> None:
    out = Console(highlight=False, soft_wrap=True)
    out.print(f"{_kind(listener)}{_slot_line(listener)}; {listener.parked_count():,} key(s) "
              "parked")
