"""Output helpers shared by the commands: exit codes, the one-line error, consoles."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

from rich.console import Console
from rich.markup import escape

from ..urls import mask_unparsed, scrub

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")
_secrets: set[str] = set()  # passwords of the URLs this run was given (argv, environment)


def remember_secrets(texts: Iterable[str]) -> None:
    """Note the password of every URL in ``texts``, to be masked in any error line."""
    for text in texts:
        for url in _URL.findall(text):
            userinfo = url.partition("://")[2].rpartition("@")[0]
            password = userinfo.partition(":")[2]
            if password:
                _secrets.update({password, urllib.parse.unquote(password)})


def masked(message: str) -> str:
    """``message`` with every URL's user info (up to its last ``@``) and every password
    this run was given as ``***``: a last line of defence, whatever produced it."""
    message = _URL.sub(lambda m: mask_unparsed(m.group()) if "@" in m.group() else m.group(),
                       message)
    return scrub(message, *sorted(_secrets, key=len, reverse=True))


def error(message: str) -> None:
    """One red ``error: ...`` line on stderr (never a traceback, never a password)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] [red]{escape(' '.join(masked(message).split()))}[/]"
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
