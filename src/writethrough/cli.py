"""The ``writethrough`` command: argument parsing and output only.

    $ writethrough compare --updates 5000 --keys 1000
    $ writethrough compare --json > result.json
    $ writethrough compare --plot compare.png

Subcommands live in ``COMMANDS``: a name -> (add the parser, run it) pair. A new
subcommand is an ``add_<name>(subparsers)`` and a ``run_<name>(args) -> int``.
Errors from the library print one red ``error: ...`` line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__
from .cli_chaos import add_chaos, run_chaos
from .cli_events import add_install_triggers, add_listen, run_install_triggers, run_listen
from .cli_repair import add_repair, run_repair
from .errors import ConfigError, WritethroughError
from .store import PROTOCOLS, STRATEGIES, Strategy

if TYPE_CHECKING:
    from .tools.compare import CompareResult

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Adder: TypeAlias = Callable[[Subparsers], argparse.ArgumentParser]
Runner: TypeAlias = Callable[[argparse.Namespace], int]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# -- argument types --------------------------------------------------------------


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _strategies(text: str) -> tuple[Strategy, ...]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in STRATEGIES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(STRATEGIES)}; got {text!r}"
        )
    chosen: list[Strategy] = []
    for name in names:  # keep the order given, drop repeats
        chosen.extend(s for s in STRATEGIES if s == name and s not in chosen)
    return tuple(chosen)


# -- compare ---------------------------------------------------------------------


def add_compare(subparsers: Subparsers) -> argparse.ArgumentParser:
    """Register ``writethrough compare``."""
    parser = subparsers.add_parser(
        "compare",
        help="replay one seeded workload under each strategy and compare the costs",
        description=(
            "Replay the same seeded workload (a user updates a profile and reads it right "
            "back, plus background reads over Zipf-popular keys) under each strategy, and "
            "print hit ratio, DB reads, extra DB reads per write, latencies and stale reads."
        ),
    )
    add = parser.add_argument
    add("--updates", type=_int_at_least(1), default=5000, help="writes to replay (5000)")
    add("--keys", type=_int_at_least(1), default=1000, help="distinct keys (1000)")
    add(
        "--reads-after-write",
        type=_int_at_least(0),
        default=1,
        help="read-backs of the written key right after each write (1)",
    )
    add(
        "--background-reads",
        type=_int_at_least(0),
        default=4,
        help="background reads over Zipf-popular keys per update (4)",
    )
    add("--zipf", type=_non_negative_float, default=1.1, help="Zipf exponent s (1.1)")
    add("--seed", type=int, default=42, help="workload seed (42)")
    add(
        "--source",
        default=None,
        help="source URL (default: a fresh SQLite file in a temp dir, deleted afterwards)",
    )
    add("--cache", default="memory://", help="cache URL (memory://)")
    add("--protocol", choices=PROTOCOLS, default="versioned", help="versioned | naive")
    add(
        "--strategies",
        type=_strategies,
        default=STRATEGIES,
        help="comma list (write-through,invalidate)",
    )
    add("--ttl", type=_non_negative_float, default=300.0, help="cache TTL in seconds (300)")
    add("--json", action="store_true", help="print one JSON object on stdout, nothing else")
    add("--plot", metavar="FILE.png", default=None, help="also draw the figures to FILE.png")
    return parser


def run_compare(args: argparse.Namespace) -> int:
    """Run ``writethrough compare``; return the exit code."""
    from .tools.compare import Workload, compare

    workload = Workload(
        updates=args.updates,
        keys=args.keys,
        reads_after_write=args.reads_after_write,
        background_reads_per_update=args.background_reads,
        zipf_s=args.zipf,
        seed=args.seed,
    )
    if args.plot:
        check_plot_path(args.plot)  # fail before the run, not after
    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=args.json or not err.is_terminal,
    ) as bar:
        tasks = {name: bar.add_task(name, total=None, visible=False) for name in args.strategies}

        def progress(strategy: str, done: int, total: int) -> None:
            bar.update(tasks[strategy], completed=done, total=total, visible=True)

        result = compare(
            args.source,
            args.cache,
            workload,
            strategies=args.strategies,
            protocol=args.protocol,
            ttl=args.ttl,
            progress=progress,
        )
    if args.plot:
        save_plot(result, args.plot)
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
        return EXIT_OK
    _print_compare(result, args.plot)
    return EXIT_OK


def _us(value: float) -> str:
    """Microseconds, short: one decimal below 100, whole numbers above."""
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _print_compare(result: CompareResult, plot: str | None) -> None:
    out = Console(highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, 132)  # keep one table row per line in files and pipes
    w = result.workload
    table = Table(
        title="writethrough compare",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    headers = (
        "strategy",
        "writes",
        "reads",
        "hit\nratio",
        "DB\nreads",
        "extra DB\n/write",
        "bg DB\nreads",
        "write µs\np50 / p99",
        "read µs\np50 / p99",
        "stale\nreads",
    )
    for header in headers:
        right = header != "strategy"
        table.add_column(
            header, justify="right" if right else "left", no_wrap=not right, overflow="fold"
        )
    for s in result.strategies:
        table.add_row(
            s.strategy,
            f"{s.writes:,}",
            f"{s.reads:,}",
            f"{s.hit_ratio:.3f}",
            f"{s.db_reads:,}",
            f"{s.extra_db_reads_per_write:.2f}",
            f"{s.background_db_reads:,}",
            f"{_us(s.write_p50_us)} / {_us(s.write_p99_us)}",
            f"{_us(s.read_p50_us)} / {_us(s.read_p99_us)}",
            f"[red]{s.stale_reads:,}[/]" if s.stale_reads else "0",
        )
    out.print(table)
    source = "SQLite in a temp file (deleted)" if result.source_temporary else result.source
    out.print(
        f"Workload: {w.updates:,} updates over {w.keys:,} keys; {w.reads_after_write} read-back(s) "
        f"per write; {w.background_reads_per_update} background reads per update (Zipf "
        f"s={w.zipf_s}); seed {w.seed}. Source {escape(source)}, cache {escape(result.cache)}, "
        f"protocol {result.protocol}, ttl {result.ttl:g}s."
    )
    out.print(
        f"Warm-up, not measured: one put then one get per key ({w.keys:,} keys) before each "
        "strategy, so every key exists in the DB and is cached. "
        "'extra DB reads/write' counts the read-backs' DB reads only; "
        "'bg DB reads' are the background reads' own misses, reported apart."
    )
    for s in result.strategies:
        outcomes = ", ".join(f"{k} {v:,}" for k, v in s.outcomes.items()) or "none"
        read_back = (
            f"read-back p50/p99 {_us(s.read_back_p50_us)} / {_us(s.read_back_p99_us)} µs; "
            if s.read_backs
            else ""
        )
        out.print(
            f"  {s.strategy}: write outcomes {outcomes}; {read_back}"
            f"background miss ratio {s.background_miss_ratio:.2%}."
        )
    out.print(f"[bold]{escape(result.extrapolation())}[/]")
    out.print(escape(result.background_note()))
    if plot:
        out.print(f"Plot written to {escape(plot)}.")


def save_plot(result: CompareResult, path: str | Path) -> None:
    """Draw bars per strategy (extra DB reads/write, hit ratio, write and read p50/p99) to ``path``.

    Needs matplotlib (``pip install 'writethrough[plot]'``); uses the Agg canvas,
    never pyplot, so no global backend is changed.
    """
    figure_cls, canvas_cls = _matplotlib()
    names = [s.strategy for s in result.strategies]
    xs = list(range(len(names)))
    fig = figure_cls(figsize=(13, 3.6), layout="constrained")
    canvas_cls(fig)
    axes = fig.subplots(1, 4)
    ax = axes[0]
    extra = [s.extra_db_reads_per_write for s in result.strategies]
    background = [s.background_db_reads_per_write for s in result.strategies]
    ax.bar(xs, extra, color="tab:red", label="read-back")
    bars = ax.bar(xs, background, bottom=extra, color="tab:gray", label="background")
    ax.bar_label(
        bars, labels=[f"{e:.2f} + {b:.2f}" for e, b in zip(extra, background, strict=True)]
    )
    ax.set_ylim(0, max([1.0, *(e + b for e, b in zip(extra, background, strict=True))]) * 1.15)
    ax.set_title("extra DB reads per write")
    ax.legend(fontsize="small", loc="upper left")
    bars = axes[1].bar(xs, [s.hit_ratio for s in result.strategies], color="tab:green")
    axes[1].bar_label(bars, fmt="%.3f")
    axes[1].set_ylim(0, 1.15)
    axes[1].set_title("hit ratio")
    for ax, what in ((axes[2], "write"), (axes[3], "read")):
        width = 0.38
        for offset, pct in ((-width / 2, "p50"), (width / 2, "p99")):
            values = [float(getattr(s, f"{what}_{pct}_us")) for s in result.strategies]
            ax.bar([x + offset for x in xs], values, width, label=pct)
        ax.set_title(f"{what} latency (µs)")
        ax.legend(fontsize="small")
    for ax in axes:
        ax.set_xticks(xs, names)
    w = result.workload
    fig.suptitle(
        f"writethrough compare: {w.updates:,} updates, {w.keys:,} keys, "
        f"{w.reads_after_write} read-back(s)/write, seed {w.seed}, protocol {result.protocol}"
    )
    fig.savefig(path, dpi=100)


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas, or a ConfigError saying how to install it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError(
            f"--plot needs matplotlib, which is not installed ({exc.name}); "
            "install it with: pip install 'writethrough[plot]'"
        ) from exc
    return Figure, FigureCanvasAgg


def check_plot_path(path: str | Path) -> None:
    """Fail early (before a long run) if ``path`` cannot be plotted to."""
    _, canvas_cls = _matplotlib()
    target = Path(path)
    suffix = target.suffix.lower().lstrip(".")
    if suffix not in canvas_cls.get_supported_filetypes():
        raise ConfigError(f"cannot plot to {str(path)!r}: use a .png (or .svg, .pdf) file name")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot plot to {str(path)!r}: no directory {str(target.parent)!r}")


# -- the command -----------------------------------------------------------------

COMMANDS: dict[str, tuple[Adder, Runner]] = {
    "compare": (add_compare, run_compare),
    "repair": (add_repair, run_repair),
    "chaos": (add_chaos, run_chaos),
    "install-triggers": (add_install_triggers, run_install_triggers),
    "listen": (add_listen, run_listen),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, one subparser per entry of ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="writethrough",
        description="Keep a cache current on every database write: measure and check it.",
    )
    parser.add_argument("--version", action="version", version=f"writethrough {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (add, run) in COMMANDS.items():
        add(subparsers).set_defaults(_run=run, _command=name)
    return parser


def _error(message: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] [red]{escape(message)}[/]"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``writethrough`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner | None = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run(args)
    except WritethroughError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        _error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
