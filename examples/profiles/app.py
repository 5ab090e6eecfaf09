"""A profile service: FastAPI + SQLAlchemy (asyncio) + PostgreSQL + Redis.

    PUT /users/{id}   {"name": ..., "bio": ...}  -> the stored profile (+ cache outcome)
    GET /users/{id}                               -> the profile, or 404
    GET /stats                                    -> queries this process sent to PostgreSQL

Configured by environment variables (``serve.py`` sets them): PROFILES_DB
(postgresql://...), PROFILES_REDIS (redis://...), PROFILES_MODE (``none`` | ``invalidate``
| ``write-through``), PROFILES_TABLE (``users``).

A PUT is one statement, ``UPDATE users SET ... RETURNING *``: the version comes back from
the database (the ``install-triggers`` trigger bumps it in that statement) and
``Writethrough.record`` hands the row to the cache step right after the COMMIT. A GET is
``store.get(id)`` (a hit, or one SELECT by key under the fill lease) -- or, with
``PROFILES_MODE=none``, a plain ``session.get``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import BigInteger, FetchedValue, String, Text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import writethrough
from writethrough.integrations.sqlalchemy import RESULTS, Writethrough

DB = os.environ.get("PROFILES_DB", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("PROFILES_REDIS", "redis://127.0.0.1:6379/0")
MODE = os.environ.get("PROFILES_MODE", "write-through")
TABLE = os.environ.get("PROFILES_TABLE", "users")
if MODE not in ("none", "invalidate", "write-through"):
    raise SystemExit(f"PROFILES_MODE must be none, invalidate or write-through, not {MODE!r}")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    bio: Mapped[str] = mapped_column(Text, default="")
    # kept by PostgreSQL (writethrough install-triggers), fetched by the ORM
    version: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue(),
                                         server_onupdate=FetchedValue())
    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": version,
                                                 "version_id_generator": False}


class ProfileIn(BaseModel):
    name: str
    bio: str = ""


engine = create_async_engine(DB.replace("postgresql://", "postgresql+psycopg://", 1),
                             pool_size=10)
sessions = async_sessionmaker(engine, expire_on_commit=False)
wt = Writethrough()
queries = itertools.count()  # statements this process sent (SQLAlchemy + the store)
sa.event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: next(queries))
state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    if MODE != "none":
        store = await writethrough.open_async(
            DB, REDIS, table=Writethrough.table_of(User), namespace=f"profiles-{TABLE}",
            strategy="write-through" if MODE == "write-through" else "invalidate", ttl=300)
        wt.cache(User, store)
        wt.listen(AsyncSession)
        state["store"] = store
    yield
    if "store" in state:
        wt.close()
        await state.pop("store").close()
    await engine.dispose()


app = FastAPI(title="profiles", lifespan=lifespan)


@app.put("/users/{user_id}")
async def put_user(user_id: int, body: ProfileIn) -> dict[str, Any]:
    async with sessions() as session:
        async with session.begin():
            row = (await session.execute(
                sa.update(User).where(User.id == user_id).values(name=body.name, bio=body.bio)
                .returning(*User.__table__.c))).one_or_none()
            if row is None:
                raise HTTPException(404, "no such user")
            if MODE != "none":
                wt.record(session, User, row)
        results = session.info.get(RESULTS) or []
    return {**row._asdict(), "cache": results[0].cache.value if results else None}


@app.get("/users/{user_id}")
async def get_user(user_id: int) -> dict[str, Any]:
    if MODE == "none":
        async with sessions() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise HTTPException(404, "no such user")
            return {"id": user.id, "name": user.name, "bio": user.bio, "version": user.version}
    found = await state["store"].get(str(user_id))
    if found is None:
        raise HTTPException(404, "no such user")
    return dict(found)


@app.get("/stats")
async def stats() -> dict[str, Any]:
    store = state.get("store")
    source_reads = store.stats.source_reads if store is not None else 0
    sent = int(repr(queries)[6:-1])
    return {"mode": MODE, "sqlalchemy_queries": sent, "store_db_reads": source_reads,
            "db_queries": sent + source_reads,
            "store": store.stats.snapshot() if store is not None else {}}
