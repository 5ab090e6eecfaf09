"""Change capture from the WAL: a logical replication slot, ``pgoutput``, one listener group.

    from writethrough.capture import Keyspace, LogicalListener
    spaces = {"profiles": Keyspace("profiles", "profiles", "id", "write-through")}
    with LogicalListener("postgresql://listener@db/app", "redis://cache:6379/0", spaces,
                         group="main") as listener:
        listener.run()                 # until close() / stop event / SIGTERM in the CLI

The group's slot (``writethrough_<group>``, created on first start, which bumps the
namespaces' epochs: what changed before it existed cannot be known) streams every
committed change of the tables' publications (``install(..., capture="logical")``), in
commit order, after commit: writers pay nothing but the WAL they write anyway. The
listener coalesces a batch per key, writes the cache (:mod:`.apply`), parks the keys
that failed alone, commits, and only then confirms the batch's last commit to the slot:
after a crash, a kill -9 or a lost connection it resumes from the last confirmed commit
(changes applied twice are harmless: cache writes are conditional on the version).

Several listeners of one group: the slot streams to one at a time; the others wait as
standbys and take over when it is free (leader election by the slot). Two groups (two
slots) each apply every change: one group per cache.

A DELETE's version is the deleted row's + 1: from the WAL when the table's replica
identity carries the version column (FULL), else the last version this listener streamed
for the key (``remember_keys`` most recent keys), else one above every version drawn so
far (safe: a re-insert drawn before it stays a miss until the tombstone expires).
A TRUNCATE bumps the namespace's epoch. A slot keeps the server's WAL from its
confirmed position on: a stopped listener makes it grow (:func:`slot_status`,
``max_slot_wal_keep_size``); drop the slot of a group that is gone (:func:`drop_slot`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg

from ..caches.base import Cache
from ..errors import CacheError, ConfigError, SourceError
from . import pgoutput as po
from .apply import Interrupted, KeyChange
from .keyspace import Backlog, Keyspace
from .listener import BaseListener
from .pg import Connection, PgTarget, identifier
from .stream import ReplicationStream, SlotBusy, SlotLost

log = logging.getLogger("writethrough.capture")
SLOT_PREFIX = "writethrough_"

_SLOT = """
SELECT s.active, s.active_pid, s.confirmed_flush_lsn::text, s.restart_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
       s.wal_status, s.safe_wal_size, s.plugin
FROM pg_replication_slots s WHERE s.slot_name = %s AND s.database = current_database()
"""


def slot_name(group: str) -> str:
    identifier(group, "listener group")
    if len(SLOT_PREFIX + group) > 63:
        raise ConfigError(f"listener group {group!r} is too long (50 characters at most)")
    return (SLOT_PREFIX + group).lower()


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """A group's slot as the server sees it."""

    slot: str
    active: bool  # a listener streams from it now
    active_pid: int | None
    confirmed_lsn: str | None  # up to where the cache has every change
    retained_bytes: int  # WAL the server keeps for this slot
    behind_bytes: int  # WAL written since the confirmed position (the listener's backlog)
    wal_status: str | None  # reserved / extended / unreserved / lost
    safe_wal_size: int | None  # bytes before max_slot_wal_keep_size invalidates the slot


def slot_status(source_url: str, group: str = "main") -> SlotStatus | None:
    """The group's slot, or None if there is none."""
    slot = slot_name(group)
    target = PgTarget.parse(source_url)
    with target.connect(autocommit=True) as conn, target.errors():
        return _status(conn, slot)


def _status(conn: Connection, slot: str) -> SlotStatus | None:
    row = conn.execute(_SLOT, (slot,)).fetchone()
    if row is None:
        return None
    return SlotStatus(slot, bool(row[0]), row[1], row[2], int(row[4] or 0), int(row[5] or 0),
                      row[6], None if row[7] is None else int(row[7]))


def drop_slot(source_url: str, group: str = "main") -> bool:
    """Drop the group's slot (the server frees the WAL it kept); True if there was one.
    A listener of the group must not be running."""
    slot = slot_name(group)
    target = PgTarget.parse(source_url)
    with target.connect(autocommit=True) as conn, target.errors():
        row = conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM "
                           "pg_replication_slots WHERE slot_name = %s", (slot,)).fetchall()
    return bool(row)


