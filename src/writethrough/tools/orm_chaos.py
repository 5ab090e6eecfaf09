"""Chaos with your ORM: SQLAlchemy writes (after-commit write-through), raw SQL writes
(through change capture, the listener) and store reads mixed on one namespace, with the
cache's network flapping; every operation recorded and checked by the consistency checker.

    python -m writethrough.tools.orm_chaos --source postgresql://... --cache redis://...

ORM writes are acknowledged by their cache step (``updated`` / ``invalidated`` /
``pending_repair``); raw SQL writes are recorded as ``pending_repair`` (they reach the
cache when the listener applies them: later reads may be older, counted, not a
violation). The target: 0 stale reads after an acknowledged write, 0 final divergence.
Needs PostgreSQL, SQLAlchemy (``writethrough[sqlalchemy]``) and a cache URL.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .checker import Op, Recorder, Report, check

__all__ = ["OrmChaosResult", "main", "run"]


@dataclass
class OrmChaosResult:
    report: Report
    orm_writes: int = 0
    raw_writes: int = 0
    orm_conflicts: int = 0  # optimistic version check lost to a concurrent writer: retried
    outcomes: dict[str, int] = field(default_factory=dict)
    listener_applied: int = 0
    flaps: int = 0


def _model(table: str) -> type:
    from sqlalchemy import BigInteger, FetchedValue, Integer
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    attrs: dict[str, Any] = {
        "__tablename__": table,
        "__annotations__": {"id": Mapped[int], "n": Mapped[int], "version": Mapped[int]},
        "id": mapped_column(BigInteger, primary_key=True),
        "n": mapped_column(Integer),
        "version": mapped_column(BigInteger, server_default=FetchedValue(),
                                 server_onupdate=FetchedValue()),
    }
    cls = type("ChaosRow", (Base,), {**attrs, "__mapper_args__": {
        "version_id_col": attrs["version"], "version_id_generator": False}})
    return cls


def run(source_url: str, cache_url: str, *, ops: int = 2000, keys: int = 8,
        orm_writers: int = 2, raw_writers: int = 2, readers: int = 4, seed: int = 0,
        flap: bool = True) -> OrmChaosResult:
    """One run on a fresh table; returns the checker's report and the counts."""
    import psycopg
    import sqlalchemy as sa
    from sqlalchemy.orm import Session
    from sqlalchemy.orm.exc import StaleDataError

    from writethrough.events import Keyspace, Listener, install_triggers
    from writethrough.integrations.sqlalchemy import RESULTS, Writethrough

    from .faultproxy import FaultProxy

    table = f"wt_orm_chaos_{uuid.uuid4().hex[:8]}"
    namespace = f"ormchaos-{table[-8:]}"
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, n integer NOT NULL)')
    install_triggers(source_url, table, "id", namespace)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(f'INSERT INTO "{table}" (id, n) SELECT g, 0 FROM generate_series(1, %s) g',
                     (keys,))
    model = _model(table)
    result = OrmChaosResult(Report())
    proxy = None
    parts = urlsplit(cache_url)
    store_cache = cache_url
    if flap and parts.scheme == "redis" and parts.port:
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port).start()
        store_cache = cache_url.replace(f":{parts.port}", f":{proxy.port}", 1)
        store_cache += ("&" if "?" in store_cache else "?") + "socket_timeout=0.05"
    engine = sa.create_engine(source_url.replace("postgresql://", "postgresql+psycopg://", 1),
                              pool_size=orm_writers + 2)
    wt = Writethrough()
    rec = Recorder()
    lock = threading.Lock()
    budget = [ops]
    stop = threading.Event()
    keynames = [str(i) for i in range(1, keys + 1)]
    spaces = {namespace: Keyspace(namespace, table, "id", "write-through")}
    try:
        store = wt.cache(model, source=source_url, cache=store_cache, namespace=namespace,
                         ttl=30, repair_interval=0.02)
        wt.listen(Session)
        listener = Listener(source_url, cache_url, spaces, poll_interval=0.05)

        def take() -> bool:
            with lock:
                budget[0] -= 1
                return budget[0] >= 0

        def orm_writer(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            with Session(engine) as session:
                while take():
                    key = rng.choice(keynames)
                    start = rec.clock()
                    try:
                        row: Any = session.get(model, int(key), populate_existing=True)
                        row.n += 1
                        session.commit()
                    except StaleDataError:
                        session.rollback()
                        with lock:
                            result.orm_conflicts += 1
                        continue
                    done = session.info[RESULTS][0]
                    rec.record(Op(f"orm{i}", key, "write", start, rec.clock(), done.version,
                                  done.cache.value))
                    with lock:
                        result.orm_writes += 1
                        result.outcomes[done.cache.value] = result.outcomes.get(
                            done.cache.value, 0) + 1

        def raw_writer(i: int) -> None:
            rng = random.Random(seed * 1000 + 100 + i)
            with psycopg.connect(source_url, autocommit=True) as conn:
                while take():
                    key = rng.choice(keynames)
                    start = rec.clock()
                    found = conn.execute(f'UPDATE "{table}" SET n = n + 1 WHERE id = %s '
                                         "RETURNING version", (int(key),)).fetchone()
                    assert found is not None
                    rec.record(Op(f"raw{i}", key, "write", start, rec.clock(), int(found[0]),
                                  "pending_repair"))
                    with lock:
                        result.raw_writes += 1

        def reader(i: int) -> None:
            rng = random.Random(seed * 1000 + 200 + i)
            while not stop.is_set():
                key = rng.choice(keynames)

                def read(key: str = key) -> Any:
                    return store.get_versioned(key)

                rec.read(f"r{i}", key, read)

        def flapper() -> None:
            rng = random.Random(seed)
            while proxy is not None and not stop.wait(rng.uniform(0.1, 0.3)):
                proxy.blackhole()
                stop.wait(rng.uniform(0.02, 0.12))
                proxy.pass_through()
                result.flaps += 1

        listening = threading.Thread(target=listener.run, args=(stop,), daemon=True)
        listening.start()
        background = [threading.Thread(target=reader, args=(i,), daemon=True)
                      for i in range(readers)] + [threading.Thread(target=flapper, daemon=True)]
        writers = ([threading.Thread(target=orm_writer, args=(i,)) for i in range(orm_writers)]
                   + [threading.Thread(target=raw_writer, args=(i,)) for i in range(raw_writers)])
        for t in background + writers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        for t in background:
            t.join(10)
        listening.join(10)
        if proxy is not None:
            proxy.pass_through()
        # Quiescence: a fresh listener (the running one was stopped) drains what is left,
        # the store applies its repairs.
        result.listener_applied = listener.stats.applied
        listener.close()
        with Listener(source_url, cache_url, spaces) as last:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                applied = last.drain_once()
                store.repair_once()
                if not applied and not store.repairs.pending:
                    break
            result.listener_applied += last.stats.applied
        final_db: dict[str, int] = {}
        with psycopg.connect(source_url, autocommit=True) as conn:
            for k, v in conn.execute(f'SELECT id::text, version FROM "{table}"'):
                final_db[str(k)] = int(v)
        final_cache: dict[str, int | None] = {}
        for key in keynames:
            entry = store.cache.get(f"wt:{namespace}:{key}")
            final_cache[key] = entry.version if entry is not None and entry.kind.value == "V" \
                else None
        result.report = check(rec.ops, final_cache=final_cache, final_db=final_db)
        return result
    finally:
        stop.set()
        wt.close()
        engine.dispose()
        if proxy is not None:
            proxy.stop()
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
            conn.execute("DELETE FROM writethrough_namespaces WHERE namespace = %s",
                         (namespace,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m writethrough.tools.orm_chaos",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="postgresql://...")
    parser.add_argument("--cache", required=True, help="redis://... (flapped through a proxy)")
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    r = run(args.source, args.cache, ops=args.ops, keys=args.keys, seed=args.seed)
    rep = r.report
    print(f"orm-mix: {r.orm_writes} ORM writes ({r.orm_conflicts} version conflicts retried; "
          f"{r.outcomes}), {r.raw_writes} raw SQL writes (listener applied "
          f"{r.listener_applied} events), {r.flaps} cache flaps")
    print(f"{rep.checked_reads:,} checked reads: {rep.stale_reads_after_ack} stale after ack, "
          f"{rep.monotonic_violations} non-monotonic, {rep.final_divergence} final divergence, "
          f"{rep.reads_during_pending_repair} reads older than a pending write (allowed); "
          f"{rep.nines:.2f} nines")
    print("PASS" if rep.ok else "FAIL")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
