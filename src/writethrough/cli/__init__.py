"""The ``writethrough`` command: argument parsing and output only, one module per command.

    $ writethrough compare --updates 5000 --keys 1000
    $ writethrough chaos --scenario cache-timeout --json
    $ writethrough listen --source postgresql://app@db/app --cache redis://cache:6379/0 ...

Subcommands live in ``COMMANDS``: a name -> (add the parser, run it) pair. A new
subcommand is a module ``cli/<name>.py`` with ``add_<name>(subparsers)`` and
``run_<name>(args) -> int``, registered below. Shared argument types are in ``args``,
output helpers in ``output``. Every failure prints one red ``error: ...`` line on stderr,
never a traceback or a password: exit 2 for bad flags and settings, 1 when the database or
the cache failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, cast

from .. import __version__
from ..errors import (
    ConfigError,
    InvalidKeyError,
    InvalidValueError,
    InvalidVersionError,
    WritethroughError,
)
from .advise import add_advise, run_advise
from .args import CACHE_ENV, SOURCE_ENV, Adder, Runner, Subparsers
from .bench import add_bench, run_bench
from .chaos import add_chaos, run_chaos
from .check import add_check, run_check
from .compare import add_compare, run_compare
from .epoch import add_epoch, run_epoch
from .install import add_install, add_uninstall, run_install, run_uninstall
from .install_triggers import add_install_triggers, run_install_triggers
from .listen import add_listen, run_listen
from .output import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, error, remember_secrets
from .repair import add_repair, run_repair
from .table import add_table, run_table
from .top import add_top, run_top

COMMANDS: dict[str, tuple[Adder, Runner]] = {
    "compare": (add_compare, run_compare),
    "repair": (add_repair, run_repair),
    "chaos": (add_chaos, run_chaos),
    "install": (add_install, run_install),
    "uninstall": (add_uninstall, run_uninstall),
    "install-triggers": (add_install_triggers, run_install_triggers),
    "listen": (add_listen, run_listen),
    "table": (add_table, run_table),
    "check": (add_check, run_check),
    "advise": (add_advise, run_advise),
    "top": (add_top, run_top),
    "epoch": (add_epoch, run_epoch),
    "bench": (add_bench, run_bench),
}


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as one ``error:`` line (exit 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        error(f"{self.prog}: {message} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, one subparser per entry of ``COMMANDS``."""
    parser = Parser(
        prog="writethrough",
        description="Keep a cache current on every database write: measure and check it.",
    )
    parser.add_argument("--version", action="version", version=f"writethrough {__version__}")
    # Subparsers are made by the parser's own class: a bad flag of a command is one line too.
    subparsers = cast(Subparsers, parser.add_subparsers(title="commands", metavar="COMMAND"))
    for name, (add, run) in COMMANDS.items():
        add(subparsers).set_defaults(_run=run, _command=name)
    return parser


# Bad input: a usage error (2). The database or the cache failing: a runtime error (1).
USAGE_ERRORS = (ConfigError, InvalidKeyError, InvalidValueError, InvalidVersionError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``writethrough`` console script; returns the exit code.

    Every failure is one ``error: ...`` line on stderr, never a traceback (set
    ``WRITETHROUGH_DEBUG=1`` to see one for an unexpected exception) and never a password.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    remember_secrets([*argv, os.environ.get(SOURCE_ENV, ""), os.environ.get(CACHE_ENV, "")])
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run(args)
    except WritethroughError as exc:
        error(str(exc))
        return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) else EXIT_ERROR
    except OSError as exc:
        error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("WRITETHROUGH_DEBUG"):
            raise
        error(f"unexpected {type(exc).__name__}: {exc} -- a bug in writethrough, please report "
              "it (WRITETHROUGH_DEBUG=1 shows the traceback)")
        return EXIT_ERROR


__all__ = ["COMMANDS", "build_parser", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
