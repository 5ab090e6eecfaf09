"""Cache backends, registered by URL scheme and imported lazily."""

from __future__ import annotations

from typing import Any

from .base import AsyncCache, Cache

# scheme -> "module:factory"; a factory takes the parsed URL and keyword options.
BACKENDS: dict[str, str] = {
    "memory": "writethrough.caches.memory:from_url",
    "redis": "writethrough.caches.redis:from_url",
    "rediss": "writethrough.caches.redis:from_url",
    "redis+cluster": "writethrough.caches.redis:cluster_from_url",
    "rediss+cluster": "writethrough.caches.redis:cluster_from_url",
}
ASYNC_BACKENDS: dict[str, str] = {
    "memory": "writethrough.caches.memory:async_from_url",
    "redis": "writethrough.caches.redis:async_from_url",
    "rediss": "writethrough.caches.redis:async_from_url",
    "redis+cluster": "writethrough.caches.redis:async_cluster_from_url",
    "rediss+cluster": "writethrough.caches.redis:async_cluster_from_url",
}


def open_cache(url: str, **options: Any) -> Cache:
    """Open the cache backend named by ``url`` (``memory://``, ``redis://...``)."""
    from ..urls import load_factory, parse_url

    parsed = parse_url(url, kind="cache", schemes=BACKENDS)
    cache: Cache = load_factory(BACKENDS[parsed.scheme], parsed.scheme)(parsed, **options)
    return cache


def open_async_cache(url: str, **options: Any) -> AsyncCache:
    """The asyncio backend for ``url``."""
    from ..urls import load_factory, parse_url

    parsed = parse_url(url, kind="cache", schemes=ASYNC_BACKENDS)
    factory = load_factory(ASYNC_BACKENDS[parsed.scheme], parsed.scheme)
    cache: AsyncCache = factory(parsed, **options)
    return cache


__all__ = ["ASYNC_BACKENDS", "BACKENDS", "AsyncCache", "Cache", "open_async_cache", "open_cache"]
