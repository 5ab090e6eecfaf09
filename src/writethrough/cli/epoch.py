"""``writethrough epoch``: show or bump a database's epoch.

    $ writethrough epoch --source sqlite:///app.db                      # show it
    $ writethrough epoch --source sqlite:///app.db --bump               # after a restore
    $ writethrough epoch --source postgresql://app@db/app --namespace profiles --bump

Versions the cache compares are ``epoch * 10**19 + the row's version``. After the
database went back in time -- restored from a backup, a failover that lost commits --
row versions start again below what the cache may hold. Bumping the epoch orders every
version from now on after all earlier ones, and makes every entry cached before it
invalid. PostgreSQL bumps it on its own when its system identifier or timeline
changes (a point-in-time recovery, a promoted replica, a dump restored elsewhere); run
this for a SQLite file copied back, or a PostgreSQL data directory restored without a
new timeline (a filesystem snapshot). ``--namespace`` bumps one namespace only (its
table was truncated or re-created by hand).
"""

from __future__ import annotations

import argparse

from rich.console import Console

from ..sources import open_source
from .args import SOURCE_ENV, Subparsers, add_url_arg


def add_epoch(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough epoch``."""
    parser = subparsers.add_parser(
        "epoch",
        help="show or bump the database epoch (run --bump after restoring a backup)",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_url_arg(parser, "--source", SOURCE_ENV, "source URL (sqlite:///... or postgresql://...)",
                required=True)
    parser.add_argument("--namespace", default=None,
                        help="one namespace (default: the whole database)")
    parser.add_argument("--bump", action="store_true", help="move the epoch past every version so far")
    parser.add_argument("--reason", default="writethrough epoch --bump", help="recorded with the bump")
    return parser


def run_epoch(args: argparse.Namespace) -> int:
    """Run ``writethrough epoch``; return the exit code."""
    source = open_source(args.source, namespace=args.namespace or "default")
    try:
        source.open()
        if args.bump:
            epoch = source.bump_epoch(args.reason, everything=args.namespace is None)  # type: ignore[attr-defined]
            verb = "bumped to"
        else:
            epoch = source.epoch()  # type: ignore[attr-defined]
            verb = "is"
    finally:
        source.close()
    scope = f"namespace {args.namespace!r}" if args.namespace else "the database"
    Console(highlight=False).print(f"the epoch of {scope} {verb} {epoch}")
    return 0
