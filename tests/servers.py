"""Real Redis / Redis Cluster / PostgreSQL servers for tests.

Each context manager uses the server named by its ``WRITETHROUGH_*_URL`` env var when set, else
starts a throwaway server on a free 127.0.0.1 port and stops it (by its own pid, or ``pg_ctl``)
on exit. Missing binaries raise :class:`ServerUnavailable`; fixtures turn that into
:func:`unavailable` (skip, or fail when ``WRITETHROUGH_REQUIRE_SERVERS=1``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NoReturn
from urllib.parse import urlsplit

import pytest
import redis
from redis.crc import key_slot

STARTUP_TIMEOUT = 20.0
HOST = "127.0.0.1"


class ServerUnavailable(Exception):
    """A server cannot be provided (binary missing, start failed, external server, ...)."""


def require_servers() -> bool:
    """True when CI demands real servers (``WRITETHROUGH_REQUIRE_SERVERS`` is 1/true)."""
    return os.environ.get("WRITETHROUGH_REQUIRE_SERVERS", "").strip().lower() in ("1", "true")


def unavailable(reason: str) -> NoReturn:
    """Fail the test when servers are required, skip it otherwise."""
    if require_servers():
        pytest.fail(reason)
    pytest.skip(reason)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(*, with_bus: bool = False) -> int:
    """A currently free port on 127.0.0.1 (with port+10000 free too when ``with_bus``)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if not with_bus or (port + 10000 < 65536 and _bindable(port + 10000)):
            return port
    raise ServerUnavailable("no free port with a free cluster bus port (+10000) found")


def keyslot(key: str | bytes) -> int:
    """The Redis Cluster hash slot of ``key``."""
    return key_slot(key.encode() if isinstance(key, str) else key)


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerUnavailable(f"{name} not found on PATH")
    return path


def _client(port: int, host: str = HOST) -> redis.Redis:
    return redis.Redis(host=host, port=port, decode_responses=True, socket_timeout=5)


