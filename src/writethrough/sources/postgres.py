"""PostgreSQL as the source of truth: URLs and factories (psycopg 3 and psycopg_pool).

``postgresql://user[:pass]@host[:port][,host2[:port]]/db?pool_max=10&table=...``.
The source classes are in ``_async/postgres_source.py`` (asyncio, on
``AsyncConnectionPool``) and its generated sync twin; SQL and error mapping in
``postgres_sql.py``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from psycopg.conninfo import make_conninfo

from .._async.postgres_source import AsyncPostgresSource
from .._sync.postgres_source import PostgresSource
from ..errors import ConfigError
from ..urls import ParsedURL
from .postgres_sql import DEFAULT_TABLE, LIBPQ_OPTIONS, OPTIONS, SSLMODES, map_error

__all__ = ["AsyncPostgresSource", "PostgresSource", "async_from_url", "from_url", "map_error"]


def from_url(url: ParsedURL, *, namespace: str, **options: Any) -> PostgresSource:
    """The sync source; it connects (and checks the server and the table) right away."""
    conninfo, kwargs = _parse(url, options)
    source = PostgresSource(conninfo, namespace=namespace, **kwargs)
    source.open()
    return source


def async_from_url(url: ParsedURL, *, namespace: str, **options: Any) -> AsyncPostgresSource:
    """The asyncio source: settings are checked now, the server at ``await open()``."""
    conninfo, kwargs = _parse(url, options)
    return AsyncPostgresSource(conninfo, namespace=namespace, **kwargs)


def _parse(url: ParsedURL, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The libpq conninfo (host, port, dbname, user, password, libpq options) and our options."""
    unknown = set(url.query) - OPTIONS - LIBPQ_OPTIONS
    if unknown:
        raise ConfigError(f"unknown PostgreSQL option(s) {sorted(unknown)} in {url.redacted()!r}")
    if set(options) - OPTIONS:
        raise ConfigError(f"unknown PostgreSQL source option(s) {sorted(set(options) - OPTIONS)}")
    params = {k: v for k, v in url.query.items() if k in LIBPQ_OPTIONS}
    if params.get("sslmode", "prefer") not in SSLMODES:
        raise ConfigError(f"sslmode must be one of {', '.join(SSLMODES)}, got "
                          f"{params['sslmode']!r} in {url.redacted()!r}")
    if url.hosts:  # a host may be a percent-encoded unix socket directory
        params["host"] = ",".join(unquote(host) for host, _ in url.hosts)
        if any(port is not None for _, port in url.hosts):
            params["port"] = ",".join(str(port or 5432) for _, port in url.hosts)
    if url.path:
        params["dbname"] = url.path
    if url.username:
        params["user"] = url.username
    if url.password is not None:
        params["password"] = url.password
    kwargs: dict[str, Any] = {"table": url.query.get("table", DEFAULT_TABLE)}
    for name, default in (("pool_min", 1), ("pool_max", 10), ("connect_timeout", 5),
                          ("statement_timeout_ms", 5000)):
        kwargs[name] = url.option(name, int, default)
    kwargs.update(options)
    return make_conninfo("", **params), kwargs