class LogicalListener(BaseListener):
    """Keeps a cache current from the WAL (see the module docstring).

    Connects at construction (a bad URL raises ConfigError, an unreachable database
    SourceUnavailable), checks the tables' publications and creates the group's slot if
    missing (needs the REPLICATION attribute). :meth:`drain_once` applies what was
    committed until now and returns; :meth:`run` streams until stopped.
    """

    application_name = "writethrough-logical"

    def __init__(self, source_url: str, cache_url: str | Cache,
                 keyspaces: Mapping[str, Keyspace], *, group: str = "main",
                 batch_size: int = 500, standby_interval: float = 2.0,
                 remember_keys: int = 100_000,
                 connect_timeout: int = 5, statement_timeout_ms: int = 5000,
                 lag_samples: int = 100_000) -> None:
        self.slot = slot_name(group)
        if not 0 < standby_interval < 3600:
            raise ConfigError(f"standby_interval must be in (0, 3600) s: {standby_interval!r}")
        self.standby_interval = float(standby_interval)
        if isinstance(remember_keys, bool) or not isinstance(remember_keys, int) or (
                remember_keys < 0):
            raise ConfigError(f"remember_keys must be an int >= 0, got {remember_keys!r}")
        # The last version streamed per key (most recent keys): a DELETE whose WAL record
        # does not carry the old version gets the exact one from here.
        self.remember_keys = remember_keys
        # key -> (version, deleted): the last version streamed (a delete's: old + 1)
        self._seen: OrderedDict[tuple[str, str], tuple[int, bool]] = OrderedDict()
        self.publications: list[str] = []
        self.stream: ReplicationStream | None = None
        self.standby = False  # another listener of the group holds the slot
        self._by_oid: dict[int, str] = {}  # our tables' oids -> namespace
        self._reset()
        super().__init__(source_url, cache_url, keyspaces, batch_size=batch_size,
                         connect_timeout=connect_timeout,
                         statement_timeout_ms=statement_timeout_ms, lag_samples=lag_samples)

    def prepare(self) -> None:
        super().prepare()
        conn = self.work()
        with self.target.errors():
            wal = conn.execute("SHOW wal_level").fetchone()
            if wal is None or wal[0] != "logical":
                raise ConfigError(
                    f"wal_level is {wal[0] if wal else '?'}: logical capture needs "
                    "wal_level=logical (managed PostgreSQL: rds.logical_replication=1 on RDS, "
                    "cloudsql.logical_decoding=on on Cloud SQL, ...); or use triggers")
            for namespace, bound in self.bound.items():
                published = conn.execute(
                    "SELECT EXISTS (SELECT FROM pg_publication_rel r JOIN pg_publication p "
                    "ON p.oid = r.prpubid WHERE p.pubname = %s AND r.prrelid = %s)",
                    (bound.shape.tag, bound.shape.oid)).fetchone()
                if published != (True,):
                    raise ConfigError(f"{bound.shape.qualified} has no publication "
                                      f"{bound.shape.tag}: run writethrough install "
                                      "(capture logical) on it first")
                self.publications.append(bound.shape.tag)
                self._by_oid[bound.shape.oid] = namespace
            self._ensure_slot()
            conn.commit()
        self.stream = ReplicationStream(self.target.conninfo, self.target.where, self.slot,
                                        self.publications, password=self.target.password)

    def _ensure_slot(self) -> None:
        """Create the group's slot if missing (or lost). A new slot streams what commits
        after it: what changed before cannot be known, so the namespaces' epochs are
        bumped (every entry cached before is invalid) -- once per slot, not per start."""
        work = self.work()
        row = work.execute("SELECT plugin, wal_status FROM pg_replication_slots "
                           "WHERE slot_name = %s", (self.slot,)).fetchone()
        if row is not None:
            if row[0] != "pgoutput":
                raise ConfigError(f"slot {self.slot} exists with plugin {row[0]!r}")
            if row[1] != "lost":
                return
            # max_slot_wal_keep_size removed WAL it needed: the changes in it are lost.
            log.warning("capture: slot %s lost its WAL; re-creating it", self.slot)
            work.execute("SELECT pg_drop_replication_slot(%s)", (self.slot,))
        # Creating a slot waits for the transactions running now to end.
        work.execute("SET LOCAL statement_timeout = '60s'")
        try:
            work.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                         (self.slot,))
        except psycopg.errors.DuplicateObject:  # another listener of the group was first
            work.rollback()
            return
        self.bump_epochs(set(self.keyspaces), f"new replication slot {self.slot}")
        log.info("capture: created replication slot %s (epochs bumped: %s)", self.slot,
                 ", ".join(sorted(self.keyspaces)))

    def slot_status(self) -> SlotStatus | None:
        """This group's slot: its backlog and the WAL the server keeps for it."""
        with self.target.errors():
            status = _status(self.work(), self.slot)
            self.work().commit()
        return status

    def measure_backlog(self, conn: Connection) -> Backlog:
        status = _status(conn, self.slot)
        times = self._times
        age = time.time() - min(times) if times else 0.0
        return Backlog(self._changes, age, status.behind_bytes if status else None,
                       status.retained_bytes if status else None)

    # -- running ------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Stream and apply until ``stop`` is set or :meth:`close` is called. Database and
        cache failures are retried with backoff (never raised); stops between batches."""
        stop = self._stop = stop or threading.Event()
        attempt = 0
        try:
            while not (stop.is_set() or self.closing):
                try:
                    self._step(timeout=0.2)
                    attempt = 0
                except Interrupted:
                    break  # asked to stop mid-batch: nothing confirmed past what landed
                except SlotBusy as exc:
                    if not self.standby:
                        log.info("capture: standby, %s", exc)
                    self.standby = True
                    self.sleep(stop, self.standby_interval)
                except (SourceError, CacheError) as exc:
                    attempt += 1
                    self._drop_stream()
                    if isinstance(exc, SourceError):
                        self.check_source(exc)
                    delay = min(5.0, 0.05 * 2 ** min(attempt, 7))
                    log.warning("capture: %s; retrying in %.2fs", exc, delay)
                    self.sleep(stop, delay)
        finally:
            self._drop_stream()
            self.close_connections()

    def drain_once(self, timeout: float = 30.0) -> int:
        """Apply every change committed before this call; returns how many were applied.
        Raises CacheError / SourceError on failure (nothing past the failure confirmed),
        SlotBusy if another listener of the group is streaming."""
        with self.target.errors():
            row = self.work().execute("SELECT pg_current_wal_lsn()::text").fetchone()
            self.work().commit()
        goal = po.parse_lsn(str(row[0])) if row else 0
        before = self.stats.applied
        deadline = time.monotonic() + timeout
        quiet = 0  # keepalive round trips in a row with nothing new: the server is done
        try:
            while True:
                seen = self.stats.applied + self._changes
                idle = self._step(timeout=0.1)
                stream = self.stream
                assert stream is not None
                if idle and not (self._in_txn or self._changes or self._truncated):
                    quiet = quiet + 1 if self.stats.applied + self._changes == seen else 0
                    if stream.server_end >= goal or quiet >= 3:
                        return self.stats.applied - before
                    stream.send_status(reply=True)  # ask where the server is
                if time.monotonic() > deadline:
                    raise SourceError(f"slot {self.slot} did not catch up in {timeout:.0f} s")
        except BaseException:
            self._drop_stream()
            raise

    def _step(self, timeout: float) -> bool:
        """Read what is there (up to one batch), apply when a batch is full or the stream
        is idle, confirm, retry parked keys when due. True if the stream was idle."""
        stream = self.stream
        if stream is None:
            raise SourceError("the listener is closed")
        if not stream.is_open:
            self._reset()
            try:
                stream.open()
            except SlotLost as exc:  # changes were lost: a new slot, the epochs bumped
                log.warning("capture: %s; re-creating it", exc)
                try:
                    self._ensure_slot()
                    self.commit()
                except BaseException:
                    self.abort()
                    raise
                stream.open()
            if self.standby:
                log.info("capture: slot %s acquired; streaming", self.slot)
            self.standby = False
        messages = stream.read(timeout, limit=self.batch_size)
        for _, payload in messages:
            self._handle(po.decode(payload))
        idle = len(messages) < self.batch_size
        if self._changes >= self.batch_size or (idle and self._changes):
            self._flush()
        elif idle and not self._in_txn and not self._changes:
            # Caught up with nothing of ours pending: WAL up to the server's end is done.
            stream.confirm(max(self._commit_end, stream.server_end))
        if idle:
            self.retry_parked()
        return idle

    # -- decoding -------------------------------------------------------------------------

    def _reset(self) -> None:
        """Forget what was received and not applied (the server sends it again)."""
        self._pending: dict[str, dict[str, KeyChange]] = {}
        self._pending_count = 0  # distinct keys pending
        self._changes = 0  # changes pending (TRUNCATEs included)
        self._truncated: set[str] = set()
        self._times: list[float] = []  # commit time of each pending change
        self._in_txn = False
        self._commit_time = 0.0
        self._commit_end = 0  # end of the last complete transaction received
        self._relations: dict[int, tuple[po.Relation, str | None]] = {}

    def _handle(self, message: po.Message) -> None:
        if isinstance(message, po.Begin):
            self._in_txn, self._commit_time = True, message.commit_time
        elif isinstance(message, po.Commit):
            self._in_txn, self._commit_end = False, message.end_lsn
        elif isinstance(message, po.Relation):
            self._relations[message.oid] = (message, self._by_oid.get(message.oid))
        elif isinstance(message, po.Insert):
            self._change(message.relation, message.new, None)
        elif isinstance(message, po.Update):
            self._change(message.relation, message.new, message.old)
        elif isinstance(message, po.Delete):
            self._change(message.relation, None, message.old)
        elif isinstance(message, po.Truncate):
            for oid in message.relations:
                namespace = self._by_oid.get(oid)
                if namespace is not None:
                    self._truncated.add(namespace)
                    self._changes += 1
                    self._times.append(self._commit_time)

    def _change(self, oid: int, new: tuple[po.Value, ...] | None,
                old: tuple[po.Value, ...] | None) -> None:
        relation, namespace = self._relations.get(oid, (None, None))
        if namespace is None or relation is None:
            return  # not one of our tables
        space = self.keyspaces[namespace]
        names = [c.name for c in relation.columns]
        try:
            k, v = names.index(space.key_column), names.index(space.version_column)
        except ValueError:
            log.warning("capture: %s has no column %r/%r any more; change skipped",
                        relation.name, space.key_column, space.version_column)
            self.stats.skipped += 1
            return
        keys = self._pending.setdefault(namespace, {})
        if old is not None:
            old_key = old[k]
            if isinstance(old_key, str) and (new is None or new[k] != old_key):
                # A delete, or an update that changed the key: the old key is gone. Its
                # version: from the WAL (replica identity FULL), else the last one streamed.
                version = _version(old[v])
                last = self._seen.get((namespace, old_key))
                if version is None and last is not None and not last[1]:
                    version = last[0]
                deleted = None if version is None else version + 1
                self._add(keys, old_key, deleted, True)
                self._remember(namespace, old_key, deleted, True)
        new_key = None if new is None else new[k]
        if isinstance(new_key, str) and new is not None:
            version = _version(new[v])
            last = self._seen.get((namespace, new_key))
            if version is not None and last is not None and version < last[0]:
                # A re-insert whose version was drawn before a concurrent UPDATE + DELETE
                # of the key committed: below the delete's tombstone. The key stays a miss
                # (never stale) until the tombstone expires. Counted, see the README.
                self.stats.went_back += 1
                log.warning("capture: version of %r in %r went back (%s < %s)", new_key[:80],
                            namespace, version, last[0])
            self._add(keys, new_key, version, False)
            self._remember(namespace, new_key, version, False)

    def _remember(self, namespace: str, key: str, version: int | None, deleted: bool) -> None:
        if version is None or not self.remember_keys:
            self._seen.pop((namespace, key), None)
            return
        self._seen[namespace, key] = (version, deleted)
        self._seen.move_to_end((namespace, key))
        if len(self._seen) > self.remember_keys:
            self._seen.popitem(last=False)

    def _add(self, keys: dict[str, KeyChange], key: str, version: int | None,
             deleted: bool) -> None:
        found = keys.get(key)
        if found is None:
            keys[key] = KeyChange(version, deleted)
            self._pending_count += 1
        else:
            found.then(version, deleted)
        self._times.append(self._commit_time)
        self._changes += 1

    def _flush(self) -> None:
        """Apply the pending changes, commit the parked keys, confirm the last complete
        transaction."""
        stream = self.stream
        assert stream is not None
        try:
            if self._truncated:
                self.bump_epochs(self._truncated, "TRUNCATE (logical capture)")
                self.commit()
                self.stats.truncates += len(self._truncated)
            self.apply(self._pending)
            self.commit()
        except BaseException:
            self.abort()
            raise
        done = time.time()
        self.lags.extend([done - t for t in self._times])
        self.stats.batches += 1
        self.stats.applied += self._changes
        self._pending, self._pending_count, self._changes, self._times = {}, 0, 0, []
        self._truncated = set()
        stream.confirm(self._commit_end)

    def _drop_stream(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def close(self) -> None:
        self._drop_stream()
        super().close()


def _version(value: po.Value) -> int | None:
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None
