"""Pure checks of names and numbers, shared by every place a setting enters.

One function per rule, so the rule is the same everywhere: the store's namespace, the
trigger installer's, the SQL identifiers of the sources, durations and counts.

    >>> check_namespace("profiles")
    'profiles'
    >>> check_namespace("a:b")
    Traceback (most recent call last):
    ...
    writethrough.errors.ConfigError: namespace must be 1-64 characters of letters, digits, ...
"""

from __future__ import annotations

import math
import re

from .errors import ConfigError

# Cache keys are "wt:<namespace>:<key>": a ':' in a namespace would let namespace "a" key
# "b:x" and namespace "a:b" key "x" share an entry, so the namespace has none.
_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
NAMESPACE_RULE = "1-64 characters of letters, digits, '_', '.', '-'"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# The longest duration any setting takes: ten years. A Redis TTL in milliseconds must fit
# in 64 bits with the server's clock added (ttl=1e17 s was refused by every write), and
# threading waits stop at threading.TIMEOUT_MAX (about 292 years).
MAX_SECONDS = 10 * 365 * 86400


def check_namespace(namespace: object) -> str:
    """``namespace`` if it is a str of 1-64 letters, digits, ``_``, ``.``, ``-``; else ConfigError."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ConfigError(f"namespace must be {NAMESPACE_RULE}: {namespace!r}")
    return namespace


def check_identifier(name: object, what: str = "table name") -> str:
    """``name`` if it is a plain SQL identifier (letters, digits, ``_``; 1-63 long)."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ConfigError(f"{what} {name!r} is not a plain SQL identifier")
    return name


def check_seconds(name: str, value: object, *, allow_zero: bool = False,
                  maximum: float = MAX_SECONDS) -> float:
    """``value`` as a float if it is a finite number of seconds in (0, maximum] (or [0, ...])."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0 <= value <= maximum) or (value == 0 and not allow_zero):  # type: ignore[operator]
        low = ">= 0" if allow_zero else "> 0"
        most = f"{maximum:.0f}" if float(maximum).is_integer() else f"{maximum:g}"
        raise ConfigError(f"{name} must be a finite number of seconds {low} and <= {most}, "
                          f"got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_count(name: str, value: object, *, least: int = 1, most: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in [least, most]."""
    if (not isinstance(value, int) or isinstance(value, bool) or value < least
            or (most is not None and value > most)):
        bound = f">= {least}" if most is None else f"in [{least}, {most}]"
        raise ConfigError(f"{name} must be an int {bound}, got {value!r}")
    return value
