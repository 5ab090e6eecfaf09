"""Bad settings are refused at open() with a ConfigError, before anything is opened.

Each of these used to be accepted: some failed every cache write *after* the database
commit (the write landed, no repair was recorded), others were silently useless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import writethrough
from servers import free_port
from writethrough import (
    CacheError,
    CacheOutcome,
    ConfigError,
    InvalidValueError,
    RetryPolicy,
    Store,
)

MakeStore = Callable[..., Store]
NAN, INF = float("nan"), float("inf")


def redis_url(server: Any, query: str = "", db: str = "0") -> str:
    base = server.url.rsplit("/", 1)[0]
    return f"{base}/{db}" + (f"?{query}" if query else "")


# -- the store's own settings ---------------------------------------------------------------

STORE_SETTINGS: list[dict[str, Any]] = [
    {"retry": "x"},
    {"retry": {"retries": 2}},
    {"ttl": 1e17},  # PX overflows on Redis: nothing would ever be cached
    {"ttl": 10 * 365 * 86400 + 1},
    {"tombstone_ttl": 1e17},
    {"lease_ttl": INF},
    {"repair_interval": 1e10},  # beyond threading.TIMEOUT_MAX: the worker thread would die
    {"write_budget": NAN},
    {"breaker_reset": 1e300},
    {"ttl_jitter": "0.1"},
    {"ttl_jitter": NAN},
    {"breaker_threshold": True},
    {"max_key_bytes": True},
    {"max_value_bytes": 1 << 40},
    {"namespace": "a:b"},  # would share entries with namespace "a", keys "b:..."
    {"namespace": None},
    {"namespace": "ok\n"},  # '$' matched before a trailing newline
    {"clock": 5},
    {"repair_worker": "no"},
    {"serializer": object()},
    {"cache_options": "socket_timeout=1"},
    {"source_options": ["table"]},
]


@pytest.mark.parametrize("options", STORE_SETTINGS, ids=repr)
def test_bad_store_settings_are_refused_before_opening(tmp_path: Path, options: dict[str, Any]) -> None:
    db = tmp_path / "x.db"
    with pytest.raises(ConfigError):
        writethrough.open(source=f"sqlite:///{db}", **options)
    with pytest.raises(ConfigError):
        writethrough.open_async(source=f"sqlite:///{db}", **options)
    assert not db.exists()


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"base": NAN}, {"cap": INF}, {"retries": -1},
                                    {"retries": 10**6}, {"retries": 1.5}, {"base": "0.1"}],
                         ids=repr)
def test_retry_policies_are_checked_when_made(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


def test_namespace_rule_is_one_pure_function() -> None:
    from writethrough.checks import check_namespace

    assert check_namespace("profiles.v2-x_1") == "profiles.v2-x_1"
    for bad in ("a:b", "", None, "x" * 65, "ok\n", "a b", "é", 42):
        with pytest.raises(ConfigError):
            check_namespace(bad)


@pytest.mark.parametrize("namespace", ["a:b", None, "ok\n"])
def test_store_constructors_refuse_bad_namespaces(namespace: Any) -> None:
    from writethrough.caches.memory import MemoryCache
    from writethrough.sources.sqlite import SQLiteSource

    with pytest.raises(ConfigError):
        Store(SQLiteSource(":memory:", namespace="n"), MemoryCache(), namespace=namespace)


def test_identifiers_refuse_a_trailing_newline(tmp_path: Path) -> None:
    from writethrough.capture import Keyspace
    from writethrough.checks import check_identifier
    from writethrough.sources.sqlite import SQLiteSource

    with pytest.raises(ConfigError):
        check_identifier("items\n")
    with pytest.raises(ConfigError):
        SQLiteSource(str(tmp_path / "x.db"), namespace="n", table="items\n")
    with pytest.raises(ConfigError):
        writethrough.open(source=f"sqlite:///{tmp_path}/x.db?table=items%0A")
    for bad in ({"table": "t\n"}, {"key_column": "id\n"}, {"version_column": "v\n"},
                {"namespace": "ns\n"}, {"ttl": 1e17}, {"ttl": INF}):
        with pytest.raises(ConfigError):
            Keyspace(**{"namespace": "ns", "table": "t", "key_column": "id", **bad})


# -- cache URLs and options ----------------------------------------------------------------

REDIS_QUERIES = [
    "socket_timeout=nan",
    "socket_timeout=inf",
    "socket_timeout=0",
    "socket_connect_timeout=-1",
    "pool_timeout=-1",  # redis-py raised ValueError on every call, after the commit
    "pool_timeout=nan",
    "health_check_interval=-1",
    "max_connections=0",
    "max_connections=1000000000",  # redis-py's blocking pool pre-allocates a slot each
    "ssl_cert_reqs=required",  # TLS options on a plain redis:// URL
    "client_name=my%20app",  # Redis refuses a name with a space on every new connection
    "max_concurrency=4",  # only the cluster clients use it
    "socket_timeout=0.5&socket_timeout=1",
]


@pytest.mark.redis
@pytest.mark.parametrize("query", REDIS_QUERIES)
def test_bad_redis_options_are_refused_at_open(redis_srv: Any, tmp_path: Path, query: str) -> None:
    db = tmp_path / "x.db"
    with pytest.raises(ConfigError):
        writethrough.open(source=f"sqlite:///{db}", cache=redis_url(redis_srv, query))
    assert not db.exists()


@pytest.mark.redis
@pytest.mark.parametrize("db_text", ["16", "99", "²", "-1"])
def test_redis_databases_beyond_the_default_16_are_refused(redis_srv: Any, db_text: str) -> None:
    with pytest.raises(ConfigError, match="0-15"):
        writethrough.open(source="sqlite:///:memory:", cache=redis_url(redis_srv, db=db_text))


@pytest.mark.redis
@pytest.mark.parametrize("options", [{"socket_timeout": NAN}, {"pool_timeout": -1},
                                     {"decode_responses": True}, {"max_connections": 0},
                                     {"ssl_cert_reqs": "bogus"}], ids=repr)
def test_cache_options_are_checked_like_url_options(redis_srv: Any, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        writethrough.open(source="sqlite:///:memory:", cache=redis_srv.url, cache_options=options)


@pytest.mark.parametrize("query", ["ssl_cert_reqs=bogus", "ssl_ca_certs=/no/such/file",
                                   "max_concurrency=0", "max_concurrency=x"])
def test_bad_tls_and_cluster_options(query: str) -> None:
    with pytest.raises(ConfigError):
        writethrough.open(source="sqlite:///:memory:", cache=f"rediss+cluster://127.0.0.1:1?{query}")


@pytest.mark.parametrize("url", ["redis://[::1/0", "redis://[::1]x/0", "redis://[nope]:1/0",
                                 "redis://h:²/0", "redis://h:0/0", "redis://h:65536/0",
                                 "redis://h o/0", "redis://h%0A/0", "redis://h\n/0"])
def test_malformed_hosts_are_refused_not_guessed(url: str) -> None:
    """``redis://[::1/0`` used to resolve to [::1]:6379."""
    with pytest.raises(ConfigError):
        writethrough.open(source="sqlite:///:memory:", cache=url)


