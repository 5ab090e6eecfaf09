"""A delay in front of the database, so a cache's latency win shows as it would with a remote DB.

On one host a PostgreSQL primary-key SELECT costs about one Redis round trip, so
caching barely shows in latency. ``db_latency(url, ms)`` puts ``ms`` of round-trip
delay in front of the source named by ``url``:

* **PostgreSQL**: the project's TCP fault proxy (``tools.faultproxy``) between the
  client and the server, holding every chunk ``ms / 2`` in each direction. A
  statement that takes one round trip pays ``ms`` once; a transaction that takes
  three (BEGIN, the statement, COMMIT) pays it three times, as over a real network.
* **SQLite** (a file, no network): a source wrapper (:class:`DelayedSource`) that
  sleeps ``ms`` before each source call (read, write, delete): one round trip per call.

    with db_latency("postgresql://app@127.0.0.1/app", 1.0) as delayed:
        store = writethrough.open(source=delayed.url, ...)
        delayed.wrap(store)   # SQLite: puts the delaying wrapper in; PostgreSQL: no-op
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..sources import BACKENDS
from ..sources.base import Row
from ..urls import parse_url

__all__ = ["DelayedSource", "DelayedURL", "db_latency"]


class DelayedSource:
    """Forwards every call to a real source after sleeping ``seconds`` (a network round trip).

    Only the calls the compare and bench tools make (open, read, write, delete,
    close) are forwarded; anything else goes to the wrapped source undelayed.
    """

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds
        self.name = inner.name
        self.calls = 0

    def open(self) -> None:
        self.inner.open()

    def read(self, key: str) -> Row:
        self._wait()
        row: Row = self.inner.read(key)
        return row

    def write(self, key: str, payload: bytes) -> int:
        self._wait()
        return int(self.inner.write(key, payload))

    def delete(self, key: str) -> int:
        self._wait()
        return int(self.inner.delete(key))

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _wait(self) -> None:
        self.calls += 1
        time.sleep(self.seconds)


@dataclass
class DelayedURL:
    """What :func:`db_latency` yields: the URL to open, and how the delay is made."""

    url: str
    ms: float
    how: str  # "none" | "fault proxy" | "source wrapper"

    def wrap(self, store: Any) -> None:
        """Put the delaying wrapper in front of ``store.source`` (SQLite only)."""
        if self.how == "source wrapper" and not isinstance(store.source, DelayedSource):
            store.source = DelayedSource(store.source, self.ms / 1000)

    def describe(self) -> str:
        if self.how == "none":
            return "no added DB latency"
        if self.how == "fault proxy":
            return f"+{self.ms:g} ms per DB round trip (TCP fault proxy in front of PostgreSQL)"
        return f"+{self.ms:g} ms per DB call (delaying source wrapper in front of SQLite)"


@contextmanager
def db_latency(url: str, ms: float) -> Iterator[DelayedURL]:
    """Yield ``url`` with ``ms`` of round-trip delay in front of its database (see module doc)."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms < 60_000:
        raise ConfigError(f"db latency must be a number of milliseconds in [0, 60000), got {ms!r}")
    parsed = parse_url(url, kind="source", schemes=BACKENDS)
    if ms == 0:
        yield DelayedURL(url, 0.0, "none")
        return
    if parsed.scheme == "sqlite":
        yield DelayedURL(url, float(ms), "source wrapper")
        return
    if len(parsed.hosts) != 1 or parsed.hosts[0][0].startswith("/") or "%2F" in parsed.hosts[0][0]:
        raise ConfigError(
            f"--db-latency needs a PostgreSQL URL with one TCP host, got {parsed.redacted()}"
        )
    from .faultproxy import FaultProxy

    host, port = parsed.hosts[0]
    with FaultProxy(host, port or 5432) as proxy:
        proxy.delay(ms / 2000)  # each direction: one request + one reply = ms
        yield DelayedURL(_with_host(url, "127.0.0.1", proxy.port), float(ms), "fault proxy")


def _with_host(url: str, host: str, port: int) -> str:
    """``url`` with its host:port replaced, user, password, path and query kept as written."""
    scheme, _, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    if "?" in netloc:
        netloc, _, query = netloc.partition("?")
        tail = "?" + query
        slash = "/"
    userinfo, at, _ = netloc.rpartition("@")
    return f"{scheme}://{userinfo}{at}{host}:{port}{slash}{tail}"
