"""SQLAlchemy 2.x (issue 10): cached mapped classes kept current after each COMMIT, with
the version the database gave the row; rollback, savepoints, a failed cache; AsyncSession;
bulk update()/delete() and raw SQL through the listener. Real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from sqlalchemy import BigInteger, FetchedValue, Numeric, String
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import writethrough
from servers import PostgresServer, RedisServer
from tables import PgTable, pg_table, roomy
from writethrough import CacheOutcome
from writethrough.events import Keyspace, Listener
from writethrough.integrations.sqlalchemy import RESULTS, Writethrough
from writethrough.tools.faultproxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _model(table_name: str) -> type:
    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = table_name
        id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
        name: Mapped[str | None] = mapped_column(String)
        balance: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
        version: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue(),
                                             server_onupdate=FetchedValue())
        __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": version,
                                                     "version_id_generator": False}

    return User


def _engine_url(url: str, driver: str = "psycopg") -> str:
    return url.replace("postgresql://", f"postgresql+{driver}://", 1)


@pytest.fixture
def table(postgres_srv: PostgresServer) -> Iterator[PgTable]:
    with pg_table(postgres_srv.url) as t:
        yield t


@pytest.fixture
def wt() -> Iterator[Writethrough]:
    w = Writethrough()
    yield w
    w.close()


def test_session_commit_rollback_savepoints(table: PgTable, redis_srv: RedisServer,
                                            wt: Writethrough) -> None:
    User = _model(table.name)
    store = wt.cache(User, source=table.url, cache=roomy(redis_srv.url), namespace=table.namespace,
                     strategy="write-through", ttl=60)
    engine = sa.create_engine(_engine_url(table.url))
    queries = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda *a: queries.append(a[2].split()[0]))
    with Session(engine) as session:
        wt.listen(session)
        session.add(User(id=1, name="Ann", balance=Decimal("500.00")))
        session.commit()
        v1 = table.version(1)
        assert [(r.key, r.version) for r in session.info[RESULTS]] == [("1", v1)]
        assert store.get("1") == {"id": 1, "name": "Ann", "balance": 500.0, "version": v1}
        user = session.get(User, 1)
        assert user is not None
        user.balance = Decimal("400.50")
        queries.clear()
        session.commit()
        assert queries == ["UPDATE"]  # the version came back with RETURNING: no extra query
        v2 = table.version(1)
        assert v2 is not None and v1 is not None and v2 > v1
        assert [(r.version, r.cache) for r in session.info[RESULTS]] == [
            (v2, CacheOutcome.UPDATED)]
        reads = store.stats.source_reads
        assert store.get("1")["balance"] == 400.5 and store.stats.source_reads == reads
        got = wt.get(User, 1)
        assert isinstance(got, User) and got.balance == Decimal("400.5") and got.version == v2

        # rollback: nothing reaches the cache
        user.name = "Nope"
        session.flush()
        session.rollback()
        assert store.get("1")["name"] == "Ann" and table.version(1) == v2

        # a savepoint rolled back drops what was flushed in it; a released one is kept
        user = session.get(User, 1)
        user.name = "Kept"  # version 3
        session.flush()
        with pytest.raises(RuntimeError), session.begin_nested():
            user.name = "Dropped"
            session.flush()
            raise RuntimeError
        session.refresh(user)
        with session.begin_nested():
            user.balance = Decimal("1.00")  # version 4 (the dropped 4 was rolled back)
        session.commit()
        v4 = table.version(1)
        assert [(r.version, r.cache) for r in session.info[RESULTS]] == [
            (v4, CacheOutcome.UPDATED)]
        assert store.get("1") == {"id": 1, "name": "Kept", "balance": 1.0, "version": v4}

        # delete: version = last + 1
        session.delete(session.get(User, 1))
        session.commit()
        assert [(r.version, r.cache) for r in session.info[RESULTS]] == [
            (v4 + 1, CacheOutcome.INVALIDATED)]  # type: ignore[operator]
        assert store.get("1") is None
    engine.dispose()


def test_failed_cache_pending_repair(table: PgTable, redis_srv: RedisServer,
                                     wt: Writethrough) -> None:
    User = _model(table.name)
    port = urlsplit(redis_srv.url).port
    assert port is not None
    engine = sa.create_engine(_engine_url(table.url))
    with FaultProxy("127.0.0.1", port) as proxy:
        store = wt.cache(User, source=table.url, namespace=table.namespace,
                         cache=f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.05")
        wt.listen(Session)
        with Session(engine) as session:
            session.add(User(id=7, name="A"))
            session.commit()
            assert store.get("7")["name"] == "A"
            proxy.blackhole()
            session.get(User, 7).name = "B"  # type: ignore[union-attr]
            session.commit()  # the commit stands; the cache step is PENDING_REPAIR
            assert session.info[RESULTS][0].cache is CacheOutcome.PENDING_REPAIR
            assert store.get("7")["name"] == "B"  # read-your-writes, from the DB
            proxy.pass_through()
            for _ in range(200):
                if not store.repairs.pending:
                    break
                store.repair_once()
            assert not store.repairs.pending
            with writethrough.open(table.url, roomy(redis_srv.url), namespace=table.namespace,
                                   table=Writethrough.table_of(User)) as other:
                assert other.get("7")["name"] == "B"  # a hit, or a miss if the repair left a tombstone
    engine.dispose()


def test_async_session(table: PgTable, redis_srv: RedisServer, wt: Writethrough) -> None:
    User = _model(table.name)

    async def run() -> tuple[Any, Any, Any, Any]:
        engine = create_async_engine(_engine_url(table.url))
        async with writethrough.open_async(table.url, roomy(redis_srv.url), namespace=table.namespace,
                                           table=Writethrough.table_of(User)) as store:
            wt.cache(User, store)
            wt.listen(AsyncSession)
            async with AsyncSession(engine) as session:
                session.add(User(id=3, name="Ann"))
                await session.commit()
                first = [(r.version, r.cache) for r in session.info[RESULTS]]
                user = await session.get(User, 3)
                user.name = "Bo"  # type: ignore[union-attr]
                await session.commit()
                second = [(r.version, r.cache) for r in session.info[RESULTS]]
                async with session.begin():
                    (await session.get(User, 3)).name = "rolled back"  # type: ignore[union-attr]
                    await session.flush()
                    await session.rollback()
                got = await wt.aget(User, 3)
            value = await store.get("3")
        await engine.dispose()
        return first, second, value, got

    first, second, value, got = asyncio.run(run())
    assert first[0][1] is CacheOutcome.UPDATED  # a cold key: the writer's lease fills it
    assert second == [(table.version(3), CacheOutcome.UPDATED)] and second[0][0] > first[0][0]
    assert value == {"id": 3, "name": "Bo", "balance": None, "version": table.version(3)}
    assert got.name == "Bo"


def test_bulk_update_and_raw_sql_go_through_the_listener(table: PgTable, redis_srv: RedisServer,
                                                         wt: Writethrough) -> None:
    """Bulk update()/delete() change rows without instances: the session events cannot
    see them; the listener on the same namespace does, and the store reads its entries."""
    User = _model(table.name)
    store = wt.cache(User, source=table.url, cache=roomy(redis_srv.url), namespace=table.namespace)
    wt.listen(Session)
    engine = sa.create_engine(_engine_url(table.url))
    spaces = {table.namespace: Keyspace(table.namespace, table.name, "id", "write-through")}
    stop = threading.Event()
    with Listener(table.url, roomy(redis_srv.url), spaces, poll_interval=0.05) as listener:
        runner = threading.Thread(target=listener.run, args=(stop,))
        runner.start()
        try:
            with Session(engine) as session:
                session.add_all([User(id=i, name=f"u{i}") for i in (1, 2, 3)])
                session.commit()
                assert all(store.get(str(i))["name"] == f"u{i}" for i in (1, 2, 3))
                session.execute(sa.update(User).where(User.id < 3).values(name="bulk"))
                session.execute(sa.delete(User).where(User.id == 3))
                session.commit()
                assert session.info.get(RESULTS, [])[:0] == []
            with engine.begin() as conn:
                conn.execute(sa.text(f"UPDATE {table.name} SET name = 'raw' WHERE id = 2"))
            for _ in range(200):
                if (store.get("1") or {}).get("name") == "bulk" and store.get("3") is None \
                        and (store.get("2") or {}).get("name") == "raw":
                    break
                stop.wait(0.02)
            assert store.get("1")["name"] == "bulk"
            assert store.get("2")["name"] == "raw"
            assert store.get("3") is None
        finally:
            stop.set()
            runner.join()
    engine.dispose()
