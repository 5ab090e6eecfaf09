"""Sources of truth, registered by URL scheme and imported lazily."""

from __future__ import annotations

from typing import Any

from .base import AsyncSource, Row, Source

BACKENDS: dict[str, str] = {
    "sqlite": "writethrough.sources.sqlite:from_url",
    "postgresql": "writethrough.sources.postgres:from_url",
    "postgres": "writethrough.sources.postgres:from_url",
}
ASYNC_BACKENDS: dict[str, str] = {
    "sqlite": "writethrough.sources.sqlite_async:async_from_url",
    "postgresql": "writethrough.sources.postgres:async_from_url",
    "postgres": "writethrough.sources.postgres:async_from_url",
}


def open_source(url: str, *, namespace: str, **options: Any) -> Source:
    """Open the source named by ``url`` (``sqlite:///app.db``, ``postgresql://...``)."""
    from ..urls import load_factory, parse_url

    parsed = parse_url(url, kind="source", schemes=BACKENDS)
    factory = load_factory(BACKENDS[parsed.scheme], parsed.scheme)
    source: Source = factory(parsed, namespace=namespace, **options)
    return source


def open_async_source(url: str, *, namespace: str, **options: Any) -> AsyncSource:
    """The asyncio source for ``url``."""
    from ..urls import load_factory, parse_url

    parsed = parse_url(url, kind="source", schemes=ASYNC_BACKENDS)
    factory = load_factory(ASYNC_BACKENDS[parsed.scheme], parsed.scheme)
    source: AsyncSource = factory(parsed, namespace=namespace, **options)
    return source


__all__ = [
    "ASYNC_BACKENDS",
    "BACKENDS",
    "AsyncSource",
    "Row",
    "Source",
    "open_async_source",
    "open_source",
]
