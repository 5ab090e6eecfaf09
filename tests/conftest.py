"""Fixtures: one behaviour suite over every cache x source, real servers included.

Servers come from ``WRITETHROUGH_REDIS_URL`` / ``WRITETHROUGH_REDIS_CLUSTER_URL`` /
``WRITETHROUGH_POSTGRES_URL`` when set, else throwaway ones started from the
installed binaries (tests/servers.py), else the tests that need them are skipped
with the reason -- or fail, when ``WRITETHROUGH_REQUIRE_SERVERS=1`` (CI).
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import writethrough
from async_view import LoopThread, SyncView
from servers import (
    ClusterServer,
    PostgresServer,
    RedisServer,
    ServerUnavailable,
    postgres_server,
    redis_cluster,
    redis_server,
    unavailable,
)


def _implemented(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# Every backend the package ships; one whose server is missing skips (or fails in CI).
CACHES = ["memory"] + (["redis", "cluster"] if _implemented("writethrough.caches.redis") else [])
SOURCES = ["sqlite"] + (["postgres"] if _implemented("writethrough.sources.postgres") else [])
_counter = itertools.count()


def _server(factory: Callable[[], Any]) -> Iterator[Any]:
    try:
        manager = factory()
        server = manager.__enter__()
    except ServerUnavailable as exc:
        yield exc
        return
    try:
        yield server
    finally:
        manager.__exit__(None, None, None)


@pytest.fixture(scope="session")
def _redis_session() -> Iterator[Any]:
    yield from _server(redis_server)


@pytest.fixture(scope="session")
def _cluster_session() -> Iterator[Any]:
    yield from _server(redis_cluster)


@pytest.fixture(scope="session")
def _postgres_session() -> Iterator[Any]:
    yield from _server(postgres_server)


@pytest.fixture(scope="session")
def _logical_postgres_session() -> Iterator[Any]:
    yield from _server(lambda: postgres_server(wal_level="logical"))


@pytest.fixture
def logical_pg(_logical_postgres_session: Any) -> PostgresServer:
    """A PostgreSQL with ``wal_level=logical`` (a throwaway cluster unless
    ``WRITETHROUGH_POSTGRES_LOGICAL_URL`` names one)."""
    if isinstance(_logical_postgres_session, ServerUnavailable):
        unavailable(f"PostgreSQL with wal_level=logical: {_logical_postgres_session}")
    server: PostgresServer = _logical_postgres_session
    return server


@pytest.fixture
def redis_srv(_redis_session: Any) -> RedisServer:
    if isinstance(_redis_session, ServerUnavailable):
        unavailable(f"Redis: {_redis_session}")
    server: RedisServer = _redis_session
    return server


@pytest.fixture
def cluster_srv(_cluster_session: Any) -> ClusterServer:
    if isinstance(_cluster_session, ServerUnavailable):
        unavailable(f"Redis Cluster: {_cluster_session}")
    server: ClusterServer = _cluster_session
    return server


@pytest.fixture
def postgres_srv(_postgres_session: Any) -> PostgresServer:
    if isinstance(_postgres_session, ServerUnavailable):
        unavailable(f"PostgreSQL: {_postgres_session}")
    server: PostgresServer = _postgres_session
    return server


_RUN = uuid.uuid4().hex[:8]


def unique_namespace(prefix: str = "t") -> str:
    """Unique across runs too: a shared server (CI's PostgreSQL) keeps old rows."""
    return f"{prefix}{_RUN}x{next(_counter)}"


@pytest.fixture(params=CACHES)
def cache_url(request: pytest.FixtureRequest) -> str:
    kind = request.param
    if kind == "memory":
        return "memory://"
    # Timeouts roomier than the 50 ms default: CI's 2 shared cores stall for longer,
    # and a timeout is not what these tests are about (the fault tests set their own).
    roomy = "socket_timeout=0.5&socket_connect_timeout=0.5"
    if kind == "redis":
        return f"{request.getfixturevalue('redis_srv').url}?{roomy}"
    return f"{request.getfixturevalue('cluster_srv').url}?{roomy}"


@pytest.fixture(params=SOURCES)
def source_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/wt.db"
    return str(request.getfixturevalue("postgres_srv").url)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(params=["sync", "async"])
def make_any_store(
    request: pytest.FixtureRequest, cache_url: str, source_url: str, loop_thread: LoopThread
) -> Iterator[Callable[..., Any]]:
    """Like make_store, for the sync Store and (through a SyncView) the AsyncStore."""
    if request.param == "sync":
        yield request.getfixturevalue("make_store")
        return
    opened: list[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("namespace", unique_namespace())

        async def start() -> writethrough.AsyncStore:
            return await writethrough.open_async(source=source_url, cache=cache_url, **options)

        store = SyncView(loop_thread.run(start()), loop_thread)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def make_store(cache_url: str, source_url: str) -> Iterator[Callable[..., writethrough.Store]]:
    """Open stores on the parametrized cache x source; each gets its own namespace."""
    opened: list[writethrough.Store] = []

    def make(**options: Any) -> writethrough.Store:
        options.setdefault("namespace", unique_namespace())
        store = writethrough.open(source=source_url, cache=cache_url, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
