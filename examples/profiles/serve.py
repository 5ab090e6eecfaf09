"""Start the profile service: ``python examples/profiles/serve.py`` (see --help).

Creates the table if missing (``id, name, bio, version``), installs the version triggers
(``writethrough install-triggers``), seeds ``--seed N`` users, then runs uvicorn.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from writethrough.events import install_triggers


def prepare(db: str, table: str, seed: int) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (id bigint PRIMARY KEY, name varchar(100) NOT NULL, "
            "bio text NOT NULL DEFAULT '')").format(sql.Identifier(table)))
    install_triggers(db, table, "id", f"profiles-{table}")
    if seed:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL(
                "INSERT INTO {} (id, name) SELECT g, 'user ' || g FROM generate_series(1, %s) g "
                "ON CONFLICT (id) DO NOTHING").format(sql.Identifier(table)), (seed,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the profile service (FastAPI + SQLAlchemy)")
    parser.add_argument("--db", default=os.environ.get(
        "PROFILES_DB", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis", default=os.environ.get("PROFILES_REDIS",
                                                          "redis://127.0.0.1:6379/0"))
    parser.add_argument("--mode", choices=("none", "invalidate", "write-through"),
                        default="write-through")
    parser.add_argument("--table", default="users")
    parser.add_argument("--seed", type=int, default=1000, help="users to create (ids 1..N)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    prepare(args.db, args.table, args.seed)
    os.environ.update(PROFILES_DB=args.db, PROFILES_REDIS=args.redis, PROFILES_MODE=args.mode,
                      PROFILES_TABLE=args.table)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import uvicorn

    uvicorn.run("app:app", host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