@pytest.mark.parametrize("query", ["max_bytes=0", "max_entries=0", "max_entries=-1",
                                   "max_bytes=1.5", "max_entries=nan"])
def test_memory_bounds_are_positive_or_none(query: str) -> None:
    """max_bytes=0 used to mean "no bound"; "none" says so."""
    with pytest.raises(ConfigError):
        writethrough.open(source="sqlite:///:memory:", cache=f"memory://?{query}")
    with writethrough.open(source="sqlite:///:memory:",
                           cache="memory://?max_bytes=none&max_entries=none") as store:
        assert store.cache.max_bytes is None and store.cache.max_entries is None  # type: ignore[attr-defined]


def test_the_memory_byte_bound_counts_utf8_bytes() -> None:
    from writethrough.caches.memory import ENTRY_OVERHEAD, MemoryCache
    from writethrough.protocol import Entry

    cache = MemoryCache()
    key = "ключ" * 10  # 40 characters, 80 UTF-8 bytes
    cache.set(key, Entry.value(1, b"x"), ttl=60)
    assert cache.size_bytes == 80 + 1 + ENTRY_OVERHEAD


# -- source URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["busy_timeout=nan", "busy_timeout=-1", "busy_timeout=inf",
                                   "table=a%0A", "table=a;drop", "colour=red"])
