"""Settings of a benchmark run, the servers it uses, and where it ran (versions, machine)."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``: called as the run goes."""

PEERS = ("cashews", "aiocache", "dogpile.cache")
VERSIONED = ("writethrough", "redis", "hiredis", "psycopg", "orjson", "cachetools", *PEERS)


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure. ``quick`` is sized to finish in under 60 s on 2 busy cores."""

    quick: bool = False
    redis_url: str | None = None  # None: a throwaway redis-server on a free port
    postgres_url: str | None = None  # None: the PostgreSQL rows are n/a
    db_latency_ms: float = 1.0  # the put and compare rows are also run with this delay
    rounds: int | None = None  # repetitions per row (None: 5 quick, 9 full)
    only: tuple[str, ...] = ()  # row keys to run (empty: all)

    def __post_init__(self) -> None:
        ms = self.db_latency_ms
        if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms < 60_000:
            raise ConfigError(f"db latency must be milliseconds in [0, 60000), got {ms!r}")
        if self.rounds is not None and (not isinstance(self.rounds, int) or self.rounds < 1):
            raise ConfigError(f"rounds must be an int >= 1, got {self.rounds!r}")

    @property
    def reps(self) -> int:
        return self.rounds or (5 if self.quick else 9)

    def n(self, quick: int, full: int) -> int:
        """Ops per repetition: ``quick`` or ``full``."""
        return quick if self.quick else full


@dataclass
class Context:
    """What every row function gets: the config, live server URLs, a progress ticker."""

    config: BenchConfig
    redis_url: str | None
    postgres_url: str | None
    redis_note: str = ""
    postgres_note: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    progress: Progress | None = None
    step: str = ""
    done: int = 0
    total: int = 1
    tmpdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="wt-bench-")))

    def start(self, step: str, total: int) -> None:
        self.step, self.done, self.total = step, 0, max(1, total)
        self.tick(0)

    def tick(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        if self.progress is not None:
            self.progress(self.step, self.done, self.total)

    def namespace(self, what: str) -> str:
        return f"bench-{what}-{self.run_id}"

    def sqlite_url(self, name: str) -> str:
        return f"sqlite:///{self.tmpdir / (name + '.db')}"


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """A redis-server of our own on a free 127.0.0.1 port, stopped by its pid on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError("no redis-server on PATH: pass --redis URL")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="wt-bench-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--daemonize", "no", "--dir", workdir]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the bench process dies (even killed), so
    no throwaway redis-server outlives its run."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def server_versions(redis_url: str | None, postgres_url: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    if redis_url:
        import redis

        with contextlib.suppress(Exception), redis.Redis.from_url(redis_url) as client:
            found["redis-server"] = str(client.info("server")["redis_version"])
    if postgres_url:
        import psycopg

        with contextlib.suppress(Exception), psycopg.connect(postgres_url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgresql"] = str(row[0]) if row else "?"
    return found


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "python_executable": sys.executable,
    }
