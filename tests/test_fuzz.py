"""Fuzzing the public API with Hypothesis: every outcome is a success or a project error.

- open()/open_async() with fuzzed settings and URLs: success, or a WritethroughError
  (never a TypeError, a driver's exception or a traceback from inside a backend); after a
  ConfigError nothing was opened (the SQLite file does not exist); a password in the URL
  never shows in the error.
- put/get/delete with fuzzed keys and values, on SQLite + memory:// and on real
  PostgreSQL + Redis: success (and the value reads back as JSON would return it), or a
  WritethroughError after which the database row and the cache entry are unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import writethrough
from conftest import unique_namespace
from servers import free_port
from writethrough import ConfigError, InvalidKeyError, InvalidValueError, Store, WritethroughError

NAN, INF = float("nan"), float("inf")
PASSWORD = "Fz/s3cr!t@x"
CLOSED_PORT = free_port()  # nothing listens here: connections are refused at once
_files = itertools.count()

# -- fuzzed settings ------------------------------------------------------------------------

hostile = st.one_of(
    st.sampled_from([NAN, INF, -INF, -1, 0, -0.0, 1e17, 1e300, 2**63, True, None, "1", "", [], {}]),
    st.floats(), st.integers(-(2**70), 2**70), st.text(max_size=5),
)


def setting(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(good, good, hostile)


SETTINGS = {
    "strategy": setting(st.sampled_from(["write-through", "invalidate"])),
    "protocol": setting(st.sampled_from(["versioned", "naive"])),
    "ttl": setting(st.floats(0.001, 3600)),
    "ttl_jitter": setting(st.floats(0, 0.99)),
    "tombstone_ttl": setting(st.one_of(st.none(), st.floats(0.001, 60))),
    "lease_ttl": setting(st.floats(0.001, 10)),
    "lease_wait": setting(st.floats(0, 0.2)),
    "write_budget": setting(st.floats(0.001, 0.2)),
    "max_key_bytes": setting(st.integers(1, 4096)),
    "max_value_bytes": setting(st.integers(1, 1 << 20)),
    "repair_interval": setting(st.floats(0.01, 1)),
    "durability": setting(st.sampled_from(["best-effort", "outbox"])),
    "outbox_grace": setting(st.floats(0, 10)),
    "breaker_threshold": setting(st.integers(1, 10)),
    "breaker_reset": setting(st.floats(0.01, 5)),
    "namespace": setting(st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)),
    "retry": setting(st.builds(writethrough.RetryPolicy, st.integers(0, 3), st.floats(0, 0.01),
                               st.floats(0, 0.02))),
    "repair_worker": setting(st.booleans()),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.fixed_dictionaries({}, optional=SETTINGS))
@example(chosen={"retry": "x"})
@example(chosen={"ttl": 1e17, "namespace": "a:b"})
def test_open_with_fuzzed_settings(tmp_path: Path, chosen: dict[str, Any]) -> None:
    db = tmp_path / f"s{next(_files)}.db"
    try:
        store = writethrough.open(source=f"sqlite:///{db}", **chosen)
    except ConfigError:
        assert not db.exists(), "a ConfigError after the database was opened"
        return
    with store:  # a one-byte key and value fit every accepted size limit
        result = store.put("k", 1)
        assert result.version == 1
        assert store.get("k") == 1


@settings(max_examples=100, deadline=None)
@given(chosen=st.fixed_dictionaries({}, optional=SETTINGS))
def test_open_async_with_fuzzed_settings(chosen: dict[str, Any]) -> None:
    async def run() -> None:
        try:
            opener = writethrough.open_async(source="sqlite:///:memory:", **chosen)
        except ConfigError:
            return
        async with opener as store:
            await store.put("k", 1)
            assert await store.get("k") == 1

    asyncio.run(run())


# -- fuzzed URLs ----------------------------------------------------------------------------

OPTION_NAMES = ["socket_timeout", "socket_connect_timeout", "pool_timeout", "max_connections",
                "health_check_interval", "ssl_cert_reqs", "ssl_ca_certs", "client_name",
                "max_concurrency", "max_entries", "max_bytes", "table", "pool_min", "pool_max",
                "connect_timeout", "statement_timeout_ms", "sslmode", "busy_timeout",
                "synchronous", "password", "bogus"]
OPTION_VALUES = ["0", "-1", "1", "0.5", "nan", "inf", "1e17", "none", "", "x", "10000000000",
                 "required", "bogus", "a b", "t%0A", "²", "NORMAL", "verify-full"]

userinfo = st.one_of(
    st.just(""),
    st.just(f"u:{urllib.parse.quote(PASSWORD, safe='')}@"),
    st.just(f":{urllib.parse.quote(PASSWORD, safe='')}@"),
    st.just(f"u:{PASSWORD}@"),  # unencoded: '/', '!' and '@' in the password
)
hosts = st.one_of(
    st.sampled_from([f"127.0.0.1:{CLOSED_PORT}", f"[::1]:{CLOSED_PORT}", "[::1", "127.0.0.1:0",
                     "127.0.0.1:99999", "127.0.0.1:²", "h o", "", f"127.0.0.1:{CLOSED_PORT},"
                     f"127.0.0.1:{CLOSED_PORT}", "%2Ftmp%2Fnope", "h%0A"]),
)
paths = st.one_of(st.sampled_from(["", "/", "/0", "/15", "/16", "/99", "/db", "/:memory:",
                                   "/x.db", "//abs.db"]), st.text(max_size=6).map(lambda t: "/" + t))
queries = st.lists(st.tuples(st.one_of(st.sampled_from(OPTION_NAMES), st.text(max_size=4)),
                             st.one_of(st.sampled_from(OPTION_VALUES), st.text(max_size=4))),
                   max_size=3).map(lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs)
                                   if pairs else "")
SCHEMES = ["redis", "rediss", "redis+cluster", "memory", "sqlite", "postgresql", "postgres",
           "redsi", "REDIS", "mysql", ""]
urls = st.one_of(
    st.builds(lambda s, u, h, p, q: f"{s}://{u}{h}{p}{q}", st.sampled_from(SCHEMES), userinfo,
              hosts, paths, queries),
    st.text(max_size=30),
)


def _is_sqlite_file(url: str) -> bool:
    return url.lower().startswith("sqlite://") and ":memory:" not in url


@settings(max_examples=400, deadline=None)
@given(cache=urls, source=urls)
@example(cache="redsi://:s3cr!t@localhost:6379/0", source="sqlite:///:memory:")
def test_open_with_fuzzed_urls(cache: str, source: str) -> None:
    if _is_sqlite_file(source):
        source = "sqlite:///:memory:"  # keep the fuzz from writing files into the work tree
    try:
        store = writethrough.open(source=source, cache=cache + _fast(cache),
                                  source_options=_fast_source(source), write_budget=0.01)
    except WritethroughError as exc:
        for spelling in (PASSWORD, urllib.parse.quote(PASSWORD, safe=""), "s3cr!t"):
            assert spelling not in str(exc), f"password in {exc}"
        return
    with store:
        store.put("k", 1)  # the cache may be down (a closed port): PENDING_REPAIR, not a raise
        assert store.get("k") == 1


def _fast(cache: str) -> str:
    """Short connect timeouts on Redis URLs without one (the fuzz does not wait on sockets)."""
    if cache.lower().startswith("redis") and "socket_connect_timeout" not in cache:
        return ("&" if "?" in cache else "?") + "socket_connect_timeout=0.2"
    return ""


def _fast_source(source: str) -> dict[str, Any] | None:
    if source.lower().startswith("postgres") and "connect_timeout" not in source:
        return {"connect_timeout": 1}
    return None


@settings(max_examples=300, deadline=None)
@given(url=urls)
def test_parsed_urls_never_show_the_password(url: str) -> None:
    from writethrough.caches import BACKENDS as CACHES
    from writethrough.sources import BACKENDS as SOURCES
    from writethrough.urls import parse_url

    for schemes in (CACHES, SOURCES):
        try:
            parsed = parse_url(url, kind="x", schemes=schemes)
        except ConfigError as exc:
            shown = str(exc)
        else:
            shown = f"{parsed!r} {parsed.redacted()}"
        assert urllib.parse.quote(PASSWORD, safe="") not in shown
        assert "s3cr!t" not in shown


# -- fuzzed keys, values and operations -----------------------------------------------------

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
values = st.one_of(
    st.recursive(json_leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3)),
        max_leaves=8),
    st.sampled_from([b"bytes", {1, 2}, object(), "x" * 2000, [[[[[[]]]]]]]),
)
keys = st.one_of(
    st.text(alphabet="abc:é/ \x00", min_size=1, max_size=4),  # a small space: keys collide
    st.sampled_from(["", "x" * 1025, "é" * 513, "\ud800", "k\n", " "]),
    st.sampled_from([None, 42, b"k", ("k",), 1.5]),
)
operations = st.lists(st.tuples(st.sampled_from(["put", "get", "delete"]), keys, values),
                      min_size=1, max_size=12)


def _snapshot(store: Store, key: object) -> Any:
    """(row, cache entry) of ``key``, or None if the key cannot even be read."""
    try:  # straight to the backends, which do not check keys (the store does)
        return store.source.read(key), store.cache.get(f"wt:{store.namespace}:{key}")  # type: ignore[arg-type]
    except Exception:
        return None


def _as_json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def run_operations(store: Store, model: dict[str, Any], ops: list[tuple[str, Any, Any]]) -> None:
    for op, key, value in ops:
        before = _snapshot(store, key)
        try:
            if op == "put":
                store.put(key, value)
                # Accepted only if it reads back as itself (NaN was stored as null).
                assert all(math.isfinite(v) for v in _leaves(value) if isinstance(v, float))
                model[key] = _as_json(value)
            elif op == "delete":
                store.delete(key)
                model.pop(key, None)
            else:
                assert store.get(key) == model.get(key), f"get({key!r})"
        except (InvalidKeyError, InvalidValueError) as exc:
            assert before is None or _snapshot(store, key) == before, f"{op}({key!r}) -> {exc}"
            if isinstance(exc, InvalidValueError):
                assert op == "put"
                floats = [v for v in _leaves(value) if isinstance(v, float)]
                assert not _serializable(value) or any(not math.isfinite(f) for f in floats) or (
                    len(orjson.dumps(value)) > store.settings.max_value_bytes)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _serializable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except TypeError:
        return False
    return True


@pytest.fixture(scope="module")
def sqlite_memory_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    with writethrough.open(source=f"sqlite:///{path}", cache="memory://",
                           namespace=unique_namespace("fz"), max_value_bytes=1000) as store:
        yield store


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
@example(ops=[("put", "a", {"x": [NAN]}), ("get", "a", None)])
def test_fuzzed_operations_on_sqlite_and_memory(sqlite_memory_store: Store,
                                                ops: list[tuple[str, Any, Any]]) -> None:
    run_operations(sqlite_memory_store, _MODELS.setdefault("sqlite", {}), ops)


_MODELS: dict[str, dict[str, Any]] = {}  # one model per store: the store outlives the examples


@pytest.mark.redis
@pytest.mark.postgres
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
@example(ops=[("put", "a", INF), ("get", "a", None)])
def test_fuzzed_operations_on_postgres_and_redis(real_store: Store,
                                                 ops: list[tuple[str, Any, Any]]) -> None:
    run_operations(real_store, _MODELS.setdefault(real_store.namespace, {}), ops)


@pytest.fixture
def real_store(_real_store: Store) -> Store:
    return _real_store


@pytest.fixture(scope="module")
def _real_store(_redis_session: Any, _postgres_session: Any) -> Iterator[Store]:
    from servers import ServerUnavailable, unavailable

    for server in (_redis_session, _postgres_session):
        if isinstance(server, ServerUnavailable):
            unavailable(str(server))
    cache = f"{_redis_session.url}?socket_timeout=0.5&socket_connect_timeout=0.5"
    with writethrough.open(source=str(_postgres_session.url), cache=cache,
                           namespace=unique_namespace("fz"), max_value_bytes=1000) as store:
        yield store
