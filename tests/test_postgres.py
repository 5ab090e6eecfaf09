"""PostgreSQL specifics, against a real server (no mocks).

The behaviour suite already runs on PostgreSQL; this file adds what only a real
server shows: versions follow commit order under many connections and under a held
row lock, timeouts and outages map to SourceError, and the table is created, adopted
or refused.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import writethrough
from conftest import unique_namespace
from servers import PostgresServer, ServerUnavailable, free_port, postgres_server, unavailable
from writethrough import (
    ConfigError,
    InvalidKeyError,
    SourceConflict,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from writethrough.sources import BACKENDS, Row, open_source
from writethrough.sources.postgres import DEFAULT_TABLE, PostgresSource, async_from_url, map_error
from writethrough.urls import parse_url

pytestmark = pytest.mark.postgres


def with_options(url: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def open_pg(url: str, namespace: str | None = None, **options: object) -> PostgresSource:
    source = open_source(with_options(url, **options) if options else url,
                         namespace=namespace or unique_namespace("pg"))
    assert isinstance(source, PostgresSource)
    return source


@pytest.fixture
def pg_url(postgres_srv: PostgresServer) -> str:
    return str(postgres_srv.url)


@pytest.fixture
def source(pg_url: str) -> Iterator[PostgresSource]:
    src = open_pg(pg_url)
    yield src
    src.close()


@pytest.fixture
def raw(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection beside the source, in explicit transactions."""
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        yield conn


def wait_until(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


# -- versions ------------------------------------------------------------------------


def test_sixteen_connections_writing_one_key_get_versions_1_to_800(pg_url: str) -> None:
    threads_n, writes_n = 16, 50
    src = open_pg(pg_url, pool_min=threads_n, pool_max=threads_n)  # one connection each
    barrier = threading.Barrier(threads_n)
    got: list[list[tuple[int, bytes]]] = [[] for _ in range(threads_n)]

    def writer(i: int) -> None:
        barrier.wait()
        for j in range(writes_n):
            payload = f"{i}:{j}".encode()
            got[i].append((src.write("hot", payload), payload))

    try:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        versions = sorted(v for mine in got for v, _ in mine)
        assert versions == list(range(1, threads_n * writes_n + 1)), "no gap, no duplicate"
        for mine in got:  # each writer's own writes commit in order
            assert [v for v, _ in mine] == sorted(v for v, _ in mine)
        by_version = {v: p for mine in got for v, p in mine}
        assert src.read("hot") == Row(threads_n * writes_n, by_version[threads_n * writes_n])
    finally:
        src.close()


def test_a_writer_blocked_by_a_held_row_gets_the_next_version_after_commit(
    source: PostgresSource, raw: psycopg.Connection[Any]
) -> None:
    assert source.write("k", b"v1") == 1
    row = raw.execute(
        f"UPDATE {DEFAULT_TABLE} SET value = 'A', version = version + 1 "
        "WHERE namespace = %s AND key = 'k' RETURNING version", (source.namespace,)
    ).fetchone()
    assert row is not None
    version_a = row[0]  # A holds the row lock: its transaction is still open
    result: list[int] = []
    b = threading.Thread(target=lambda: result.append(source.write("k", b"B")), daemon=True)
    b.start()
    with psycopg.connect(raw.info.dsn, autocommit=True) as observer:

        def b_waits_on_a_lock() -> bool:
            found = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND application_name = 'writethrough'"
            ).fetchone()
            return found is not None and found[0] > 0

        assert wait_until(b_waits_on_a_lock), "B should wait for A's row lock"
    assert b.is_alive() and result == []
    raw.commit()
    b.join(5)
    assert result == [version_a + 1], "B's version comes after A's commit"
    assert source.read("k") == Row(version_a + 1, b"B")


def test_delete_keeps_a_version_and_a_reinsert_never_goes_back(source: PostgresSource) -> None:
    assert source.read("k") == Row(0, None)
    assert source.delete("k") == 1, "deleting an unknown key also gets a version"
    assert source.read("k") == Row(1, None)
    assert source.write("k", b"a") == 2
    assert source.delete("k") == 3
    assert source.read("k") == Row(3, None)
    assert source.write("k", b"b") == 4
    assert source.read("k") == Row(4, b"b")


def test_namespaces_are_separate_and_truncate_only_clears_its_own(pg_url: str) -> None:
    a, b = open_pg(pg_url), open_pg(pg_url)
    try:
        a.write("k", b"a")
        a.write("k", b"a2")
        b.write("k", b"b")
        assert a.truncate_namespace() == 1
        assert a.read("k") == Row(0, None)
        assert b.read("k") == Row(1, b"b")
    finally:
        a.close()
        b.close()


