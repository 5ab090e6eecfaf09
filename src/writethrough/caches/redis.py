"""Redis and Redis Cluster backends (redis-py with hiredis).

One Redis key per entry, so every operation touches one key: correct on a cluster
without hash tags. A read hit is one GET; a conditional write, a lease and a fill
are one EVALSHA each of ``protocol.lua`` (redis-py's Script reloads it after
NOSCRIPT, i.e. after a restart or failover).

redis-py's own retries are switched off: the store's failure ladder owns every
retry, so its time budget holds.

    cache = RedisCache.from_client(redis.Redis(socket_timeout=0.05))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from ..errors import (
    CacheDataError,
    CacheError,
    CacheServerError,
    CacheTimeout,
    CacheUnavailable,
    ConfigError,
)
from ..protocol import Entry, Kind, LeaseOutcome, OnEmpty, WriteOutcome
from ..urls import ParsedURL

SCRIPT = files(__package__).joinpath("protocol.lua").read_text(encoding="utf-8")
_KINDS = {b"V"[0]: Kind.VALUE, b"T"[0]: Kind.TOMBSTONE, b"L"[0]: Kind.LEASE}
_WRITE_OUTCOMES = {o.value.encode(): o for o in WriteOutcome}


def encode(entry: Entry) -> bytes:
    """``<kind><fresh><version>:<payload or token>``"""
    return b"%s%d%d:%s" % (entry.kind.value.encode(), entry.fresh, entry.version, entry.payload)


def decode(raw: bytes) -> Entry:
    try:
        colon = raw.index(b":", 2)
        return Entry(_KINDS[raw[0]], int(raw[2:colon]), raw[1] == 49, raw[colon + 1 :])
    except (ValueError, KeyError, IndexError):
        raise CacheDataError(f"not a writethrough entry: {raw[:40]!r}") from None


def _ms(seconds: float) -> int:
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


class RedisCache:
    """A cache backend on one Redis server (or, via :class:`RedisClusterCache`, a cluster).

        >>> cache = RedisCache(redis.Redis.from_url("redis://127.0.0.1:6379/0"))
        >>> cache.get("wt:ns:missing") is None
        True
    """

    name = "redis"

    def __init__(self, client: Any) -> None:
        self.client = client
        self._script = client.register_script(SCRIPT)

    def get(self, key: str) -> Entry | None:
        with mapped_errors():
            raw = self.client.get(key)
        return None if raw is None else decode(raw)

    def write(
        self,
        key: str,
        kind: Kind,
        version: int,
        payload: bytes,
        *,
        ttl: float,
        tombstone_ttl: float,
        on_empty: OnEmpty,
    ) -> WriteOutcome:
        args = ["write", kind.value, version, payload, _ms(ttl), _ms(tombstone_ttl), on_empty]
        with mapped_errors():
            result = self._script(keys=[key], args=args)
        return _WRITE_OUTCOMES[result]

    def lease(self, key: str, token: bytes, *, lease_ttl: float) -> tuple[LeaseOutcome, Entry | None]:
        with mapped_errors():
            result = self._script(keys=[key], args=["lease", token, _ms(lease_ttl)])
        outcome = LeaseOutcome(result[0].decode())
        return outcome, decode(result[1]) if outcome is LeaseOutcome.HIT else None

    def fill(self, key: str, token: bytes, entry: Entry, *, ttl: float) -> bool:
        args = ["fill", token, entry.kind.value, entry.version, encode(entry), _ms(ttl)]
        with mapped_errors():
            return bool(self._script(keys=[key], args=args))

    def set(self, key: str, entry: Entry, *, ttl: float) -> None:
        with mapped_errors():
            self.client.set(key, encode(entry), px=_ms(ttl))

    def delete(self, key: str) -> None:
        with mapped_errors():
            self.client.delete(key)

    def close(self) -> None:
        self.client.close()


class RedisClusterCache(RedisCache):
    """The same backend on a Redis Cluster; redis-py follows MOVED/ASK redirects."""

    name = "redis+cluster"


OPTIONS: dict[str, Callable[[str], Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "max_connections": int,
    "health_check_interval": float,
    "ssl_cert_reqs": str,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "client_name": str,
}
DEFAULTS: dict[str, Any] = {
    "socket_timeout": 0.05,
    "socket_connect_timeout": 0.05,
    "max_connections": 64,
}


def _client_options(url: ParsedURL, options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(url.query) - set(OPTIONS)
    if unknown:
        raise ConfigError(
            f"unknown Redis option(s) {sorted(unknown)} in {url.redacted()}; known: {sorted(OPTIONS)}"
        )
    kwargs = dict(DEFAULTS)
    for name, convert in OPTIONS.items():
        if name in url.query:
            kwargs[name] = url.option(name, convert, None)
    kwargs.update(options)
    for name in ("socket_timeout", "socket_connect_timeout"):
        if not isinstance(kwargs[name], int | float) or kwargs[name] <= 0:
            raise ConfigError(f"{name} must be > 0 seconds, got {kwargs[name]!r}")
    # The ladder owns retries: redis-py must not retry (it would blow the write budget).
    kwargs["retry"] = Retry(NoBackoff(), 0)
    kwargs["username"] = url.username
    kwargs["password"] = url.password
    if url.scheme.startswith("rediss"):
        kwargs["ssl"] = True
    return kwargs


def from_url(url: ParsedURL, **options: Any) -> RedisCache:
    """``redis://[user:pass@]host:port/db?socket_timeout=0.05`` (``rediss://`` for TLS)."""
    if len(url.hosts) != 1:
        raise ConfigError(f"a redis:// URL names one host, got {len(url.hosts)}: {url.redacted()}")
    host, port = url.hosts[0]
    db_text = url.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ConfigError(f"Redis database must be a number, got {db_text!r} in {url.redacted()}")
    kwargs = _client_options(url, options)
    client = redis.Redis(host=host, port=port or 6379, db=int(db_text), **kwargs)
    return RedisCache(client)


def cluster_from_url(url: ParsedURL, **options: Any) -> RedisClusterCache:
    """``redis+cluster://host:7000,host:7001`` (one or more seed nodes)."""
    if not url.hosts:
        raise ConfigError(f"a redis+cluster:// URL needs at least one seed node: {url.redacted()}")
    if url.path.strip("/") not in ("", "0"):
        raise ConfigError(f"Redis Cluster has only database 0: {url.redacted()}")
    kwargs = _client_options(url, options)
    kwargs.pop("max_connections", None)
    nodes = [ClusterNode(host, port or 6379) for host, port in url.hosts]  # type: ignore[no-untyped-call]
    with mapped_errors():
        client = RedisCluster(startup_nodes=nodes, **kwargs)
    return RedisClusterCache(client)
