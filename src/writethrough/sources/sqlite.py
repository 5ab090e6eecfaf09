"""SQLite as the source of truth (stdlib sqlite3, WAL).

Versions come from the same statement that writes the row
(``INSERT ... ON CONFLICT DO UPDATE SET version = version + 1 RETURNING version``).
SQLite serializes writers, so versions follow commit order. A delete keeps the
row with a NULL value and a new version, so a re-insert never goes back.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..checks import check_identifier, check_seconds
from ..epochs import MAX_ROW_VERSION, compose, split
from ..epochs import TABLE as EPOCHS
from ..errors import (
    ConfigError,
    InvalidKeyError,
    SourceConflict,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from ..urls import ParsedURL
from .base import Logged, OutboxRow, Row
from .registry import (
    CHANGED_REASON,
    PG_INSERT,
    PG_LOCK,
    PG_REHOME,
    Claim,
    Verdict,
    judge,
    signature,
    sqlite,
)
from .registry import SQLITE_CREATE as REGISTRY_CREATE

DEFAULT_TABLE = "writethrough_items"
OUTBOX_TABLE = "writethrough_outbox"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
EXPECTED_COLUMNS = {"namespace", "key", "value", "version"}


class Connections:
    """The connections a SQLite source opened (one per thread) and how many operations
    use each now: ``close()`` closes the idle ones; one that another thread is running a
    statement on is closed by the last operation out (closing it under a running
    statement crashes the interpreter)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.all: list[sqlite3.Connection] = []
        self.busy: dict[int, int] = {}  # id(connection) -> operations using it now
        self.closed = False

    def add(self, conn: sqlite3.Connection) -> None:
        with self.lock:
            self.all.append(conn)

    def use(self, conn: sqlite3.Connection, delta: int) -> None:
        """Count an operation on ``conn`` in (+1) or out (-1)."""
        with self.lock:
            left = self.busy.get(id(conn), 0) + delta
            if left > 0:
                self.busy[id(conn)] = left
                return
            self.busy.pop(id(conn), None)
            if self.closed and conn in self.all:
                self.all.remove(conn)
                conn.close()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for conn in self.all:
                if id(conn) not in self.busy:
                    conn.close()
            self.all = [conn for conn in self.all if id(conn) in self.busy]