def test_bytes_round_trip_exactly(source: PostgresSource) -> None:
    payload = bytes(range(256)) * 40
    source.write("bin", payload)
    assert source.read("bin").payload == payload


def test_a_key_with_nul_is_refused_before_anything_is_written(source: PostgresSource) -> None:
    with pytest.raises(InvalidKeyError, match="NUL"):
        source.write("a\x00b", b"x")
    assert source.truncate_namespace() == 0


# -- errors --------------------------------------------------------------------------


def test_a_statement_held_past_statement_timeout_is_a_source_timeout(
    pg_url: str, raw: psycopg.Connection[Any]
) -> None:
    src = open_pg(pg_url, statement_timeout_ms=200)
    try:
        src.write("k", b"1")
        raw.execute(f"SELECT 1 FROM {DEFAULT_TABLE} WHERE namespace = %s FOR UPDATE",
                    (src.namespace,))
        started = time.monotonic()
        with pytest.raises(SourceTimeout, match="canceling statement"):
            src.write("k", b"2")
        assert time.monotonic() - started < 2
        raw.rollback()
        assert src.write("k", b"3") == 2, "the timed-out write changed nothing"
    finally:
        src.close()


@pytest.mark.parametrize(
    ("sqlstate", "error"),
    [
        ("40001", SourceConflict),  # serialization_failure
        ("40P01", SourceConflict),  # deadlock_detected
        ("23505", SourceConflict),  # unique_violation
        ("57014", SourceTimeout),  # query_canceled (statement_timeout)
        ("55P03", SourceTimeout),  # lock_not_available (lock_timeout)
        ("57P01", SourceUnavailable),  # admin_shutdown
        ("53300", SourceUnavailable),  # too_many_connections
        ("22012", SourceError),  # division_by_zero: a plain SourceError
    ],
)
def test_server_errors_map_to_the_source_error_family(
    raw: psycopg.Connection[Any], sqlstate: str, error: type[SourceError]
) -> None:
    with pytest.raises(psycopg.Error) as caught:
        raw.execute(f"DO $$ BEGIN RAISE EXCEPTION 'boom' USING ERRCODE = '{sqlstate}'; END $$")
    raw.rollback()
    assert caught.value.sqlstate == sqlstate
    mapped = map_error(caught.value, "db", "hunter2")
    assert type(mapped) is error
    assert "boom" in str(mapped)


def test_a_refused_connection_is_unavailable_at_once_without_the_password() -> None:
    url = f"postgresql://app:s3cret-pw@127.0.0.1:{free_port()}/db?connect_timeout=3"
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as caught:
        writethrough.open(source=url, namespace=unique_namespace())
    assert time.monotonic() - started < 1.5
    assert "s3cret-pw" not in str(caught.value)
    assert "app@127.0.0.1" in str(caught.value)
    assert not isinstance(caught.value, psycopg.Error)


def test_a_server_that_never_answers_is_unavailable_within_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) but never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = f"postgresql://app:pw@127.0.0.1:{port}/db?connect_timeout=2"
        started = time.monotonic()
        with pytest.raises(SourceUnavailable):
            writethrough.open(source=url, namespace=unique_namespace())
        elapsed = time.monotonic() - started
    assert 1.5 < elapsed < 4, f"took {elapsed:.2f}s with connect_timeout=2"


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("pool_max=ten", "pool_max"),
        ("colour=red", "unknown PostgreSQL option"),
        ("table=bad-name", "plain SQL identifier"),
        ("table=x%3Bdrop", "plain SQL identifier"),
        ("pool_min=5&pool_max=2", "pool_max"),
        ("connect_timeout=0", "connect_timeout"),
        ("statement_timeout_ms=-1", "statement_timeout_ms"),
    ],
)
def test_bad_options_are_config_errors_before_connecting(query: str, match: str) -> None:
    # The port refuses connections: a ConfigError proves nothing was attempted.
    url = f"postgresql://app:pw@127.0.0.1:{free_port()}/db?{query}"
    with pytest.raises(ConfigError, match=match):
        writethrough.open(source=url, namespace=unique_namespace())


def test_unknown_source_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="pool_size"):
        writethrough.open(source=f"postgresql://127.0.0.1:{free_port()}/db",
                          source_options={"pool_size": 3})


