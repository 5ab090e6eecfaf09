"""Closing a SQLite source while another thread runs a statement on it.

Seen in CI: an async store closed while a batch write still ran in the source's worker
thread; closing a connection under a running statement crashed the interpreter
(segmentation fault). Run in a child process, so a crash fails this test instead of
ending the test run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHILD = r"""
import sys, threading, time
from writethrough.errors import WritethroughError
from writethrough.sources.sqlite import SQLiteSource

directory, errors = sys.argv[1], []
for i in range(25):
    source = SQLiteSource(f"{directory}/c{i}.db", namespace="c")
    source.open()

    def work() -> None:
        try:
            source.write_many({f"k{j}": b"x" * 50 for j in range(20000)})
        except WritethroughError as exc:  # started after close(): a typed error
            errors.append(type(exc).__name__)

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(0.01 + (i % 5) * 0.01)  # close() lands in the middle of the write
    source.close()
    thread.join()
    assert not source._connections.all and not source._connections.busy, "a connection left open"
print("ok", sorted(set(errors)))
"""


def test_close_while_another_thread_writes_never_crashes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.startswith("ok")


TABLE_CHILD = r"""
import sqlite3, sys, threading, time
from writethrough import Table
from writethrough.errors import WritethroughError
from writethrough.sources.sqlite_table import SQLiteTableSource

path = sys.argv[1] + "/t.db"
db = sqlite3.connect(path)
db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT, version INTEGER NOT NULL)")
db.executemany("INSERT INTO users VALUES (?, 'n', 1)", [(str(i),) for i in range(20000)])
db.commit()
db.close()
keys = [str(i) for i in range(20000)]
for i in range(25):
    source = SQLiteTableSource(path, Table("users"), namespace=f"t{i}")
    source.open()

    def work() -> None:
        try:
            for _ in range(3):
                source.read_many(keys)
        except WritethroughError:
            pass  # started after close(): a typed error

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(0.01 + (i % 5) * 0.01)
    source.close()
    thread.join()
    assert not source._connections.all and not source._connections.busy, "a connection left open"
print("ok")
"""


def test_closing_a_table_source_while_another_thread_reads_never_crashes(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", TABLE_CHILD, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.startswith("ok")