class SQLiteSource:
    """Rows of one namespace in a SQLite file.

        >>> src = SQLiteSource(":memory:", namespace="profiles")
        >>> src.write("user:1", b'{"name":"Ann"}')
        1
    """

    name = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        namespace: str,
        table: str = DEFAULT_TABLE,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
        claim: bool = True,
    ) -> None:
        if not isinstance(table, str) or not _IDENTIFIER.match(table):
            raise ConfigError(f"table name {table!r} is not a plain SQL identifier")
        if not isinstance(synchronous, str) or synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        check_seconds("busy_timeout", busy_timeout, allow_zero=True, maximum=3600)
        self.path = path
        self.namespace = namespace
        self.table = table
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous.upper()
        self._local: Any = threading.local()
        self._connections = Connections()
        # An in-memory database exists per connection: share one, behind a lock.
        self._shared_lock = threading.Lock() if path == ":memory:" else None
        self._closed = False
        self.claim_verdict: Verdict | None = None  # what the registry said (constructor)
        self.claims = claim  # False: an admin tool's connection (epochs), no store's
        t = table
        # Every statement also returns the namespace's epoch (see ``epochs``): versions
        # handed to the cache are epoch * 10**19 + the row's own.
        epoch = f"(SELECT coalesce(max(epoch), 0) FROM {EPOCHS} WHERE namespace IN ('', ?))"
        self._sql_read = (
            f"SELECT e.epoch, t.version, t.value FROM (SELECT {epoch} AS epoch) e "
            f"LEFT JOIN {t} t ON t.namespace = ? AND t.key = ?"
        )
        # At the bigint maximum the update does not happen and nothing is returned:
        # refused with a clear error rather than wrapped (SQLite would turn it into a float).
        self._sql_write = (
            f"INSERT INTO {t} (namespace, key, value, version) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
            f"version = {t}.version + 1 WHERE {t}.version < {MAX_ROW_VERSION} "
            f"RETURNING version, {epoch}"
        )
        self._sql_delete = (
            f"INSERT INTO {t} (namespace, key, value, version) VALUES (?, ?, NULL, 1) "
            "ON CONFLICT (namespace, key) DO UPDATE SET value = NULL, "
            f"version = {t}.version + 1 WHERE {t}.version < {MAX_ROW_VERSION} "
            f"RETURNING version, {epoch}"
        )
        self._sql_epoch = f"SELECT {epoch}"
        o = OUTBOX_TABLE
        self._sql_log = (
            f"INSERT INTO {o} (namespace, key, version, action, created_at) "
            "VALUES (?, ?, ?, ?, ?) RETURNING id"
        )
        self._sql_claimable = (
            f"SELECT id, key, version, action FROM {o} WHERE namespace = ? AND created_at <= ? "
            "AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?"
        )
        with self._connection() as conn:
            self._create_or_adopt(conn)

    def open(self) -> None:
        """The table was created or adopted by the constructor."""

    def read(self, key: str) -> Row:
        with self._connection() as conn:
            epoch, version, value = conn.execute(
                self._sql_read, (self.namespace, self.namespace, key)
            ).fetchone()
        if version is None:
            return Row(compose(int(epoch), 0), None)
        return Row(compose(int(epoch), int(version)), None if value is None else bytes(value))

    def write(self, key: str, payload: bytes) -> int:
        with self._connection() as conn:
            return self._versioned(conn.execute(self._sql_write, (self.namespace, key, payload, self.namespace)), key)

    def delete(self, key: str) -> int:
        with self._connection() as conn:
            return self._versioned(conn.execute(self._sql_delete, (self.namespace, key, self.namespace)), key)

    # -- batches: one transaction each (store.get_many / put_many / delete_many) -------

    def read_many(self, keys: Sequence[str]) -> dict[str, Row]:
        """The rows of ``keys`` (absent ones too): ``key IN (...)``, 500 keys a statement,
        in one read transaction."""
        found: list[tuple[Any, ...]] = []
        with self._connection() as conn, _transaction(conn, "BEGIN"):
            epoch = int(conn.execute(self._sql_epoch, (self.namespace,)).fetchone()[0])
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found += conn.execute(
                    f"SELECT key, version, value FROM {self.table} WHERE namespace = ? AND key IN ({marks})",
                    (self.namespace, *chunk),
                ).fetchall()
        rows = {k: Row(compose(epoch, 0), None) for k in keys}
        for key, version, value in found:
            rows[key] = Row(compose(epoch, int(version)), None if value is None else bytes(value))
        return rows

    def write_many(self, items: Mapping[str, bytes]) -> dict[str, int]:
        """Upsert every row in one transaction (sorted keys); their new versions."""
        return {k: v for k, (v, _) in self._write_many(dict(items), None).items()}

    def delete_many(self, keys: Sequence[str]) -> dict[str, int]:
        return {k: v for k, (v, _) in self._write_many(dict.fromkeys(keys), None).items()}

    def write_many_logged(self, items: Mapping[str, bytes]) -> dict[str, Logged]:
        """``write_many`` and an outbox row per key, in the same transaction."""
        return {k: Logged(v, i) for k, (v, i) in self._write_many(dict(items), "write").items()}

    def delete_many_logged(self, keys: Sequence[str]) -> dict[str, Logged]:
        return {k: Logged(v, i) for k, (v, i) in self._write_many(dict.fromkeys(keys), "delete").items()}

    def _write_many(self, items: dict[str, bytes | None], action: str | None) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        if not items:
            return out
        ns = self.namespace
        with self._connection() as conn, _transaction(conn):
            for key in sorted(items):
                payload = items[key]
                if payload is None:
                    cursor = conn.execute(self._sql_delete, (ns, key, ns))
                else:
                    cursor = conn.execute(self._sql_write, (ns, key, payload, ns))
                version = self._versioned(cursor, key)
                outbox_id = 0
                if action is not None:
                    row = (ns, key, split(version)[1], action, time.time())
                    outbox_id = int(conn.execute(self._sql_log, row).fetchone()[0])
                out[key] = (version, outbox_id)
        return out

    def epoch(self) -> int:
        """The namespace's database epoch (``epochs``)."""
        with self._connection() as conn:
            return int(conn.execute(self._sql_epoch, (self.namespace,)).fetchone()[0])

    def bump_epoch(self, reason: str, *, everything: bool = False) -> int:
        """Move this namespace's epoch (or, ``everything``, the database's) past every
        version handed out so far: after a restore, a TRUNCATE, a re-created table."""
        with self._connection() as conn:
            return bump_sqlite_epoch(conn, "" if everything else self.namespace, reason)

    def _versioned(self, cursor: sqlite3.Cursor, key: str) -> int:
        found = cursor.fetchone()
        if found is None:
            raise SourceError(
                f"the version of {key!r} in {self.table} is at its maximum (2**63 - 1): "
                "it cannot be written again"
            )
        return compose(int(found[1]), int(found[0]))

    # -- the outbox (durability="outbox") ------------------------------------------

    def write_logged(self, key: str, payload: bytes) -> Logged:
        return self._logged(self._sql_write, (self.namespace, key, payload), key, "write")

    def delete_logged(self, key: str) -> Logged:
        return self._logged(self._sql_delete, (self.namespace, key), key, "delete")

    def _logged(self, statement: str, params: tuple[Any, ...], key: str, action: str) -> Logged:
        with self._connection() as conn, _transaction(conn):
            version = self._versioned(conn.execute(statement, (*params, self.namespace)), key)
            row = (self.namespace, key, split(version)[1], action, time.time())
            outbox_id = int(conn.execute(self._sql_log, row).fetchone()[0])
        return Logged(version, outbox_id)

    def outbox_claim(self, older_than: float, limit: int, claim_for: float) -> list[OutboxRow]:
        now = time.time()
        with self._connection() as conn, _transaction(conn):
            found = conn.execute(
                self._sql_claimable, (self.namespace, now - older_than, now, limit)
            ).fetchall()
            epoch = int(conn.execute(self._sql_epoch, (self.namespace,)).fetchone()[0])
            rows = [OutboxRow(int(i), str(k), compose(epoch, int(v)), str(a)) for i, k, v, a in found]
            if rows:
                marks = ",".join("?" * len(rows))
                conn.execute(
                    f"UPDATE {OUTBOX_TABLE} SET claimed_until = ? WHERE id IN ({marks})",
                    (now + claim_for, *(r.id for r in rows)),
                )
        return rows

    def outbox_backlog(self, older_than: float) -> tuple[int, float]:
        """Outbox rows older than ``older_than`` seconds (waiting for a repair), and the age
        in seconds of the oldest row."""
        now = time.time()
        with self._connection() as conn:
            count, oldest = conn.execute(
                f"SELECT count(*), min(created_at) FROM {OUTBOX_TABLE} WHERE namespace = ? "
                "AND created_at <= ?", (self.namespace, now - older_than)).fetchone()
        return int(count), 0.0 if oldest is None else max(0.0, now - float(oldest))

    def outbox_done(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._connection() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM {OUTBOX_TABLE} WHERE id IN ({marks})", chunk)

    def close(self) -> None:
        """Close every connection; one that another thread is using is closed by that
        thread when its operation ends (closing it under a running statement crashes
        the process). Operations started after close() raise SourceUnavailable."""
        self._closed = True
        self._connections.close()
        self._local = threading.local()

    # -- I/O boundary ------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise SourceUnavailable("the SQLite source is closed")
        try:
            conn = getattr(self._local, "conn", None) or self._connect()
            self._connections.use(conn, 1)
            try:
                if self._shared_lock is None:
                    yield conn
                else:
                    with self._shared_lock:
                        yield conn
            finally:
                self._connections.use(conn, -1)
        except sqlite3.Error as exc:
            raise _map_error(exc, self.path) from exc
        except UnicodeEncodeError:  # a lone surrogate in a key: never reached the database
            raise InvalidKeyError("key is not valid Unicode (lone surrogate)") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # autocommit: each statement is its own transaction
            check_same_thread=False,  # one connection per thread; close() may run elsewhere
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        if self._shared_lock is None:
            self._local.conn = conn
        else:  # all threads use the one connection
            self._local = _Everywhere(conn)
        self._connections.add(conn)
        return conn

    def _create_or_adopt(self, conn: sqlite3.Connection) -> None:
        conn.execute(SQLITE_CREATE_EPOCHS)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "namespace TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, "
            "action TEXT NOT NULL, created_at REAL NOT NULL, claimed_until REAL)"
        )
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({self.table})")}
        if not columns:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "namespace TEXT NOT NULL, key TEXT NOT NULL, value BLOB, "
                "version INTEGER NOT NULL, PRIMARY KEY (namespace, key)) WITHOUT ROWID"
            )
        elif not columns >= EXPECTED_COLUMNS:
            missing = sorted(EXPECTED_COLUMNS - columns)
            raise ConfigError(
                f"table {self.table!r} in {self.path} exists without column(s) {missing}; "
                "use another table (?table=...)"
            )
        # The namespace holds this table's rows (key column "key"); another table's
        # namespace is refused (sources/registry.py).
        if not self.claims:
            return
        present = [(str(r[1]), str(r[2]).lower()) for r in conn.execute(f"PRAGMA table_info({self.table})")]
        wanted = Claim(self.namespace, self.table, "key", None, signature(present))
        self.claim_verdict, _ = claim_sqlite_namespace(conn, wanted)


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """One write transaction on an autocommit connection (BEGIN IMMEDIATE: no upgrade
    deadlock; ``begin="BEGIN"`` for a read transaction)."""
    conn.execute(begin)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


