"""The peers: cashews, aiocache, dogpile.cache, on the same Redis. Imported only here, lazily.

They are dev-only dependencies (the ``bench`` extra); a peer that is not installed
shows as "n/a (<name> not installed)" in its rows, it never fails the run.
"""

from __future__ import annotations

import importlib
from typing import Any

import orjson


def missing(name: str) -> str | None:
    """None if ``name`` imports, else the n/a note for it."""
    try:
        importlib.import_module(name)
    except ImportError:
        return f"n/a ({name} not installed: pip install 'writethrough[bench]')"
    return None


def dogpile_region(redis_url: str, *, expiration: int = 300) -> Any:
    """A dogpile.cache region on Redis, as its docs set one up (pickle, in-process lock)."""
    region_mod = importlib.import_module("dogpile.cache")
    return region_mod.make_region().configure(
        "dogpile.cache.redis",
        expiration_time=expiration,
        arguments={
            "url": redis_url,
            "redis_expiration_time": expiration,
            "socket_timeout": 1.0,
            # redis-py's pool refuses a 201st connection ("Too many connections"): the
            # 200-thread herd needs room, as writethrough's store gets (threads + 8).
            "connection_kwargs": {"max_connections": 256},
        },
    )


def cashews_cache(redis_url: str) -> Any:
    """A cashews ``Cache`` of its own on Redis (no client-side cache: a GET per get)."""
    cashews = importlib.import_module("cashews")
    cache = cashews.Cache()
    cache.setup(redis_url, client_side=False, socket_timeout=1.0, max_connections=64)
    return cache


def aiocache_cache(redis_url: str, namespace: str) -> Any:
    """An aiocache ``RedisCache`` with its JSON serializer."""
    aiocache = importlib.import_module("aiocache")
    serializers = importlib.import_module("aiocache.serializers")
    from ...urls import parse_url

    parsed = parse_url(redis_url, kind="cache", schemes={"redis": ""})
    host, port = parsed.hosts[0]
    return aiocache.RedisCache(
        endpoint=host,
        port=port or 6379,
        namespace=namespace,
        serializer=serializers.JsonSerializer(),
        timeout=1.0,
    )


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)