def test_bad_sqlite_options(tmp_path: Path, query: str) -> None:
    with pytest.raises(ConfigError):
        writethrough.open(source=f"sqlite:///{tmp_path}/x.db?{query}")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.postgres
@pytest.mark.parametrize("query", ["connect_timeout=0", "statement_timeout_ms=2147483648",
                                   "pool_max=1000000", "pool_min=-1", "sslmode=bogus",
                                   "table=t%0A", "pool_max=x"])
def test_bad_postgres_options(postgres_srv: Any, query: str) -> None:
    url = str(postgres_srv.url)
    with pytest.raises(ConfigError):
        writethrough.open(source=f"{url}{'&' if '?' in url else '?'}{query}")


@pytest.mark.postgres
def test_the_listener_refuses_what_the_store_refuses(postgres_srv: Any) -> None:
    from writethrough.capture import Keyspace, TriggerListener
    from writethrough.capture.pg import PgTarget

    url = str(postgres_srv.url)
    sep = "&" if "?" in url else "?"
    for bad in (f"{url}{sep}connect_timeout=0", "postgres://u:p@[::1/test"):
        with pytest.raises(ConfigError):
            PgTarget.parse(bad)
    spaces = {"ns": Keyspace("ns", "t", "id")}
    for kwargs in ({"poll_interval": NAN}, {"poll_interval": INF}, {"batch_size": 0},
                   {"lag_samples": -1}, {"statement_timeout_ms": -5},
                   {"statement_timeout_ms": 2**31}, {"batch_size": 10**9}):
        with pytest.raises(ConfigError):
            TriggerListener(url, "memory://", spaces, **kwargs)


# -- client errors are CacheErrors where the I/O happens -----------------------------------


@pytest.mark.redis
def test_a_cluster_url_on_a_server_that_is_not_a_cluster(redis_srv: Any) -> None:
    """Sync: a typed error at open. Async (connects on first use): the write lands in the
    database and its cache step is PENDING_REPAIR -- never an unmapped RedisClusterException."""
    not_a_cluster = redis_srv.url.replace("redis://", "redis+cluster://").rsplit("/", 1)[0]
    with pytest.raises(CacheError):
        writethrough.open(source="sqlite:///:memory:", cache=not_a_cluster)

    async def run() -> tuple[Any, Any, Any]:
        down = f"redis+cluster://127.0.0.1:{free_port()}"
        results = []
        for url in (not_a_cluster, down):
            async with writethrough.open_async(source="sqlite:///:memory:", cache=url) as store:
                put = await store.put("k", 1)
                results.append((put.cache, await store.get("k")))
        return results[0], results[1], None

    first, second, _ = asyncio.run(run())
    assert first == (CacheOutcome.PENDING_REPAIR, 1)
    assert second == (CacheOutcome.PENDING_REPAIR, 1)


# -- values --------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: float


class Level(enum.Enum):
    TOP = INF


NON_FINITE = [NAN, INF, -INF, {"a": [1, {"b": NAN}]}, [1.0, (2.0, -INF)], Point(NAN), Level.TOP]


