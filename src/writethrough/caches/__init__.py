"""Cache backends, registered by URL scheme and imported lazily."""

from __future__ import annotations

from typing import Any

from .base import Cache

# scheme -> "module:factory"; a factory takes the parsed URL and keyword options.
BACKENDS: dict[str, str] = {
    "memory": "writethrough.caches.memory:from_url",
    "redis": "writethrough.caches.redis:from_url",
    "rediss": "writethrough.caches.redis:from_url",
    "redis+cluster": "writethrough.caches.redis:cluster_from_url",
    "rediss+cluster": "writethrough.caches.redis:cluster_from_url",
}


def open_cache(url: str, **options: Any) -> Cache:
    """Open the cache backend named by ``url`` (``memory://``, ``redis://...``)."""
    from ..urls import load_factory, parse_url

    parsed = parse_url(url, kind="cache", schemes=BACKENDS)
    factory = load_factory(BACKENDS[parsed.scheme], parsed.scheme)
    cache: Cache = factory(parsed, **options)
    return cache


__all__ = ["BACKENDS", "Cache", "open_cache"]