class _RedisProcess:
    """One ``redis-server`` child (our own Popen) with its own temporary directory."""

    def __init__(self, port: int, extra: list[str]) -> None:
        self.port, self._extra = port, extra
        self.dir = Path(tempfile.mkdtemp(prefix=f"wt-redis-{port}-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start and wait until *our* process answers (INFO process_id == our pid)."""
        args = [_which("redis-server"), "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir), *self._extra]
        self._log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - closed in stop()
        proc = self._proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with _client(self.port) as c:
                    if c.info("server").get("process_id") == proc.pid:
                        return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        self.stop()
        log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        raise ServerUnavailable(f"redis-server on port {self.port} did not start:\n{log}")

    def stop(self) -> None:
        """Terminate our own child by its Popen pid and wait for it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _launch(extra: list[str], avoid: set[int], *, with_bus: bool = False) -> _RedisProcess:
    """Start a redis-server on a fresh free port, retrying if another process grabs it."""
    _which("redis-server")
    for attempt in range(3):
        port = free_port(with_bus=with_bus)
        if {port, port + 10000, port - 10000} & avoid:
            continue
        process = _RedisProcess(port, extra)
        try:
            process.start()
            return process
        except ServerUnavailable:
            process.cleanup()
            if attempt == 2:
                raise
    raise ServerUnavailable("could not pick a port for redis-server")


class RedisServer:
    """A standalone Redis; ``restart()`` only works for servers the tests started."""

    def __init__(self, url: str, process: _RedisProcess | None = None) -> None:
        self.url = url
        self.port: int = urlsplit(url).port or 6379
        self._process = process

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def restart(self) -> None:
        """Stop and start a fresh server on the same port (data and script cache are lost)."""
        if self._process is None:
            raise ServerUnavailable(
                "restart() needs a Redis server the tests started; unset WRITETHROUGH_REDIS_URL")
        self._process.stop()
        self._process.start()

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A standalone Redis: ``WRITETHROUGH_REDIS_URL`` or a throwaway ``redis-server``."""
    url = os.environ.get("WRITETHROUGH_REDIS_URL")
    if url:
        yield RedisServer(url)
        return
    process = _launch([], set())
    try:
        yield RedisServer(f"redis://{HOST}:{process.port}/0", process)
    finally:
        process.cleanup()


class ClusterServer:
    """A Redis Cluster (masters only); ``url`` is ``redis+cluster://h:p,h:p,...``."""

    def __init__(self, url: str, processes: list[_RedisProcess] | None = None) -> None:
        self.url = url
        netloc = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
        hosts = [n.rpartition(":") if ":" in n else (n, "", "6379") for n in netloc.split(",")]
        self.nodes: list[tuple[str, int]] = [(h, int(p)) for h, _, p in hosts]
        self.ports: list[int] = [p for _, p in self.nodes]
        self._processes = processes or []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def stop(self) -> None:
        for p in self._processes:
            p.stop()

    def _node(self, port: int) -> redis.Redis:
        return _client(port, next(h for h, p in self.nodes if p == port))

    def slot_owner(self, slot: int) -> int:
        """Port of the master owning ``slot``, as each master reports for itself."""
        for port in self.ports:
            with self._node(port) as c:
                nodes = str(c.execute_command("CLUSTER", "NODES")).splitlines()
            myself = next(line.split() for line in nodes if "myself" in line.split()[2])
            for part in myself[8:]:
                lo, _, hi = part.partition("-")
                if not part.startswith("[") and int(lo) <= slot <= int(hi or lo):
                    return port
        raise LookupError(f"slot {slot} is not assigned")

    def move_slot(self, slot: int, to_port: int, *, finish: bool = True) -> None:
        """Migrate ``slot`` with its keys to the master on ``to_port``.

        ``finish=False`` moves the keys but leaves the slot MIGRATING/IMPORTING, so clients
        get ASK redirects; call again with ``finish=True`` to complete (then MOVED).
        """
        from_port = self.slot_owner(slot)
        if from_port == to_port:
            return
        to_host = next(h for h, p in self.nodes if p == to_port)
        with self._node(from_port) as src, self._node(to_port) as dst:
            src_id = str(src.execute_command("CLUSTER", "MYID"))
            dst_id = str(dst.execute_command("CLUSTER", "MYID"))
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", to_host, to_port, "", 0, 5000, "KEYS", *keys)
        if not finish:
            return
        others = [p for p in self.ports if p not in (from_port, to_port)]
        for port in [to_port, from_port, *others]:
            with self._node(port) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def _wait_cluster_ok(ports: list[int]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    want = ("cluster_state:ok", "cluster_slots_assigned:16384", f"known_nodes:{len(ports)}")
    while True:
        infos = []
        for port in ports:
            with _client(port) as c:
                infos.append(str(c.execute_command("CLUSTER", "INFO")))
        if all(w in info for info in infos for w in want):
            return
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"Redis Cluster did not reach cluster_state:ok: {infos}")
        time.sleep(0.1)


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[ClusterServer]:
    """A Redis Cluster: ``WRITETHROUGH_REDIS_CLUSTER_URL`` or ``masters`` throwaway nodes."""
    url = os.environ.get("WRITETHROUGH_REDIS_CLUSTER_URL")
    if url:
        yield ClusterServer(url)
        return
    cli = _which("redis-cli")
    extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "5000"]
    processes: list[_RedisProcess] = []
    try:
        for _ in range(masters):
            processes.append(_launch(extra, {p.port for p in processes}, with_bus=True))
        addrs = [f"{HOST}:{p.port}" for p in processes]
        try:
            create = subprocess.run(
                [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=STARTUP_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ServerUnavailable(f"redis-cli --cluster create timed out: {exc}") from None
        if create.returncode != 0:
            raise ServerUnavailable(f"redis-cli --cluster create failed:\n{create.stdout}"
                                    f"{create.stderr}")
        _wait_cluster_ok([p.port for p in processes])
        yield ClusterServer(f"redis+cluster://{','.join(addrs)}", processes)
    finally:
        for process in processes:
            process.cleanup()


class PostgresServer:
    """A PostgreSQL server; ``pid`` (the postmaster) is None for external servers."""

    def __init__(self, url: str, pid: int | None = None, stop_cmd: list[str] | None = None,
                 cwd: Path | None = None) -> None:
        self.url, self.pid = url, pid
        self._stop_cmd, self._cwd = stop_cmd, cwd

    def stop(self) -> None:
        """Stop a throwaway server with ``pg_ctl -m immediate stop`` (no-op otherwise)."""
        cmd, self._stop_cmd = self._stop_cmd, None
        if cmd is not None:
            subprocess.run(cmd, cwd=self._cwd, capture_output=True, timeout=STARTUP_TIMEOUT,
                           stdin=subprocess.DEVNULL, check=False)


def _pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    if not candidates:
        raise ServerUnavailable(f"{name} not found (PATH, /usr/lib/postgresql/*/bin)")
    return max(candidates, key=lambda p: int(v) if (v := Path(p).parts[-3]).isdigit() else 0)


def _as_owner(args: list[str]) -> tuple[list[str], pwd.struct_passwd | None]:
    """``args`` run as the ``postgres`` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return args, None
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerUnavailable("running as root and there is no 'postgres' user") from None
    if runuser := shutil.which("runuser"):
        return [runuser, "-u", owner.pw_name, "--", *args], owner
    return [_which("su"), owner.pw_name, "-s", "/bin/sh", "-c", shlex.join(args)], owner


@contextlib.contextmanager
def postgres_server(*, wal_level: str = "replica", fsync: bool = False
                    ) -> Iterator[PostgresServer]:
    """PostgreSQL: ``WRITETHROUGH_POSTGRES_URL`` or a throwaway cluster (database postgres).

    ``wal_level="logical"`` (change capture from the WAL) uses
    ``WRITETHROUGH_POSTGRES_LOGICAL_URL`` when set, else always starts a throwaway cluster
    with ``wal_level=logical`` (the machine's shared server runs with ``replica``).
    Throwaway clusters run with ``fsync=off`` unless ``fsync`` (benchmarks: commits as
    durable as in production).
    """
    if wal_level not in ("replica", "logical"):
        raise ValueError(f"wal_level must be replica or logical, got {wal_level!r}")
    url = os.environ.get("WRITETHROUGH_POSTGRES_LOGICAL_URL" if wal_level == "logical"
                         else "WRITETHROUGH_POSTGRES_URL")
    if url:
        yield PostgresServer(url)
        return
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="wt-pg-"))
    data, log, port = root / "data", root / "postgres.log", free_port()
    stop_cmd, owner = _as_owner([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
    server = PostgresServer("", None, stop_cmd, root)
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        options = (f"-p {port} -k {root} -c listen_addresses={HOST} "
                   f"-c fsync={'on' if fsync else 'off'}")
        if wal_level == "logical":
            options += (" -c wal_level=logical -c max_replication_slots=50"
                        " -c max_wal_senders=50 -c max_connections=200")
        for args in ([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                      "-E", "UTF8", "--locale=C"],
                     [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w",
                      "-t", str(int(STARTUP_TIMEOUT)), "start"]):
            try:
                step = subprocess.run(_as_owner(args)[0], cwd=root, capture_output=True,
                                      text=True, timeout=60, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired as exc:
                raise ServerUnavailable(f"{args[0]} timed out: {exc}") from None
            if step.returncode != 0:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise ServerUnavailable(f"{shlex.join(args)} failed:\n{step.stdout}"
                                        f"{step.stderr}{tail}")
        server.pid = int((data / "postmaster.pid").read_text().split()[0])
        server.url = f"postgresql://postgres@{HOST}:{port}/postgres"
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


class OwnRedis:
    """A redis-server the tests started and may crash, restart, replicate or promote."""

    def __init__(self, process: _RedisProcess) -> None:
        self.process = process
        self.port = process.port
        self.url = f"redis://{HOST}:{process.port}/0"

    def client(self) -> redis.Redis:
        return _client(self.port)

    def crash(self) -> None:
        """SIGKILL our own process (found by its Popen pid): no save on the way down."""
        proc = self.process._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self.process.stop()

    def start(self) -> None:
        """Start again on the same port and directory: it loads its last snapshot."""
        self.process.start()

    def run_id(self) -> str:
        with self.client() as c:
            return str(c.info("server")["run_id"])


@contextlib.contextmanager
def own_redis(*extra: str) -> Iterator[OwnRedis]:
    """A throwaway redis-server with the stock snapshot schedule (``save 3600 1 300 100
    60 10000``) and ``extra`` options; never an external server (it gets crashed)."""
    process = _launch(["--save", "3600 1 300 100 60 10000", "--repl-diskless-sync-delay", "0", *extra],
                      set())
    try:
        yield OwnRedis(process)
    finally:
        process.cleanup()


def wait_replica_synced(primary: OwnRedis, replica: OwnRedis, timeout: float = 20.0) -> None:
    """Wait until ``replica`` is connected and has caught up with ``primary``'s offset."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with primary.client() as p, replica.client() as r:
            want = int(p.info("replication")["master_repl_offset"])
            info = r.info("replication")
            if info.get("master_link_status") == "up" and int(info.get("slave_repl_offset", -1)) >= want:
                return
        time.sleep(0.05)
    raise ServerUnavailable("the replica did not catch up in time")
