"""``writethrough install`` / ``writethrough uninstall``: change capture on a table.

    $ writethrough install --source postgresql://owner@db/app --table profiles --key-column id
    $ writethrough install ... --capture triggers --listener-role wt_listener
    $ writethrough uninstall --source postgresql://owner@db/app --table profiles
    $ writethrough uninstall ... --slot main      # also drop listener group main's slot

``install`` versions each row (a bigint column set by a trigger from one sequence) and
captures its changes: ``logical`` publishes the table for logical decoding (default where
the server has ``wal_level=logical``), ``triggers`` records changed keys in
``writethrough_changes``. Run it as the table's owner; it is idempotent, and switches modes.
``uninstall`` removes the triggers, functions and publication -- also after the table was
dropped -- and needs only the ownership of what it drops.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from .args import Subparsers


def _table_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="postgresql://user@host:port/db")
    parser.add_argument("--table", required=True,
                        help="the table (name or schema.name; exact, case-sensitive)")


def add_install(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough install``."""
    parser = subparsers.add_parser(
        "install", help="capture a table's changes (logical decoding or triggers)",
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None)
    _table_args(parser)
    add = parser.add_argument
    add("--key-column", required=True, help="its unique key column (cache key = its text)")
    add("--version-column", default="version", help="bigint version column (version)")
    add("--capture", choices=("auto", "logical", "triggers"), default="auto",
        help="logical | triggers | auto: logical where wal_level=logical (auto)")
    add("--listener-role", default=None,
        help="grant this role what listen needs (logical: it also needs REPLICATION)")
    add("--notify", action="store_true",
        help="triggers: NOTIFY listeners at once (costly: serializes commits; default polls)")
    return parser


def run_install(args: argparse.Namespace) -> int:
    from ..capture import install
    from ..capture.choose import resolve

    capture = resolve(args.capture, args.source)
    done = install(args.source, args.table, args.key_column, capture=capture,
                   version_column=args.version_column, notify=args.notify,
                   listener_role=args.listener_role)
    added = " (added the column)" if done.added_version_column else ""
    how = (f"publication {done.publication}" if done.publication else "changes table "
           "writethrough_changes")
    deletes = "" if capture == "triggers" or done.delete_versions else (
        "; deletes: version from the listener's memory (REPLICA IDENTITY FULL makes it exact)")
    Console(highlight=False, soft_wrap=True).print(
        f"{capture} capture installed on {done.table}: key {done.key_column}, version "
        f"{done.version_column}{added}, {how}{deletes}")
    return 0


def add_uninstall(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough uninstall``."""
    parser = subparsers.add_parser(
        "uninstall", help="remove change capture from a table (also after DROP TABLE)",
        description="Drop the table's capture triggers, functions and publication (keeps the "
                    "version column and the shared sequence). Works after the table was "
                    "dropped; needs only the ownership of what it drops.")
    _table_args(parser)
    parser.add_argument("--slot", metavar="GROUP", default=None,
                        help="also drop this listener group's replication slot")
    return parser


def run_uninstall(args: argparse.Namespace) -> int:
    from ..capture import drop_slot, uninstall

    out = Console(highlight=False, soft_wrap=True)
    had = uninstall(args.source, args.table)
    out.print(f"capture {'removed from' if had else 'was not installed on'} {args.table}")
    if args.slot is not None:
        dropped = drop_slot(args.source, args.slot)
        out.print(f"slot of group {args.slot!r} {'dropped' if dropped else 'did not exist'}")
    return 0