def test_a_closed_source_is_unavailable(pg_url: str) -> None:
    src = open_pg(pg_url)
    src.close()
    with pytest.raises(SourceUnavailable, match="closed"):
        src.read("k")


def test_after_its_connections_are_killed_one_call_fails_then_the_pool_recovers(
    pg_url: str, raw: psycopg.Connection[Any]
) -> None:
    """A restart or failover kills every pooled connection: one call pays, not one each."""
    app = f"wt_kill_{uuid.uuid4().hex[:8]}"
    src = open_pg(pg_url, pool_min=4, pool_max=4, application_name=app)
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    raw.autocommit = True  # pg_stat_activity is a snapshot per transaction
    try:
        src.write("k", b"1")
        assert raw.execute(count, (app,)).fetchone() == (4,)
        raw.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s", (app,))
        assert wait_until(lambda: raw.execute(count, (app,)).fetchone() == (0,))
        with pytest.raises(SourceUnavailable):
            src.write("k", b"2")
        time.sleep(0.2)  # the idle connections are checked in the background
        assert [src.write("k", b"3") for _ in range(8)] == list(range(2, 10))
        assert src.read("k") == Row(9, b"3")
    finally:
        src.close()


def test_async_source_connects_at_open_and_keeps_the_versions(pg_url: str) -> None:
    parsed = parse_url(pg_url, kind="source", schemes=BACKENDS)
    src = async_from_url(parsed, namespace=unique_namespace("pg"), pool_max=8)

    async def main() -> None:
        with pytest.raises(SourceUnavailable, match="not open"):
            await src.read("k")
        await src.open()
        await src.open()  # idempotent
        assert await src.write("k", b"a") == 1
        versions = await asyncio.gather(*(src.write("k", b"b") for _ in range(40)))
        assert sorted(versions) == list(range(2, 42))
        assert await src.delete("k") == 42
        assert await src.read("k") == Row(42, None)
        assert await src.truncate_namespace() == 1
        await src.close()

    asyncio.run(main())


def test_async_open_checks_settings_at_once_and_the_server_at_open() -> None:
    url = f"postgresql://app:s3cret-pw@127.0.0.1:{free_port()}/db"
    with pytest.raises(ConfigError, match="pool_max"):
        writethrough.open_async(source=f"{url}?pool_max=0", namespace=unique_namespace())

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(SourceUnavailable) as caught:
            await writethrough.open_async(source=url, namespace=unique_namespace())
        assert time.monotonic() - started < 1.5
        assert "s3cret-pw" not in str(caught.value)

    asyncio.run(main())


# -- the outbox ----------------------------------------------------------------------


def test_a_logged_write_and_its_outbox_row_commit_together_or_not_at_all(
    pg_url: str, raw: psycopg.Connection[Any]
) -> None:
    src = open_pg(pg_url, statement_timeout_ms=200)
    try:
        first = src.write_logged("k", b"1")
        assert first.version == 1
        assert src.delete_logged("k").version == 2
        raw.execute(f"SELECT 1 FROM {DEFAULT_TABLE} WHERE namespace = %s FOR UPDATE",
                    (src.namespace,))
        with pytest.raises(SourceTimeout):
            src.write_logged("k", b"2")  # the row is held: neither the row nor the log
        raw.rollback()
        rows = src.outbox_claim(0.0, 100, 0.0)
        assert [(r.key, r.version, r.action) for r in rows] == [
            ("k", 1, "write"), ("k", 2, "delete")]
        assert rows[0].id == first.outbox_id < rows[1].id
        assert src.read("k") == Row(2, None)
        assert src.outbox_claim(60.0, 100, 0.0) == [], "younger than the grace (server clock)"
        src.outbox_done([r.id for r in rows])
        assert src.outbox_claim(0.0, 100, 0.0) == []
        src.write_logged("k", b"3")
        assert src.truncate_namespace() == 1
        assert src.outbox_claim(0.0, 100, 0.0) == [], "truncate clears the outbox rows too"
    finally:
        src.close()