SQLITE_CREATE_EPOCHS = (
    f"CREATE TABLE IF NOT EXISTS {EPOCHS} (namespace TEXT PRIMARY KEY, "
    "epoch INTEGER NOT NULL DEFAULT 0, reason TEXT, changed_at REAL)"
)


def bump_sqlite_epoch(conn: sqlite3.Connection, namespace: str, reason: str) -> int:
    """``greatest(epoch + 1, now in microseconds)`` for ``namespace`` ('' = the whole
    database); the new epoch."""
    conn.execute(SQLITE_CREATE_EPOCHS)
    current = conn.execute(
        f"SELECT coalesce(max(epoch), 0) FROM {EPOCHS} WHERE namespace IN ('', ?)", (namespace,)
    ).fetchone()[0]
    epoch = max(int(current) + 1, int(time.time() * 1_000_000))
    conn.execute(
        f"INSERT INTO {EPOCHS} (namespace, epoch, reason, changed_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (namespace) DO UPDATE SET epoch = excluded.epoch, reason = excluded.reason, "
        "changed_at = excluded.changed_at",
        (namespace, epoch, reason, time.time()),
    )
    return epoch


def claim_sqlite_namespace(conn: sqlite3.Connection, wanted: Claim) -> tuple[Verdict, int]:
    """Claim ``wanted.namespace`` for its table in the SQLite registry (one write
    transaction, on an autocommit connection): the verdict and the namespace's epoch,
    bumped for an altered table. ConfigError for another table's namespace, nothing
    changed (``sources/registry.py``)."""
    conn.execute(REGISTRY_CREATE)
    conn.execute(SQLITE_CREATE_EPOCHS)
    with _transaction(conn):
        conn.execute(sqlite(PG_INSERT), (wanted.namespace, wanted.table, wanted.key_column,
                                         wanted.oid, wanted.signature))
        row = conn.execute(sqlite(PG_LOCK), (wanted.namespace, wanted.namespace)).fetchone()
        claimed = None if row is None else Claim(str(row[0]), str(row[1]), str(row[2]),
                                                 row[3], str(row[4]), int(row[5]))
        verdict = judge(claimed, wanted)
        epoch = 0 if claimed is None else claimed.epoch
        if verdict is Verdict.CHANGED:
            conn.execute(sqlite(PG_REHOME), (wanted.oid, wanted.signature, wanted.namespace))
            epoch = bump_sqlite_epoch(conn, wanted.namespace, CHANGED_REASON)
    return verdict, epoch


