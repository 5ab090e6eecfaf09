"""Argument types and argument groups shared by the commands.

Each type raises ``argparse.ArgumentTypeError``, so a bad value is a usage error (exit 2)
with argparse's own message, before anything runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeAlias

from ..checks import MAX_SECONDS
from ..store import STRATEGIES, Strategy

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Adder: TypeAlias = Callable[[Subparsers], argparse.ArgumentParser]
Runner: TypeAlias = Callable[[argparse.Namespace], int]


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer >= ``low``; ``_`` separators allowed (``100_000``)."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def non_negative_float(text: str) -> float:
    """A finite number >= 0, at most ten years' worth of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 and <= {MAX_SECONDS}, "
                                         f"got {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0, at most ten years' worth of seconds (time.sleep overflows)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 and <= {MAX_SECONDS}, "
                                         f"got {text}")
    return value


def int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]; ``_`` separators allowed."""
    at_least = int_at_least(low)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


def float_between(low: float, high: float) -> Callable[[str], float]:
    """A number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a number in [{low:g}, {high:g}], got {text}")
        return value

    return parse


SOURCE_ENV, CACHE_ENV = "WRITETHROUGH_SOURCE", "WRITETHROUGH_CACHE"


def add_url_arg(parser: argparse.ArgumentParser, flag: str, env: str, help: str, *,
                required: bool = False, default: str | None = None) -> None:
    """``--source`` / ``--cache``, falling back to the environment variable ``env``: a URL
    with a password is better kept off the command line (``ps`` shows argv to all)."""
    from_env = os.environ.get(env) or None
    parser.add_argument(flag, required=required and from_env is None,
                        default=from_env if from_env is not None else default,
                        help=f"{help}; default: ${env} if set")


def strategies(text: str) -> tuple[Strategy, ...]:
    """A comma list of strategies, in the order given, repeats dropped."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STRATEGIES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(STRATEGIES)}; got {text!r}"
        )
    chosen: list[Strategy] = []
    for name in names:
        chosen.extend(s for s in STRATEGIES if s == name and s not in chosen)
    return tuple(chosen)


def add_table_args(parser: argparse.ArgumentParser) -> None:
    """``--source --table --key-column --namespace --version-column``: one of your tables."""
    add = parser.add_argument
    add_url_arg(parser, "--source", SOURCE_ENV, "postgresql://user@host:port/db", required=True)
    add("--table", required=True, help="the table (name or schema.name; exact, case-sensitive)")
    add("--key-column", required=True, help="its unique key column (cache key = its text)")
    add("--namespace", required=True, help="cache namespace: entries are wt:<namespace>:<key>")
    add("--version-column", default="version", help="bigint version column (version)")


def add_operating_args(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port --metrics-addr --status-interval --log-format``: a long-running command."""
    add = parser.add_argument
    add("--metrics-port", type=int_between(0, 65535), default=None, metavar="PORT",
        help="expose Prometheus /metrics on this port (0: a free one, logged); "
             "needs writethrough[metrics]")
    add("--metrics-addr", default="0.0.0.0", metavar="ADDR",
        help="address the metrics endpoint listens on (0.0.0.0)")
    add("--status-interval", type=positive_float, default=30.0, metavar="SECONDS",
        help="log a status line every SECONDS (30)")
    add("--log-format", choices=("text", "json"), default="text",
        help="status lines as text (key=value) or JSON lines (text)")
