"""The asyncio Redis and Redis Cluster backends' factories (``redis.py`` has the URLs).

Apart from ``redis.py`` so that the sync API never imports asyncio.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
from redis.backoff import NoBackoff

from .._async.redis_cache import AsyncRedisCache, AsyncRedisClusterCache
from .._async.redis_cache import LifetimeCheck as AsyncLifetimeCheck
from ..urls import ParsedURL
from .redis import ASYNC_CLUSTER_CONCURRENCY, _cluster, _standalone, lifetime_checked
from .redis_codec import mapped_errors

__all__ = ["AsyncRedisCache", "AsyncRedisClusterCache", "async_cluster_from_url", "async_from_url"]


def async_from_url(url: ParsedURL, **options: Any) -> AsyncRedisCache:
    """The asyncio backend on one server (redis.asyncio)."""
    kwargs = _standalone(url, options)
    ssl = kwargs.pop("ssl", False)
    base = redis.asyncio.SSLConnection if ssl else redis.asyncio.Connection
    kwargs["connection_class"] = lifetime_checked(base, mixin=AsyncLifetimeCheck)
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    kwargs.pop("timeout")
    # A plain pool behind a semaphore of the same size: tasks beyond max_connections
    # wait their turn (the plain pool alone would fail them), and an uncontended
    # semaphore is cheaper than redis.asyncio's BlockingConnectionPool.
    pool = redis.asyncio.ConnectionPool(retry=retry, **kwargs)
    client = redis.asyncio.Redis(connection_pool=pool)
    return AsyncRedisCache(client, max_concurrency=kwargs["max_connections"])


def async_cluster_from_url(url: ParsedURL, **options: Any) -> AsyncRedisClusterCache:
    """The asyncio backend on a cluster; it connects on first use."""
    seeds, kwargs = _cluster(url, options)
    # redis-py 8.1's asyncio cluster client loses connections ("'NoneType' object has no
    # attribute 'writelines'", "Connection closed by server") when more than a few
    # commands are in flight at once; seen here from 16 concurrent tasks, never at 4.
    limit = kwargs.pop("max_concurrency", ASYNC_CLUSTER_CONCURRENCY)
    base = redis.asyncio.SSLConnection if kwargs.get("ssl") else redis.asyncio.Connection
    checked = lifetime_checked(base, cluster=True, mixin=AsyncLifetimeCheck)
    nodes = [redis.asyncio.cluster.ClusterNode(host, port, connection_class=checked)
             for host, port in seeds]
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    with mapped_errors():
        client = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, retry=retry, **kwargs)
    # The client made its own choice of connection class (SSL or not) for the nodes it
    # discovers; they are made from this dict later, on first use.
    client.connection_kwargs["connection_class"] = checked
    return AsyncRedisClusterCache(client, max_concurrency=limit)
