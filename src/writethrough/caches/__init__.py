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
    "redis": "writethrough.caches.redis_async:async_from_url",
    "rediss": "writethrough.caches.redis_async:async_from_url",
    "redis+cluster": "writethrough.caches.redis_async:async_cluster_from_url",
    "rediss+cluster": "writethrough.caches.redis_async:async_cluster_from_url",
}


def open_cache(url: str, **options: Any) -> Cache:
    """Open the cache backend named by ``url`` (``memory://``, ``redis://...``).

    ``redis://...?near=10000[&near_ttl=60]`` wraps the Redis backend in a near cache
    (an in-process L1 kept coherent by Redis client tracking: ``caches/near.py``).
    """
    from ..urls import load_factory, parse_url

    url, near = _near(url)
    parsed = parse_url(url, kind="cache", schemes=BACKENDS)
    cache: Cache = load_factory(BACKENDS[parsed.scheme], parsed.scheme)(parsed, **options)
    if near is not None:
        from .near import NearCache, connection_factory

        entries, ttl = near
        return NearCache(cache, connection_factory(url), max_entries=entries, ttl=ttl)
    return cache


def open_async_cache(url: str, **options: Any) -> AsyncCache:
    """The asyncio backend for ``url`` (``near=`` as for :func:`open_cache`)."""
    from ..urls import load_factory, parse_url

    url, near = _near(url)
    parsed = parse_url(url, kind="cache", schemes=ASYNC_BACKENDS)
    factory = load_factory(ASYNC_BACKENDS[parsed.scheme], parsed.scheme)
    cache: AsyncCache = factory(parsed, **options)
    if near is not None:
        from .near import AsyncNearCache, connection_factory

        entries, ttl = near
        return AsyncNearCache(cache, connection_factory(url), max_entries=entries, ttl=ttl)
    return cache


def _near(url: str) -> tuple[str, tuple[int, float] | None]:
    """``url`` without its near-cache options, and (entries, ttl) if it asked for one."""
    if not isinstance(url, str) or "near" not in url:
        return url, None
    from .near import near_settings, split_near

    inner, options = split_near(url)
    if not options:
        return url, None
    return inner, near_settings(inner, options)


__all__ = ["ASYNC_BACKENDS", "BACKENDS", "AsyncCache", "Cache", "open_async_cache", "open_cache"]
