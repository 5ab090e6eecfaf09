"""What the sync and asyncio Redis backends share: the entry codec, the Lua
script, the error mapping and the client options. No I/O here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import redis.exceptions as rex

from ..errors import (
    CacheDataError,
    CacheError,
    CacheServerError,
    CacheTimeout,
    CacheUnavailable,
    ConfigError,
)
from ..protocol import Entry, Kind, WriteOutcome
from ..urls import ParsedURL

SCRIPT = files(__package__).joinpath("protocol.lua").read_text(encoding="utf-8")
_KINDS = {b"V"[0]: Kind.VALUE, b"T"[0]: Kind.TOMBSTONE, b"L"[0]: Kind.LEASE}
WRITE_OUTCOMES = {o.value.encode(): o for o in WriteOutcome}


def encode(entry: Entry) -> bytes:
    """``<kind><fresh><version>:<payload or token>``"""
    return b"%s%d%d:%s" % (entry.kind.value.encode(), entry.fresh, entry.version, entry.payload)


def decode(raw: bytes) -> Entry:
    try:
        colon = raw.index(b":", 2)
        return Entry(_KINDS[raw[0]], int(raw[2:colon]), raw[1] == 49, raw[colon + 1 :])
    except (ValueError, KeyError, IndexError):
        raise CacheDataError(f"not a writethrough entry: {raw[:40]!r}") from None


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@contextmanager
def mapped_errors() -> Iterator[None]:
    """Map redis-py errors into the project's families, where the I/O happens."""
    try:
        yield
    except rex.TimeoutError as exc:
        raise CacheTimeout(f"Redis timed out: {exc}") from exc
    except (rex.ConnectionError, rex.ClusterDownError, rex.MaxConnectionsError) as exc:
        raise CacheUnavailable(f"Redis connection failed: {exc}") from exc
    except rex.ResponseError as exc:
        raise CacheServerError(f"Redis answered with an error: {exc}") from exc
    except rex.RedisError as exc:
        raise CacheError(f"Redis error: {exc}") from exc
    except OSError as exc:
        raise CacheUnavailable(f"Redis socket error: {exc}") from exc
    except (AttributeError, TypeError) as exc:
        # Seen inside redis-py's asyncio cluster client when it loses a connection
        # under load: a client fault, not ours; the store treats it as the cache failing.
        raise CacheUnavailable(f"Redis client failed: {exc!r}") from exc


OPTIONS: dict[str, Callable[[str], Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "max_connections": int,
    "pool_timeout": float,
    "health_check_interval": float,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "client_name": str,
    "max_concurrency": int,  # asyncio cluster only: commands in flight at once
}
DEFAULTS: dict[str, Any] = {
    "socket_timeout": 0.05,
    "socket_connect_timeout": 0.05,
    "max_connections": 64,
    "pool_timeout": 1.0,
}


def client_options(url: ParsedURL, options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(url.query) - set(OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown Redis option(s) {sorted(unknown)} in {url.redacted()}; known: {sorted(OPTIONS)}"
        )
    kwargs = dict(DEFAULTS)
    for name, convert in OPTIONS.items():
        if name in url.query and name != "max_concurrency":  # ours, not the client's
            kwargs[name] = url.option(name, convert, None)
    kwargs.update(options)
    for name in ("socket_timeout", "socket_connect_timeout"):
        if not isinstance(kwargs[name], int | float) or kwargs[name] <= 0:
            raise ConfigError(f"{name} must be > 0 seconds, got {kwargs[name]!r}")
    kwargs["username"] = url.username
    kwargs["password"] = url.password
    if url.scheme.startswith("rediss"):
        kwargs["ssl"] = True
    return kwargs


