"""The profile service of examples/profiles (issue 10), started on a free port and driven
over real HTTP: PUT then GET, every mode; write-through costs one DB query per pair."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from servers import PostgresServer, RedisServer, free_port
from tables import roomy

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
SERVE = Path(__file__).resolve().parent.parent / "examples" / "profiles" / "serve.py"


@pytest.fixture
def table(postgres_srv: PostgresServer) -> Iterator[str]:
    name = f"profiles_test_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(postgres_srv.url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        if conn.execute("SELECT to_regclass('writethrough_namespaces')").fetchone() != (None,):
            conn.execute("DELETE FROM writethrough_namespaces WHERE namespace = %s",
                         (f"profiles-{name}",))


def _serve(db: str, redis_url: str, mode: str, table: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVE), "--db", db, "--redis", redis_url,
                             "--mode", mode, "--table", table, "--seed", "20",
                             "--port", str(port)], stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/stats", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise AssertionError("the service did not start")


@pytest.mark.parametrize("mode,queries", [("none", 2), ("invalidate", 2), ("write-through", 1)])
def test_update_then_read_over_http(postgres_srv: PostgresServer, redis_srv: RedisServer,
                                    table: str, mode: str, queries: int) -> None:
    # Roomy Redis timeouts: a cache timeout on a loaded CI machine is not what this tests.
    proc, base = _serve(postgres_srv.url, roomy(redis_srv.url), mode, table)
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/users/999").status_code == 404
            assert client.put("/users/999", json={"name": "x"}).status_code == 404
            for i in range(3):  # warm: the first write-through onto a cold key is a tombstone
                client.put("/users/3", json={"name": f"warm{i}"})
                client.get("/users/3")
            before = client.get("/stats").json()["db_queries"]
            for i in range(10):
                put = client.put("/users/3", json={"name": f"n{i}", "bio": "hi"}).json()
                got = client.get("/users/3").json()
                assert got == {k: put[k] for k in ("id", "name", "bio", "version")}
                if mode == "write-through":
                    assert put["cache"] == "updated"
            after = client.get("/stats").json()["db_queries"]
            assert (after - before) / 10 == queries
    finally:
        proc.terminate()
        proc.wait(timeout=30)
