"""writethrough: keep a cache current on every database write.

    import writethrough

    with writethrough.open(source="sqlite:///app.db", cache="memory://") as store:
        result = store.put("user:42", {"name": "Alice", "balance": 400})
        result.version, result.cache      # 1, CacheOutcome.UPDATED
        store.get("user:42")              # {'name': 'Alice', 'balance': 400}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from .caches import open_cache
from .checks import check_namespace
from .core import Durability
from .errors import (
    CacheError,
    CacheTimeout,
    CacheUnavailable,
    ConfigError,
    InvalidKeyError,
    InvalidValueError,
    InvalidVersionError,
    ReadOnlyTableError,
    SourceConflict,
    SourceDataError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
    WritethroughError,
)
from .protocol import OnEmpty
from .repair import RetryPolicy
from .serializers import BytesSerializer, JSONSerializer, Serializer, checked_serializer
from .sources import open_source
from .sources.table import Table
from .sources.tables import open_async_table_source, open_table_source
from .store import (
    CacheOutcome,
    ProtocolName,
    Settings,
    Stats,
    Store,
    Strategy,
    Versioned,
    WriteResult,
)

if TYPE_CHECKING:
    from ._async.store import AsyncStore

__version__ = "0.1.0"


def open(  # the public name the API promises (shadows the builtin inside this module only)
    source: str = "sqlite:///writethrough.db",
    cache: str = "memory://",
    *,
    strategy: Strategy = "write-through",
    ttl: float = 300.0,
    namespace: str = "default",
    protocol: ProtocolName = "versioned",
    serializer: Serializer | None = None,
    ttl_jitter: float = 0.1,
    tombstone_ttl: float | None = None,
    lease_ttl: float = 2.0,
    lease_wait: float = 0.1,
    on_empty: OnEmpty = "lease",
    write_budget: float = 0.05,
    retry: RetryPolicy | None = None,
    max_key_bytes: int = 1024,
    max_value_bytes: int = 1 << 20,
    repair_interval: float = 0.05,
    repair_worker: bool = True,
    durability: Durability = "best-effort",
    outbox_grace: float = 5.0,
    breaker_threshold: int = 5,
    breaker_reset: float = 1.0,
    epoch_refresh: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    source_options: dict[str, Any] | None = None,
    cache_options: dict[str, Any] | None = None,
    table: Table | None = None,
) -> Store:
    """Open a store over a source of truth and a cache.

    - ``source``: ``sqlite:///path.db`` or ``postgresql://user@host:port/db``.
    - ``cache``: ``memory://``, ``redis://host:port/db``, ``redis+cluster://host:port``.
    - ``strategy``: ``"write-through"`` (update the key on a write) or
      ``"invalidate"`` (replace it with a tombstone; the next read refills).
    - ``ttl``: seconds a value lives in the cache (jittered down by up to
      ``ttl_jitter``); required > 0 under both strategies: the last safety net.
    - ``protocol``: ``"versioned"`` (conditional writes, leases, tombstones, the
      failure ladder) or ``"naive"`` (plain SET / DEL, for comparison only).
    - ``on_empty``: what a write-through does on a key the cache does not hold:
      ``"lease"`` takes a writer lease, reads the row back and fills it (the next
      read is a hit; one more DB read and cache round trip, cold keys only) or
      ``"tombstone"`` stores a tombstone (the next read misses and fills).
    - ``lease_wait``: how long a reader that finds another reader loading the
      key waits for that fill before reading the DB itself (0: at once).
    - ``write_budget``: seconds the failure ladder may spend on one cache write.
    - ``durability``: ``"best-effort"`` (repairs are recorded in this process) or
      ``"outbox"`` (each write also inserts an outbox row in the same transaction,
      so a writer that dies after its commit is repaired by any repair worker,
      e.g. ``writethrough repair``; costs one more row insert per write, and a
      batched delete off the write path).
    - ``table``: a :class:`Table` of *your* database (``Table("users", key="id")``): the
      store reads its rows by key, with their own version column, and caches each row as
      a dict; it never writes them (``put``/``delete`` raise ReadOnlyTableError): commit
      your own writes, then ``store.apply_write(key, version, value)`` -- or use an
      integration (``writethrough.integrations``, ``writethrough.django``).

    Settings are validated before anything is opened; a bad one raises ConfigError.
    """
    settings = _settings(locals())
    serializer = checked_serializer(serializer)
    opened_cache = open_cache(cache, **_options("cache_options", cache_options))
    try:
        options = _options("source_options", source_options)
        if table is not None:
            opened_source = open_table_source(source, table, namespace=namespace, **options)
        else:
            opened_source = open_source(source, namespace=namespace, **options)
    except BaseException:
        opened_cache.close()
        raise
    store = Store(
        opened_source,
        opened_cache,
        namespace=namespace,
        settings=settings,
        serializer=serializer,
        clock=clock,
        repair_worker=repair_worker,
    )
    if table is None:
        return store.open()
    from .lifecycle import after_open

    return after_open(store.open())  # type: ignore[no-any-return]


def open_async(
    source: str = "sqlite:///writethrough.db",
    cache: str = "memory://",
    *,
    strategy: Strategy = "write-through",
    ttl: float = 300.0,
    namespace: str = "default",
    protocol: ProtocolName = "versioned",
    serializer: Serializer | None = None,
    ttl_jitter: float = 0.1,
    tombstone_ttl: float | None = None,
    lease_ttl: float = 2.0,
    lease_wait: float = 0.1,
    on_empty: OnEmpty = "lease",
    write_budget: float = 0.05,
    retry: RetryPolicy | None = None,
    max_key_bytes: int = 1024,
    max_value_bytes: int = 1 << 20,
    repair_interval: float = 0.05,
    repair_worker: bool = True,
    durability: Durability = "best-effort",
    outbox_grace: float = 5.0,
    breaker_threshold: int = 5,
    breaker_reset: float = 1.0,
    epoch_refresh: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    source_options: dict[str, Any] | None = None,
    cache_options: dict[str, Any] | None = None,
    table: Table | None = None,
) -> AsyncOpener:
    """The asyncio store, with the same settings as :func:`open`.

        async with writethrough.open_async(source=..., cache="redis://...") as store:
            await store.put("user:42", {...})
        # or: store = await writethrough.open_async(...); ...; await store.close()
    """
    from ._async.store import AsyncStore
    from .caches import open_async_cache
    from .sources import open_async_source

    settings = _settings(locals())
    serializer = checked_serializer(serializer)
    opened_cache = open_async_cache(cache, **_options("cache_options", cache_options))
    options = _options("source_options", source_options)
    if table is not None:
        opened_source = open_async_table_source(source, table, namespace=namespace, **options)
    else:
        opened_source = open_async_source(source, namespace=namespace, **options)
    return AsyncOpener(
        AsyncStore(
            opened_source,
            opened_cache,
            namespace=namespace,
            settings=settings,
            serializer=serializer,
            clock=clock,
            repair_worker=repair_worker,
        )
    )


class AsyncOpener:
    """What ``open_async`` returns: ``await`` it, or use it with ``async with``."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store

    def __await__(self) -> Generator[Any, None, AsyncStore]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncStore:
        return await self._open()

    async def _open(self) -> AsyncStore:
        from .lifecycle import aafter_open

        opened: AsyncStore = await aafter_open(await self.store.open())
        return opened

    async def __aexit__(self, *exc: object) -> None:
        await self.store.close()


