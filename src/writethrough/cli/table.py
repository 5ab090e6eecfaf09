"""``writethrough table``: the life cycle of a namespace over one of your tables.

    $ writethrough table backfill --source postgresql://app@db/app --cache redis://cache:6379/0 \\
          --table users --key-column id --namespace users
    $ writethrough table flush ...      # remove every entry of the namespace, bump its epoch
    $ writethrough table check ...      # which table the namespace belongs to; its epoch

``backfill`` publishes every row (after install, after a migration) under fill leases, so a
row written meanwhile is never overwritten by the older one it scanned. Opening the table
also checks the registry: a namespace of another table is refused; a re-created or
altered table bumps the epoch and flushes the namespace.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

import writethrough

from .. import lifecycle
from ..sources.registry import Verdict
from .args import Subparsers, add_table_args, int_at_least


def add_table(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough table``."""
    parser = subparsers.add_parser(
        "table", help="backfill / flush / check a namespace over one of your tables",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None)
    parser.add_argument("action", choices=("backfill", "flush", "check"))
    add_table_args(parser)
    parser.add_argument("--cache", required=True, help="cache URL (redis://..., memory:// is "
                        "per process: only useful in tests)")
    parser.add_argument("--columns", help="comma list of cached columns (default: the row)")
    parser.add_argument("--batch", type=int_at_least(1), default=500,
                        help="rows per backfill batch (500)")
    return parser


def run_table(args: argparse.Namespace) -> int:
    """Run ``writethrough table``; return the exit code."""
    spec = writethrough.Table(args.table, key=args.key_column, version=args.version_column,
                              columns=tuple(args.columns.split(",")) if args.columns else None)
    out = Console(highlight=False, soft_wrap=True)
    with writethrough.open(args.source, args.cache, table=spec, namespace=args.namespace,
                           repair_worker=False) as opened:
        store: Any = opened
        changed = store.source.claim_verdict is Verdict.CHANGED
        note = " (table re-created or altered since: epoch bumped, namespace flushed)"
        if args.action == "backfill":
            report = lifecycle.backfill(store, batch=args.batch)
            out.print(f"backfilled namespace {args.namespace!r} from {args.table}: "
                      f"{report.rows:,} row(s), {report.filled:,} filled, {report.cached:,} "
                      f"already cached, {report.skipped:,} skipped (busy or changed meanwhile)")
        elif args.action == "flush":
            removed = lifecycle.flush(store)
            out.print(f"flushed {removed:,} key(s) of namespace {args.namespace!r}; epoch now "
                      f"{store.source.last_epoch}")
        else:
            out.print(f"namespace {args.namespace!r} -> {store.source.claim.table} "
                      f"(key {store.source.claim.key_column}), epoch {store.source.last_epoch}"
                      f"{note if changed else ''}")
    return 0
