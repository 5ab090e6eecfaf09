"""A private redis-server for the chaos tool: started here, on a free port, in a temporary
directory, and the only server the tool ever crashes, restarts or promotes (by its own
Popen handle). Needs ``redis-server`` on PATH.

    with RedisProcess(save=True) as primary, RedisProcess(replica_of=primary.port) as replica:
        primary.crash(); primary.start()       # comes back from its last snapshot
        replica.promote()                      # REPLICAOF NO ONE
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import redis

STOCK_SAVE = "3600 1 300 100 60 10000"  # redis.conf's default snapshot schedule


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class RedisProcess:
    """One redis-server child process with its own port and directory."""

    def __init__(self, *, save: bool = True, replica_of: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError("redis-server is not on PATH: this scenario starts its own Redis")
        self.binary, self.port = binary, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"wt-chaos-redis-{self.port}-"))
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                     "--save", STOCK_SAVE if save else "", "--appendonly", "no", "--daemonize", "no",
                     "--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s
        if replica_of is not None:
            self.args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.start()

    def __enter__(self) -> RedisProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def client(self) -> redis.Redis:
        import redis  # the redis extra; only a Redis scenario gets here

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 20.0) -> None:
        """Start (again, on the same port and directory: it loads its last snapshot)."""
        self._log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - closed in crash()
        self._proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                with self.client() as c:
                    if c.info("server").get("process_id") == self._proc.pid:
                        return
            except Exception:  # not up yet (redis.RedisError)
                pass
            time.sleep(0.02)
        self.crash()
        raise ConfigError(f"redis-server on port {self.port} did not start")

    def crash(self) -> None:
        """SIGKILL our own child: no snapshot on the way down."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def command(self, *args: Any) -> Any:
        with self.client() as c:
            return c.execute_command(*args)

    def promote(self) -> None:
        self.command("REPLICAOF", "NO", "ONE")

    def follow(self, port: int) -> None:
        self.command("REPLICAOF", "127.0.0.1", str(port))

    def synced_with(self, primary: RedisProcess) -> bool:
        with primary.client() as p, self.client() as r:
            want = int(p.info("replication")["master_repl_offset"])
            info = r.info("replication")
        return info.get("master_link_status") == "up" and int(info.get("slave_repl_offset", -1)) >= want

    def destroy(self) -> None:
        self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)
