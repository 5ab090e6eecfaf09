"""A logical replication stream over libpq's COPY BOTH, through psycopg 3's ``psycopg.pq``.

psycopg 3 has no replication API (its issue #71), but its documented low-level libpq
wrapper speaks the protocol fine: a ``replication=database`` connection, then
``START_REPLICATION SLOT ... LOGICAL`` puts it in COPY BOTH mode, the server sends
``XLogData`` ('w') and keepalives ('k'), and we send standby status updates ('r')
saying up to where our work is durable. That is the streaming replication protocol of
PostgreSQL's "Streaming Replication Protocol" page, the same psycopg2's
``ReplicationCursor`` drives (over the same libpq), without a second driver.

    stream = ReplicationStream(target, "writethrough_main", ["wt_profiles_1a2b3c4d"])
    stream.open()
    for payload in stream.read(timeout=0.5):   # pgoutput messages, in commit order
        ...
    stream.confirm(end_lsn)                      # after the cache writes landed
    stream.close()

Only ``confirm`` moves the slot: the server keeps the WAL from there on and, after a
reconnect, sends again everything after the last confirmed position.
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Iterable

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.pq.abc import PGconn
from psycopg.sql import Identifier

from ..errors import ConfigError, SourceError, SourceUnavailable
from .pgoutput import PG_EPOCH_UNIX, lsn_text

_XLOG = struct.Struct("!QQq")  # start LSN, end of WAL, server time
_KEEPALIVE = struct.Struct("!Qq?")  # end of WAL, server time, reply requested
_STATUS = struct.Struct("!cQQQq?")  # 'r', written, flushed, applied, client time, reply
STATUS_INTERVAL = 5.0  # seconds between unprompted status updates (wal_sender_timeout 60 s)


class SlotBusy(SourceUnavailable):
    """Another listener of the same group holds the slot (it is the active one)."""


class SlotLost(SourceError):
    """The slot was invalidated (``max_slot_wal_keep_size``): the WAL it needed is gone."""


class ReplicationStream:
    """One ``START_REPLICATION`` session on a logical slot with the pgoutput plugin."""

    def __init__(self, conninfo: str, where: str, slot: str, publications: Iterable[str],
                 *, password: str = "") -> None:
        self._conninfo = make_conninfo(conninfo, replication="database")
        self._where, self._password = where, password
        self.slot = slot
        self.publications = sorted(publications)
        if not self.publications:
            raise ConfigError("a replication stream needs at least one publication")
        self._conn: PGconn | None = None
        self.server_end = 0  # the end of WAL the server last told us about
        self.confirmed = 0  # the last position we reported as flushed
        self._last_status = 0.0

    # -- life cycle -------------------------------------------------------------------

    def open(self, start_lsn: int = 0) -> None:
        """Connect and start streaming after ``start_lsn`` (0: the slot's confirmed position)."""
        self.close()
        conn = pq.PGconn.connect(self._conninfo.encode())
        if conn.status != pq.ConnStatus.OK:
            message = self._text(conn.get_error_message())
            conn.finish()
            raise SourceUnavailable(f"cannot reach PostgreSQL {self._where}: {message}")
        names = ", ".join(Identifier(p).as_string(None) for p in self.publications)
        options = f"proto_version '1', publication_names '{names}'"
        command = (f"START_REPLICATION SLOT {Identifier(self.slot).as_string(None)} LOGICAL "
                   f"{lsn_text(start_lsn)} ({options})")
        result = conn.exec_(command.encode())
        if result.status != pq.ExecStatus.COPY_BOTH:
            message = self._text(result.error_message or conn.get_error_message())
            state = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            conn.finish()
            if state == "55006":  # object_in_use: another listener streams from this slot
                raise SlotBusy(f"slot {self.slot!r} is in use by another listener: {message}")
            if state == "55000" and "invalidated" in message:
                raise SlotLost(f"slot {self.slot!r}: {message}")
            if state.startswith(("08", "57", "53")) or not state:
                raise SourceUnavailable(f"PostgreSQL {self._where}: {message}")
            raise SourceError(f"PostgreSQL {self._where} ({state}): {message}")
        conn.nonblocking = 1
        self._conn = conn
        self._last_status = time.monotonic()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    # -- data --------------------------------------------------------------------------

    def read(self, timeout: float, limit: int = 10_000) -> list[tuple[int, bytes]]:
        """The pgoutput messages available now, as ``(wal_start, payload)``; waits up to
        ``timeout`` seconds for the first one. Answers keepalives on the way."""
        conn = self._live()
        messages: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(messages) < limit:
            size, data = conn.get_copy_data(1)
            if size == 0:  # nothing buffered: wait for the socket, unless we have some
                if messages:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wait(conn, min(left, STATUS_INTERVAL))
                continue
            if size < 0:
                raise SourceUnavailable(
                    f"replication stream from {self._where} ended: "
                    f"{self._text(conn.get_error_message()) or 'closed by the server'}")
            payload = bytes(data)
            tag = payload[:1]
            if tag == b"w":
                start, end, _ = _XLOG.unpack_from(payload, 1)
                self.server_end = max(self.server_end, end)
                messages.append((start, payload[_XLOG.size + 1:]))
            elif tag == b"k":
                end, _, reply = _KEEPALIVE.unpack_from(payload, 1)
                self.server_end = max(self.server_end, end)
                if reply:
                    self.send_status()
        if time.monotonic() - self._last_status > STATUS_INTERVAL:
            self.send_status()
        return messages

    def confirm(self, lsn: int) -> None:
        """Everything before ``lsn`` is applied: the server may recycle that WAL."""
        if lsn > self.confirmed:
            self.confirmed = lsn
            self.send_status()

    def send_status(self, *, reply: bool = False) -> None:
        """Tell the server our confirmed position (``reply``: ask for a keepalive back)."""
        conn = self._live()
        now_us = int((time.time() - PG_EPOCH_UNIX) * 1_000_000)
        message = _STATUS.pack(b"r", self.confirmed, self.confirmed, self.confirmed, now_us,
                               reply)
        if conn.put_copy_data(message) != 1:
            raise SourceUnavailable(f"cannot send to PostgreSQL {self._where}: "
                                    f"{self._text(conn.get_error_message())}")
        while conn.flush() == 1:
            select.select([], [conn.socket], [], 1.0)
        self._last_status = time.monotonic()

    # -- internals ---------------------------------------------------------------------

    def _live(self) -> PGconn:
        if self._conn is None:
            raise SourceUnavailable(f"the replication stream from {self._where} is closed")
        return self._conn

    def _wait(self, conn: PGconn, timeout: float) -> None:
        try:
            select.select([conn.socket], [], [], max(0.0, timeout))
            conn.consume_input()
        except (OSError, psycopg.Error) as exc:  # the connection is gone
            raise SourceUnavailable(f"replication stream from {self._where}: "
                                    f"{self._text(str(exc))}") from None

    def _text(self, raw: bytes | str) -> str:
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = " ".join(text.split())
        return text.replace(self._password, "***") if self._password else text
