"""A throwaway PostgreSQL cluster that a test can back up and restore (point-in-time
recovery to the backup, which ends on a new timeline, as a real restore does).

Always our own cluster (initdb on a free port, stopped with pg_ctl): never the
machine's server or ``WRITETHROUGH_POSTGRES_URL``, which must not be restored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from servers import HOST, STARTUP_TIMEOUT, ServerUnavailable, _as_owner, _pg_binary, free_port


class RestorableCluster:
    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
        # Not under pytest's tmp_path: the postgres user must be able to reach it.
        self.root = root = Path(tempfile.mkdtemp(prefix="wt-pg-restore-"))
        self.data, self.saved = root / "data", root / "backup"
        self.log, self.port = root / "postgres.log", free_port()
        self.url = f"postgresql://postgres@{HOST}:{self.port}/postgres"
        root.mkdir(parents=True, exist_ok=True)
        self._chown(root)
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres",
                   "--no-sync", "-E", "UTF8", "--locale=C"])
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses={HOST} -c fsync=off"
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                   "-t", str(int(STARTUP_TIMEOUT)), "start"])

    def stop(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"], check=False)

    def backup(self) -> None:
        """A cold base backup: stop, copy the data directory, start again."""
        self.stop()
        shutil.copytree(self.data, self.saved, symlinks=True)
        self.start()

    def restore(self) -> None:
        """Replace the data directory by the backup and recover it to its end: the server
        comes up on a new timeline, with every write after the backup lost."""
        self.stop()
        shutil.rmtree(self.data)
        shutil.copytree(self.saved, self.data, symlinks=True)
        (self.data / "recovery.signal").write_text("")
        with open(self.data / "postgresql.auto.conf", "a") as conf:
            conf.write("\nrestore_command = 'false'\nrecovery_target_timeline = 'current'\n")
        self._chown(self.data, recursive=True)
        self.start()
        self.wait_primary()

    def wait_primary(self, timeout: float = 60.0) -> None:
        """Recovery ends after ``pg_ctl start -w`` returns (a server in archive recovery
        accepts connections once consistent): wait for the new timeline's primary."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=5, autocommit=True) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                    if row is not None and not row[0]:
                        return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise ServerUnavailable(f"the restored cluster was still in recovery after {timeout} s")
            time.sleep(0.05)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _chown(self, path: Path, recursive: bool = False) -> None:
        owner = _as_owner(["true"])[1]
        if owner is None:
            return
        paths = [path, *path.rglob("*")] if recursive else [path]
        for p in paths:
            os.chown(p, owner.pw_uid, owner.pw_gid, follow_symlinks=False)

    def _run(self, args: list[str], check: bool = True) -> None:
        try:
            done = subprocess.run(_as_owner(args)[0], cwd=self.root, capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ServerUnavailable(f"{args[0]} timed out: {exc}") from None
        if check and done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ServerUnavailable(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}{tail}")