def __getattr__(name: str) -> Any:
    """``AsyncStore`` on first use: ``import writethrough`` for the sync API imports no asyncio."""
    if name == "AsyncStore":
        from ._async.store import AsyncStore

        return AsyncStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _settings(given: dict[str, Any]) -> Settings:
    """Every setting of open()/open_async() checked, before anything is opened."""
    check_namespace(given["namespace"])
    if not callable(given["clock"]):
        raise ConfigError(f"clock must be a callable returning seconds, got {given['clock']!r}")
    if not isinstance(given["repair_worker"], bool):
        raise ConfigError(f"repair_worker must be True or False, got {given['repair_worker']!r}")
    tombstone_ttl = given["tombstone_ttl"]
    return Settings(
        strategy=given["strategy"],
        protocol=given["protocol"],
        ttl=given["ttl"],
        ttl_jitter=given["ttl_jitter"],
        tombstone_ttl=_default_tombstone_ttl(given["ttl"]) if tombstone_ttl is None else tombstone_ttl,
        lease_ttl=given["lease_ttl"],
        lease_wait=given["lease_wait"],
        on_empty=given["on_empty"],
        write_budget=given["write_budget"],
        retry=given["retry"] or RetryPolicy(),
        max_key_bytes=given["max_key_bytes"],
        max_value_bytes=given["max_value_bytes"],
        repair_interval=given["repair_interval"],
        durability=given["durability"],
        outbox_grace=given["outbox_grace"],
        breaker_threshold=given["breaker_threshold"],
        breaker_reset=given["breaker_reset"],
        epoch_refresh=given["epoch_refresh"],
    )


def _options(name: str, options: object) -> dict[str, Any]:
    """``source_options`` / ``cache_options``: None or a dict of keyword arguments."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"{name} must be a dict of option names to values, got {options!r}")
    return options


def _default_tombstone_ttl(ttl: object) -> float:
    """Tombstones live min(ttl, 30 s). A bad ttl is left for Settings to reject."""
    if isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl > 0:
        return min(float(ttl), 30.0)
    return 30.0


__all__ = [
    "AsyncOpener",
    "AsyncStore",
    "BytesSerializer",
    "CacheError",
    "CacheOutcome",
    "CacheTimeout",
    "CacheUnavailable",
    "ConfigError",
    "InvalidKeyError",
    "InvalidValueError",
    "InvalidVersionError",
    "JSONSerializer",
    "ReadOnlyTableError",
    "RetryPolicy",
    "Serializer",
    "Settings",
    "SourceConflict",
    "SourceDataError",
    "SourceError",
    "SourceTimeout",
    "SourceUnavailable",
    "Stats",
    "Store",
    "Table",
    "Versioned",
    "WriteResult",
    "WritethroughError",
    "open",
    "open_async",
]