def test_two_repairers_claiming_at_once_share_the_rows(pg_url: str) -> None:
    namespace = unique_namespace("pg")
    a, b = open_pg(pg_url, namespace), open_pg(pg_url, namespace)
    try:
        ids = {a.write_logged(f"k{i}", b"v").outbox_id for i in range(20)}
        barrier = threading.Barrier(2)
        claimed: dict[str, list[int]] = {}

        def claim(name: str, src: PostgresSource) -> None:
            barrier.wait()
            claimed[name] = [r.id for r in src.outbox_claim(0.0, 15, 60.0)]

        threads = [threading.Thread(target=claim, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not set(claimed["a"]) & set(claimed["b"]), "no row handed out twice"
        assert set(claimed["a"]) | set(claimed["b"]) == ids
        assert a.outbox_claim(0.0, 100, 60.0) == [], "claimed rows wait for claim_for"
    finally:
        a.close()
        b.close()


# -- the table -----------------------------------------------------------------------


@pytest.fixture
def table(raw: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"wt_t_{uuid.uuid4().hex[:12]}"
    yield name
    raw.rollback()
    raw.execute(f"DROP TABLE IF EXISTS {name}")
    raw.commit()


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ("id int", "namespace is not text"),
        ("namespace text, key text, value text, version bigint, PRIMARY KEY (namespace, key)",
         "value is not bytea"),
        ("namespace text, key text, value bytea, version int, PRIMARY KEY (namespace, key)",
         "version is not bigint"),
        ("namespace text, key text, value bytea, version bigint", "no primary key"),
        ("namespace text, key text, value bytea, version bigint, PRIMARY KEY (key)",
         "no primary key"),
        ("namespace text, key text, value bytea, version bigint, owner text NOT NULL, "
         "PRIMARY KEY (namespace, key)", "owner is NOT NULL"),
    ],
)
def test_a_table_of_the_wrong_shape_is_refused(
    pg_url: str, raw: psycopg.Connection[Any], table: str, columns: str, match: str
) -> None:
    raw.execute(f"CREATE TABLE {table} ({columns})")
    raw.commit()
    with pytest.raises(ConfigError, match=match):
        open_pg(pg_url, table=table)


def test_an_existing_table_of_the_right_shape_is_adopted(
    pg_url: str, raw: psycopg.Connection[Any], table: str
) -> None:
    raw.execute(
        f"CREATE TABLE {table} (key varchar(200), namespace text, version bigint NOT NULL, "
        "value bytea, note text DEFAULT 'x' NOT NULL, UNIQUE (key, namespace))"
    )
    namespace = unique_namespace("adopt")  # claimed for this table (registry)
    raw.execute(f"INSERT INTO {table} VALUES ('k', %s, 7, 'old')", (namespace,))
    raw.commit()
    src = open_pg(pg_url, namespace=namespace, table=table)
    try:
        assert src.read("k") == Row(7, b"old")
        assert src.write("k", b"new") == 8
    finally:
        src.close()


def test_many_processes_opening_at_once_create_the_table_once(pg_url: str, table: str) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    opened: list[PostgresSource] = []

    def opener() -> None:
        barrier.wait()
        try:
            opened.append(open_pg(pg_url, table=table))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for src in opened:
        src.close()
    assert errors == [] and len(opened) == 8


# -- the database goes down ----------------------------------------------------------


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[PostgresServer]:
    """A throwaway server this test may stop, even when a shared one is configured."""
    monkeypatch.delenv("WRITETHROUGH_POSTGRES_URL", raising=False)
    try:
        manager = postgres_server()
        server = manager.__enter__()
    except ServerUnavailable as exc:
        unavailable(f"PostgreSQL (throwaway, to stop): {exc}")
    try:
        yield server
    finally:
        manager.__exit__(None, None, None)


def test_the_database_going_down_mid_run(own_server: PostgresServer) -> None:
    """Writes fail as SourceUnavailable and leave the cache as it was; cached reads still work."""
    url = with_options(own_server.url, connect_timeout=2)
    store = writethrough.open(source=url, cache="memory://", namespace="down")
    try:
        store.put("warm", {"v": 1})
        assert store.get("warm") == {"v": 1}  # now cached
        entry = store.cache.get("wt:down:warm")
        assert entry is not None and entry.version == 1
        own_server.stop()
        for key in ("warm", "new", "new"):  # the dead pooled connection, then no connection
            started = time.monotonic()
            with pytest.raises(SourceUnavailable):
                store.put(key, {"v": 2})
            assert time.monotonic() - started < 2 + 1.5
        assert store.cache.get("wt:down:warm") == entry, "a failed write never touches the cache"
        assert store.cache.get("wt:down:new") is None
        before = store.stats.snapshot()
        assert store.get("warm") == {"v": 1}, "a read the cache answers needs no database"
        assert store.stats.hits == before["hits"] + 1
        with pytest.raises(SourceUnavailable):
            store.get("never-cached")
        assert store.stats.source_writes == 1
    finally:
        started = time.monotonic()
        store.close()
        assert time.monotonic() - started < 5