class _Everywhere:
    """A stand-in for threading.local that gives every thread the same connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


def _map_error(exc: sqlite3.Error, path: str) -> SourceError:
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return SourceConflict(f"SQLite constraint violation: {text}")
    if isinstance(exc, sqlite3.OperationalError):
        if "locked" in text or "busy" in text:
            return SourceTimeout(f"SQLite database {path} stayed locked: {text}")
        if "unable to open" in text or "readonly" in text or "disk" in text:
            return SourceUnavailable(f"cannot open SQLite database {path}: {text}")
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in text:
        return SourceUnavailable(f"the SQLite source is closed: {text}")
    return SourceError(f"SQLite error on {path}: {text}")


def from_url(url: ParsedURL, *, namespace: str, claim: bool = True,
             **options: Any) -> SQLiteSource:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite:///:memory:``.
    ``claim=False``: the namespace is not claimed (a tool that only handles epochs)."""
    return SQLiteSource(url.path, namespace=namespace, claim=claim,
                        **checked_options(url, **options))


def checked_options(url: ParsedURL, **options: Any) -> dict[str, Any]:
    """The SQLiteSource options of a ``sqlite://`` URL, checked (ConfigError), without
    opening anything (the table source takes its path from here)."""
    if url.hosts or url.username or url.password is not None:
        raise ConfigError(f"SQLite URL takes no host or user: {url.redacted()!r} "
                          "(use sqlite:///file.db or sqlite:////abs.db)")
    if not url.path:
        raise ConfigError(f"SQLite URL has no file path: {url.redacted()!r}")
    unknown = (set(url.query) | set(options)) - {"table", "busy_timeout", "synchronous"}
    if unknown:
        raise ConfigError(f"unknown SQLite option(s) {sorted(unknown)} in {url.redacted()!r}")
    kwargs: dict[str, Any] = {
        "table": url.query.get("table", DEFAULT_TABLE),
        "busy_timeout": url.option("busy_timeout", float, 5.0),
        "synchronous": url.query.get("synchronous", "NORMAL"),
    }
    kwargs.update(options)
    check_identifier(kwargs["table"], "table name")
    # 0: fail at once on a locked database; an hour is the most any writer should wait.
    check_seconds("busy_timeout", kwargs["busy_timeout"], allow_zero=True, maximum=3600)
    if not isinstance(kwargs["synchronous"], str):
        raise ConfigError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {kwargs['synchronous']!r}")
    return kwargs
