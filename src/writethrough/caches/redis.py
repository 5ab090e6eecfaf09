"""Redis and Redis Cluster backends: URLs and clients (redis-py with hiredis).

``redis://[user:pass@]host:port/db?socket_timeout=0.05`` (``rediss://`` for TLS) and
``redis+cluster://host:7000,host:7001``. The backend classes are in
``_async/redis_cache.py`` (and its generated sync twin); the codec and the Lua
script in ``redis_codec.py``.

redis-py's own retries are switched off: the store's failure ladder owns every
retry, so its time budget holds (redis-py 8 retries by default, which turned a
50 ms socket timeout into 0.7 s on a paused server).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .._sync.redis_cache import (
    REIGN_RECHECK,
    LifetimeCheck,
    RedisCache,
    RedisClusterCache,
    check_lifetime,
)
from ..errors import ConfigError
from ..urls import ParsedURL
from .redis_codec import client_options, mapped_errors

__all__ = ["RedisCache", "RedisClusterCache", "cluster_from_url", "from_url"]  # + redis_async


ASYNC_CLUSTER_CONCURRENCY = 4


REDIS_DATABASES = 16  # Redis's default "databases 16": database numbers 0-15


def _check_hosts(url: ParsedURL) -> None:
    for host, _ in url.hosts:
        if "%" in host and ":" not in host:  # %-escapes: PostgreSQL socket paths, IPv6 zones
            raise ConfigError(f"Redis host {host!r} is not a host name or address: {url.redacted()}")


def recheck_lifetime_of(conn: Any) -> None:
    """Check a sync cluster connection's reign now, and again every ``REIGN_RECHECK`` s
    before a command (as :class:`LifetimeCheck` does for the connections we make)."""
    check_health = conn.check_health

    def rechecked() -> None:
        check_health()
        if time.monotonic() < conn.wt_next_check:
            return
        conn.wt_next_check = time.monotonic() + REIGN_RECHECK
        try:
            check_lifetime(conn, True)
        except BaseException:
            conn.disconnect()
            raise

    conn.wt_next_check = time.monotonic() + REIGN_RECHECK
    conn.check_health = rechecked
    check_lifetime(conn, True)


def lifetime_checked(base: type[Any], *, cluster: bool = False, mixin: type[Any] = LifetimeCheck) -> type[Any]:
    """``base`` (a redis-py connection class) checking the server's reign on connect and
    every REIGN_RECHECK seconds (``mixin``: the sync or the asyncio one)."""
    name = f"Lifetime{'Cluster' if cluster else ''}{base.__name__}"
    return type(name, (mixin, base), {"wt_cluster": cluster})


def _standalone(url: ParsedURL, options: dict[str, Any]) -> dict[str, Any]:
    _check_hosts(url)
    if len(url.hosts) != 1:
        raise ConfigError(f"a redis:// URL names one host, got {len(url.hosts)}: {url.redacted()}")
    host, port = url.hosts[0]
    db_text = url.path.strip("/") or "0"
    # Refused here, not by every SELECT after a database commit. A server configured with
    # more than 16 databases is not supported (see README, limits).
    if not (db_text.isascii() and db_text.isdigit()) or int(db_text) >= REDIS_DATABASES:
        raise ConfigError(f"Redis database must be a number 0-{REDIS_DATABASES - 1}, got "
                          f"{db_text!r} in {url.redacted()}")
    kwargs = client_options(url, options)
    if "max_concurrency" in kwargs:
        raise ConfigError(f"max_concurrency applies to redis+cluster:// URLs only "
                          f"(redis:// waits for one of max_connections): {url.redacted()}")
    kwargs.update(host=host, port=port or 6379, db=int(db_text))
    kwargs["timeout"] = kwargs.pop("pool_timeout")
    return kwargs


def _cluster(url: ParsedURL, options: dict[str, Any]) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    _check_hosts(url)
    if not url.hosts:
        raise ConfigError(f"a redis+cluster:// URL needs at least one seed node: {url.redacted()}")
    if url.path.strip("/") not in ("", "0"):
        raise ConfigError(f"Redis Cluster has only database 0: {url.redacted()}")
    kwargs = client_options(url, options)
    kwargs.pop("pool_timeout")
    return [(host, port or 6379) for host, port in url.hosts], kwargs


def from_url(url: ParsedURL, **options: Any) -> RedisCache:
    """The sync backend on one server.

    A blocking pool: when all ``max_connections`` are busy, a caller waits up to
    ``pool_timeout`` for one instead of failing at once.
    """
    kwargs = _standalone(url, options)
    ssl = kwargs.pop("ssl", False)
    kwargs["connection_class"] = lifetime_checked(redis.SSLConnection if ssl else redis.Connection)
    pool = redis.BlockingConnectionPool(retry=Retry(NoBackoff(), 0), **kwargs)  # type: ignore[no-untyped-call]
    return RedisCache(redis.Redis(connection_pool=pool))


def cluster_from_url(url: ParsedURL, **options: Any) -> RedisClusterCache:
    """The sync backend on a cluster (one or more seed nodes)."""
    seeds, kwargs = _cluster(url, options)
    limit = kwargs.pop("max_concurrency", kwargs["max_connections"])
    nodes = [ClusterNode(host, port) for host, port in seeds]  # type: ignore[no-untyped-call]
    # RedisCluster makes each node's client and picks its connection class itself (SSL or
    # not); it calls this after a connection's own set-up, before its first command.
    kwargs["redis_connect_func"] = recheck_lifetime_of
    with mapped_errors():
        client = RedisCluster(startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **kwargs)
    return RedisClusterCache(client, max_concurrency=limit)


def __getattr__(name: str) -> Any:
    """The asyncio backend lives in ``redis_async`` (so the sync API never imports asyncio)."""
    if name in ("AsyncRedisCache", "AsyncRedisClusterCache", "async_from_url", "async_cluster_from_url"):
        from . import redis_async

        return getattr(redis_async, name)
    raise AttributeError(name)
