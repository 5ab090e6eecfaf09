"""``writethrough install-triggers``: ``writethrough install --capture triggers`` under its
first name (``--namespace`` is accepted and checked, no longer needed).

    $ writethrough install-triggers --source postgresql://app@db/app \\
          --table profiles --key-column id --namespace profiles
    $ writethrough install-triggers ... --uninstall
"""

from __future__ import annotations

import argparse

from rich.console import Console

from .args import Subparsers, add_table_args


def add_install_triggers(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough install-triggers``."""
    parser = subparsers.add_parser(
        "install-triggers",
        help="capture a table's changes with triggers (= install --capture triggers)",
        description=(
            "Install (or replace) triggers on TABLE that version each row (adding the version "
            "column if missing) and record each changed key in writethrough_changes, for "
            "writethrough listen. Idempotent. --uninstall removes them, also after the "
            "table was dropped."
        ),
    )
    add_table_args(parser)
    parser.add_argument("--uninstall", action="store_true",
                        help="remove capture instead (keeps the version column)")
    return parser


def run_install_triggers(args: argparse.Namespace) -> int:
    from ..events import install_triggers, uninstall_triggers

    out = Console(highlight=False, soft_wrap=True)
    if args.uninstall:
        had = uninstall_triggers(args.source, args.table)
        out.print(f"triggers {'dropped from' if had else 'were not installed on'} {args.table}")
        return 0
    done = install_triggers(args.source, args.table, args.key_column, args.namespace,
                            version_column=args.version_column)
    added = " (added the column)" if done.added_version_column else ""
    out.print(f"triggers installed on {done.table}: key {done.key_column}, version "
              f"{done.version_column}{added}, namespace {done.namespace!r}")
    return 0