@pytest.mark.parametrize("value", NON_FINITE, ids=repr)
def test_nan_and_infinities_are_refused_and_change_nothing(make_any_store: MakeStore,
                                                           value: Any) -> None:
    """orjson wrote them as null: put succeeded and get returned None."""
    store = make_any_store()
    store.put("k", {"ok": 1.5, "none": None})
    store.get("k")
    before = store.source.read("k")
    with pytest.raises(InvalidValueError, match="NaN"):
        store.put("k", value)
    assert store.source.read("k") == before
    assert store.get("k") == {"ok": 1.5, "none": None}


class _StrSerializer:
    name = "str"

    def dumps(self, value: Any) -> Any:
        return str(value)  # not bytes

    def loads(self, data: bytes) -> Any:
        return data.decode()


class _RaisingSerializer:
    name = "raising"

    def dumps(self, value: Any) -> bytes:
        if value == "bad":
            raise RuntimeError("cannot")
        return str(value).encode()

    def loads(self, data: bytes) -> Any:
        return data.decode()


@pytest.mark.parametrize("serializer", [_StrSerializer(), _RaisingSerializer()], ids=repr)
def test_other_serializers_are_held_to_the_contract(tmp_path: Path, serializer: Any) -> None:
    with writethrough.open(source=f"sqlite:///{tmp_path}/x.db", serializer=serializer) as store:
        with pytest.raises(InvalidValueError):
            store.put("k", "bad")
        assert store.source.read("k").payload is None
        assert store.stats.source_writes == 0


def test_bytes_serializer_takes_bytes_like_values_only(tmp_path: Path) -> None:
    with writethrough.open(source=f"sqlite:///{tmp_path}/x.db",
                           serializer=writethrough.BytesSerializer()) as store:
        store.put("k", bytearray(b"ab"))
        assert store.get("k") == b"ab"
        for bad in ("text", 1.5, NAN, None):
            with pytest.raises(InvalidValueError):
                store.put("k", bad)
        assert store.get("k") == b"ab"
        assert math.isfinite(store.stats.source_writes)


# -- the compare tool ----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"keys": 100_000_000}, {"updates": 10**7},
                                    {"updates": 1_000_000, "background_reads_per_update": 4},
                                    {"zipf_s": 1e308}, {"zipf_s": NAN}, {"value_bytes": 1 << 30},
                                    {"reads_after_write": 10**6}, {"keys": True}], ids=repr)
def test_compare_workloads_are_bounded(kwargs: dict[str, Any]) -> None:
    """--keys 100000000 used to build a 10**8-entry weight list (unbounded memory)."""
    from writethrough.tools.compare import Workload

    with pytest.raises(ConfigError):
        Workload(**kwargs)


def test_compare_takes_any_int_seed() -> None:
    """--seed 10**50 made a namespace longer than 64 characters (a ConfigError mid-run)."""
    from writethrough.tools.compare import Workload, compare

    result = compare(workload=Workload(updates=20, keys=5, seed=10**50))
    assert all(len(s.namespace) <= 64 for s in result.strategies)
    assert [s.writes for s in result.strategies] == [20, 20]


def test_compare_replays_the_same_ops_without_keeping_them() -> None:
    from writethrough.tools.compare import Replay, Warmup, Workload, generate, initial_profiles

    workload = Workload(updates=50, keys=10, seed=3)
    assert list(Replay(workload)) == list(Replay(workload)) == generate(workload)
    assert len(Replay(workload)) == len(generate(workload))
    assert list(Warmup(workload)) == initial_profiles(workload)


def test_store_constructors_refuse_settings_that_are_not_settings() -> None:
    from writethrough.caches.memory import MemoryCache
    from writethrough.sources.sqlite import SQLiteSource

    with pytest.raises(ConfigError, match="Settings"):
        Store(SQLiteSource(":memory:", namespace="n"), MemoryCache(), settings="x")  # type: ignore[arg-type]
