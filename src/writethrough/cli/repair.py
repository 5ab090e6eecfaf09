"""``writethrough repair``: repair the cache from the durable outbox.

    $ writethrough repair --source postgresql://app@db/app --cache redis://cache:6379/0 \\
          --namespace profiles            # runs until Ctrl-C
    $ writethrough repair ... --once      # drain what is there, then exit

Runs until Ctrl-C (or SIGTERM), logging a status line every ``--status-interval`` seconds
and serving Prometheus metrics on ``--metrics-port``.

Writers that use ``durability="outbox"`` leave an outbox row per write, cleared
once their cache write landed. Rows older than ``--grace`` belong to writers that
died or could not reach the cache: this applies a tombstone of each row's version
(always safe, whatever happened since) and deletes the row.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from rich.console import Console

import writethrough

from ..errors import CacheError
from ..store import Store
from .args import (
    CACHE_ENV,
    SOURCE_ENV,
    Subparsers,
    add_operating_args,
    add_url_arg,
    non_negative_float,
    positive_float,
)
from .operating import operating


def add_repair(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough repair``."""
    parser = subparsers.add_parser(
        "repair",
        help="repair the cache from the durable outbox (writers with durability=outbox)",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
    )
    add_url_arg(parser, "--source", SOURCE_ENV, "source URL (sqlite:///... or postgresql://...)",
                required=True)
    add_url_arg(parser, "--cache", CACHE_ENV, "cache URL (redis://..., redis+cluster://...)",
                required=True)
    parser.add_argument("--namespace", default="default", help="the writers' namespace (default)")
    parser.add_argument("--grace", type=non_negative_float, default=5.0,
                        help="seconds an outbox row may belong to a live writer (5)")
    parser.add_argument("--interval", type=positive_float, default=0.5,
                        help="seconds between rounds (0.5)")
    parser.add_argument("--once", action="store_true", help="drain what is there, then exit")
    add_operating_args(parser)
    return parser


def run_repair(args: argparse.Namespace) -> int:
    """Run ``writethrough repair``; return the exit code."""
    console = Console(stderr=True, highlight=False)
    with writethrough.open(
        source=args.source, cache=args.cache, namespace=args.namespace,
        durability="outbox", outbox_grace=args.grace, repair_worker=False,
    ) as store:
        if args.once:
            reach(store)  # a cache it cannot reach is an error, not "repaired 0"
            failures = store.stats.cache_write_failures
            total = drain(store)
            if store.stats.cache_write_failures > failures:
                reach(store)
                raise CacheError(f"the cache failed during the repair ({total} outbox row(s) "
                                 "repaired); run again when it answers")
        else:
            from ..observe.status import store_fields

            with operating(args, lambda c: c.add_store(store), store_fields(store)):
                total = _forever(store, args.interval, console)
    Console(highlight=False).print(f"repaired {total} outbox row(s) in namespace {args.namespace!r}")
    return 0


def reach(store: Store) -> None:
    """Raise the cache's own error (CacheUnavailable, CacheTimeout, ...) if it does not
    answer a read of one of the namespace's keys."""
    try:
        store.cache.get(f"wt:{store.namespace}:writethrough-repair-probe")
    except CacheError as exc:
        raise type(exc)(f"cannot reach the cache: {exc}") from exc


def drain(store: Store) -> int:
    """Repair until a round finds nothing (or the cache stops answering)."""
    total = 0
    while (applied := store.repair_once()) > 0:
        total += applied
    return total


def _forever(store: Store, interval: float, console: Console) -> int:
    """Drain every ``interval`` seconds until Ctrl-C or SIGTERM."""
    total, stop = 0, threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    console.print(f"repairing namespace {store.namespace!r} every {interval}s; Ctrl-C stops")
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while not stop.is_set():
            applied = drain(store)
            if applied:
                total += applied
                console.print(f"repaired {applied} (total {total})")
            stop.wait(interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return total
