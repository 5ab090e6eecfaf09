"""Output helpers shared by the commands: exit codes, the one-line error, consoles."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def error(message: str) -> None:
    """One red ``error: ...`` line on stderr (never a traceback)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] [red]{escape(message)}[/]"
    )


def table_console(min_width: int = 120) -> Console:
    """stdout; at least ``min_width`` wide in files and pipes, so a table row stays one line."""
    out = Console(highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, min_width)
    return out


def us(value: float) -> str:
    """Microseconds, short: one decimal below 100, whole numbers above."""
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"
