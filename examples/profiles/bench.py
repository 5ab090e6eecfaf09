"""The profile service under real HTTP load, three ways, in one run.

    python examples/profiles/bench.py --db postgresql://postgres@127.0.0.1:5432/postgres

For each mode (no cache, invalidate, write-through) it starts the service (``serve.py``,
one uvicorn worker) on a free port, and runs locust headless with ``--users`` concurrent
users doing "update my profile, then read it" for ``--duration`` seconds. Halfway through
it pauses the Redis *it started itself* (SIGSTOP, ``--pause`` seconds, SIGCONT). Reports
requests/s and p50/p99 per endpoint (locust), DB queries per update+read pair (the
service's own count, and PostgreSQL's index + sequential scans of the table from
``pg_stat_user_tables``), and stale reads seen by the checking users. Needs
``redis-server`` on PATH and ``pip install 'writethrough[examples]'``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

HERE = Path(__file__).resolve().parent
MODES = ("none", "invalidate", "write-through")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout} s")


def table_scans(db: str, table: str) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) "
                           "FROM pg_stat_user_tables WHERE relname = %s", (table,)).fetchone()
    return int(row[0]) if row else 0


def run_mode(mode: str, args: argparse.Namespace, redis_url: str, redis_pid: int,
             table: str, workdir: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = subprocess.Popen(
        [sys.executable, str(HERE / "serve.py"), "--db", args.db, "--redis", redis_url,
         "--mode", mode, "--table", table, "--seed", "0", "--port", str(port)],
        stdin=subprocess.DEVNULL)
    try:
        wait_http(f"{base}/stats")
        scans0, stats0 = table_scans(args.db, table), httpx.get(f"{base}/stats").json()
        check_file = workdir / f"check-{mode}.json"
        pause_at = time.time() + 3.0 + args.duration / 2  # locust takes ~3 s to start
        env = {**os.environ, "PROFILES_KEYS": str(args.keys),
               "PROFILES_CHECK_FILE": str(check_file),
               "PROFILES_PAUSE_AT": str(pause_at), "PROFILES_PAUSE_FOR": str(args.pause)}
        prefix = workdir / mode
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
             "-u", str(args.users), "-r", str(args.users), "-t", f"{args.duration}s",
             "--host", base, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"],
            env=env, stdin=subprocess.DEVNULL, stdout=(workdir / f"locust-{mode}.log").open("w"),
            stderr=subprocess.STDOUT)
        paused = False
        try:
            while locust.poll() is None:
                now = time.time()
                if not paused and now >= pause_at:
                    os.kill(redis_pid, signal.SIGSTOP)  # our own redis-server only
                    paused = True
                    time.sleep(args.pause)
                    os.kill(redis_pid, signal.SIGCONT)
                time.sleep(0.05)
        finally:
            if paused:
                os.kill(redis_pid, signal.SIGCONT)
            locust.wait(timeout=args.duration + 60)
        time.sleep(1.5)  # PostgreSQL flushes table statistics at most once a second
        stats1 = httpx.get(f"{base}/stats").json()
        scans1 = table_scans(args.db, table)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    endpoints = {}
    with open(f"{prefix}_stats.csv") as f:
        for row in csv.DictReader(f):
            if row["Name"] in ("PUT /users/[id]", "GET /users/[id]"):
                endpoints[row["Name"].split()[0]] = {
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": float(row["Requests/s"]),
                    "p50_ms": float(row["50%"]), "p99_ms": float(row["99%"])}
    checks = json.loads(check_file.read_text()) if check_file.exists() else {}
    pairs = max(1, checks.get("checked", 0))
    return {
        "mode": mode, "endpoints": endpoints, "checks": checks,
        "queries_per_pair": (stats1["db_queries"] - stats0["db_queries"]) / pairs,
        "table_scans_per_pair": (scans1 - scans0) / pairs,
        "redis_paused_s": args.pause if paused else 0.0,
        "store": stats1.get("store", {}),
    }


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | PUT req/s | PUT p50 / p99 ms | GET req/s | GET p50 / p99 ms | DB queries per "
        "update+read (service / pg_stat) | checked reads | stale reads (during Redis pause) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        put, get = r["endpoints"].get("PUT", {}), r["endpoints"].get("GET", {})
        c = r["checks"]
        lines.append(
            f"| {r['mode']} | {put.get('rps', 0):.0f} | {put.get('p50_ms', 0):.0f} / "
            f"{put.get('p99_ms', 0):.0f} | {get.get('rps', 0):.0f} | {get.get('p50_ms', 0):.0f}"
            f" / {get.get('p99_ms', 0):.0f} | {r['queries_per_pair']:.2f} / "
            f"{r['table_scans_per_pair']:.2f} | {c.get('checked', 0):,} | "
            f"{c.get('stale', 0)} ({c.get('stale_in_pause', 0)} of "
            f"{c.get('checked_in_pause', 0):,}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default=os.environ.get(
        "PROFILES_DB", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--users", type=int, default=20, help="concurrent locust users")
    parser.add_argument("--duration", type=int, default=20, help="seconds per mode")
    parser.add_argument("--keys", type=int, default=1000, help="profiles (one per user)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds Redis is paused")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from serve import prepare

    table = f"profiles_bench_{uuid.uuid4().hex[:8]}"
    prepare(args.db, table, args.keys)
    workdir = Path(tempfile.mkdtemp(prefix="wt-profiles-"))
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                             stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    results = []
    try:
        time.sleep(0.5)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        for mode in args.modes.split(","):
            results.append(run_mode(mode, args, redis_url, redis.pid, table, workdir))
            print(f"{mode}: done", file=sys.stderr)
    finally:
        redis.send_signal(signal.SIGCONT)
        redis.terminate()
        redis.wait(timeout=10)
        with psycopg.connect(args.db, autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
            if conn.execute("SELECT to_regclass('writethrough_namespaces')").fetchone() != (None,):
                conn.execute("DELETE FROM writethrough_namespaces WHERE namespace = %s",
                             (f"profiles-{table}",))
    print(f"{args.users} locust users, {args.duration} s per mode, Redis paused "
          f"{args.pause} s mid-run, one uvicorn worker")
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
