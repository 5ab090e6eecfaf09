"""A near cache: an in-process L1 in front of Redis, kept coherent by Redis itself.

``redis://host:6379/0?near=10000`` (``&near_ttl=60``) wraps the Redis backend:

* ``get`` is served from the L1 (a :class:`MemoryCache` of up to ``near`` values)
  when the key is there: a dict lookup, no round trip. Otherwise it reads Redis
  through the wrapped backend and keeps a *value* it found in the L1.
* ``write`` / ``lease`` / ``fill`` / ``set`` / ``delete`` always go to Redis
  (the wrapped backend's conditional operations); the key is dropped from the L1
  before and after, so **the writing process always reads its own write** (its
  next ``get`` goes to Redis).
* A dedicated connection subscribes to Redis server-assisted client-side caching
  (``CLIENT TRACKING ON REDIRECT <itself> BCAST PREFIX wt:``, RESP2 +
  ``__redis__:invalidate``): Redis sends the name of every ``wt:*`` key that
  changes (written, deleted, expired, evicted; all keys on FLUSHALL), and the key
  is dropped from the L1; a moved lifetime marker (``wt:~epoch``: the server was
  restarted or failed over) flushes the whole L1. If that connection drops, the L1
  is flushed and stays off (reads go to Redis) until tracking is back.

Staleness across processes is **bounded, not zero**: after another process's write
is acknowledged, this process may serve the previous value from its L1 until the
invalidation message arrives (loopback: measured by ``writethrough bench``, row
"near cache", and stated in the README), and never longer than ``near_ttl``.

A read that races an invalidation must not put an older value back: every read
from Redis is registered as in flight, an invalidation of that key meanwhile marks
it, and a marked read does not fill the L1 (nor does one that began before the
tracking connection last dropped); a fill never replaces a newer value in the L1,
so reads in one process do not go back in version.

The wrapper uses only the backend interface (``caches/base.py``), so it keeps
working whatever the Redis backend's encoding or read command is.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CacheError, ConfigError
from ..protocol import Entry, Kind, LeaseOutcome, WriteOutcome
from .base import AsyncCache, BatchFill, BatchWrite, Cache
from .memory import MemoryCache
from .redis_codec import MARKER_PREFIX as MARKERS  # the Redis backend's lifetime markers

INVALIDATE_CHANNEL = b"__redis__:invalidate"
_monotonic = time.monotonic
DEFAULT_PREFIX = "wt:"
_VALUE = Kind.VALUE


class Coherence:
    """The L1 and the bookkeeping that keeps it coherent; shared by the sync and async wrappers.

    ``tracker`` is ``None`` in tests that drive invalidations by hand (``invalidate``).
    """

    def __init__(
        self,
        max_entries: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        on_invalidate: Callable[[str | None], None] | None = None,
    ) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"near must be a number of entries >= 1, got {max_entries!r}")
        if not isinstance(ttl, int | float) or not ttl > 0:
            raise ConfigError(f"near_ttl must be > 0 seconds, got {ttl!r}")
        self.l1 = MemoryCache(max_entries=max_entries, max_bytes=None, clock=clock)
        self.ttl = float(ttl)
        self.on_invalidate = on_invalidate
        self.enabled = False  # True while the tracking connection is subscribed
        self.generation = 0  # bumped whenever tracking (re)starts or stops
        self.hits = 0
        self.invalidations = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, int] = {}  # key -> reads from Redis in flight
        self._invalidated: dict[str, int] = {}  # key in flight -> _seq of its last invalidation
        self._seq = 0  # counts invalidations

    def lookup(self, key: str) -> Entry | None:
        if not self.enabled:
            return None
        entry = self.l1.get(key)
        if entry is not None:
            self.hits += 1
        return entry

    def begin(self, key: str) -> tuple[int, int]:
        """A read from Redis starts; returns the token to hand to ``end``."""
        with self._lock:
            self._inflight[key] = self._inflight.get(key, 0) + 1
            return self.generation, self._seq

    def end(self, key: str, token: tuple[int, int], entry: Entry | None) -> None:
        """The read returned ``entry``: keep it in the L1 unless anything invalidated it meanwhile.

        Only an invalidation *after this read began* spoils it: reads of a hot key that
        overlap without end still fill once the invalidation is behind them.
        """
        generation, began = token
        with self._lock:
            left = self._inflight[key] - 1
            spoiled = self._invalidated.get(key, 0) > began
            if left:
                self._inflight[key] = left
            else:
                del self._inflight[key]
                self._invalidated.pop(key, None)
            if entry is None:
                return
            held = self.l1.get(key)
            if held is not None and held.version < entry.version:
                # This read saw a newer version than the L1 holds: whatever happens next,
                # the older one must go, or this caller's next read would go back.
                self.l1.delete(key)
                held = None
            # Two overlapping reads may end in either order: never replace a newer value.
            if (
                held is None
                and not spoiled
                and self.enabled
                and generation == self.generation
                and entry.kind is _VALUE
            ):
                self.l1.set(key, entry, ttl=self.ttl)

    def invalidate(self, key: str | None) -> None:
        """Drop ``key`` (None: everything) from the L1; reads of it in flight will not fill."""
        with self._lock:
            self._seq += 1
            if key is None:
                self.l1.clear()
                self.generation += 1
            else:
                self.l1.delete(key)
                if key in self._inflight:
                    self._invalidated[key] = self._seq
            self.invalidations += 1
        if self.on_invalidate is not None:
            self.on_invalidate(key)

    def tracking(self, on: bool) -> None:
        """Tracking started (on) or was lost (off): either way, what the L1 holds is unproven."""
        with self._lock:
            self.enabled = on
            self.l1.clear()
            self.generation += 1


class Tracker:
    """The tracking connection (RESP2, REDIRECT to itself, BCAST on ``prefix``): a daemon thread
    waits for invalidations and feeds them to ``coherence``; reconnects with backoff.

    Readers help: a thread that serves an L1 hit more than ``DRAIN_EVERY`` after the
    last drain first reads what is pending on the connection itself (non-blocking,
    one ``select``). Without it a busy process leaves the tracking thread waiting
    for the GIL: measured here, 2 threads hammering L1 hits held invalidations back
    by up to 88 ms (p99 63 ms); see ``writethrough bench``, row "near cache".
    """

    DRAIN_EVERY = 0.001  # seconds between reader-side drains on the hit path

    def __init__(
        self,
        coherence: Coherence,
        connection_factory: Callable[[], Any],
        prefix: str = DEFAULT_PREFIX,
        *,
        ping_every: float = 1.0,
    ) -> None:
        self.coherence = coherence
        self.connection_factory = connection_factory
        self.prefix = prefix
        self.ping_every = ping_every
        self.connected = threading.Event()
        self.reconnects = 0
        self.last_drain = 0.0  # time.monotonic() of the last drain, by any thread
        self._io = threading.Lock()  # one reader of the connection at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._last_read = 0.0

    def start(self, wait: float = 2.0) -> bool:
        """Start the thread; wait up to ``wait`` s for tracking to be on (False: still off)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="writethrough-near", daemon=True)
            self._thread.start()
        return self.connected.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # a socket that may already be gone
                conn.disconnect()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        self.coherence.tracking(False)

    def drop(self) -> None:
        """Cut the tracking connection (tests: as if the network failed)."""
        conn = self._conn
        if conn is not None:
            conn.disconnect()

    def drain_nowait(self, wait: float = 0.002) -> None:
        """Apply whatever invalidations are pending, unless another thread is reading them.

        Waiting briefly (``wait``, not just trying) matters for threads: when the
        tracking thread holds the connection it is usually mid-drain and waiting for
        the GIL; blocking on the lock hands the GIL over, so it finishes instead of
        being starved by hit loops. The asyncio wrapper passes 0: the loop never waits.
        """
        conn = self._conn
        if conn is None or not self._io.acquire(timeout=wait if wait > 0 else -1, blocking=wait > 0):
            return
        try:
            if self._conn is conn and self.connected.is_set():
                self._drain(conn)
        except Exception:
            # The tracking thread sees the same failure on its next read and reconnects;
            # until then nothing may be served from the L1.
            self.coherence.tracking(False)
        finally:
            self._io.release()

    def _drain(self, conn: Any) -> None:
        """Under ``_io``: handle every complete message already readable, without blocking."""
        self.last_drain = time.monotonic()
        while conn.can_read(timeout=0):
            self._handle(conn.read_response())
            self._last_read = time.monotonic()

    def _run(self) -> None:
        pause = 0.05
        while not self._stop.is_set():
            try:
                self._session()
                pause = 0.05
            except Exception:
                pass  # any failure: the L1 is flushed below and we reconnect
            self.connected.clear()
            self.coherence.tracking(False)
            if self._stop.wait(pause):
                break
            pause = min(pause * 2, 1.0)
            self.reconnects += 1

    def _session(self) -> None:
        import select

        conn = self.connection_factory()
        try:
            conn.connect()
            conn.send_command("CLIENT", "ID")
            client_id = conn.read_response()
            conn.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", self.prefix
            )
            if conn.read_response() not in (b"OK", "OK"):
                raise ConnectionError("CLIENT TRACKING was refused")
            conn.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
            conn.read_response()  # the subscribe confirmation
            self._conn = conn
            self._last_read = time.monotonic()
            self.coherence.tracking(True)
            self.connected.set()
            pinged: float | None = None
            while not self._stop.is_set():
                sock = conn._sock  # redis-py keeps the socket here; select needs its fd
                if sock is None:
                    raise ConnectionError("the tracking connection closed")
                select.select([sock], [], [], 0.25)
                with self._io:
                    self._drain(conn)
                    now = time.monotonic()
                    if pinged is not None and self._last_read >= pinged:
                        pinged = None  # something (the pong at least) came back
                    if pinged is None and now - self._last_read > self.ping_every:
                        conn.send_command("PING")
                        pinged = now
                    elif pinged is not None and now - pinged > max(2.0, 2 * self.ping_every):
                        raise ConnectionError("the tracking connection stopped answering")
        finally:
            self.connected.clear()
            self.coherence.tracking(False)
            with self._io:
                self._conn = None
            conn.disconnect()

    def _handle(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3 or message[0] not in (b"message", "message"):
            return  # subscribe confirmations, pongs
        keys = message[2]
        if keys is None:  # FLUSHALL / FLUSHDB, or the server's tracking table overflowed
            self.coherence.invalidate(None)
            return
        for raw in keys:
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            if key.startswith(MARKERS):
                # A lifetime marker moved (caches/redis_codec.py): the server is in a new
                # reign (restarted, failed over), so nothing the L1 holds is proven.
                self.coherence.invalidate(None)
            else:
                self.coherence.invalidate(key)


class NearCache:
    """The sync near cache around a Redis backend (see the module doc).

        >>> cache = NearCache(RedisCache(client), connection_factory, max_entries=10_000)
    """

    # Not forwarded to the wrapped backend (``__getattr__``): batch reads go through
    # ``get_many``, which keeps the L1's bookkeeping.
    get_many_hits = None

    def __init__(
        self,
        inner: Cache,
        connection_factory: Callable[[], Any],
        *,
        max_entries: int = 10_000,
        ttl: float = 60.0,
        prefix: str = DEFAULT_PREFIX,
        on_invalidate: Callable[[str | None], None] | None = None,
    ) -> None:
        self.inner = inner
        self.name = f"near+{inner.name}"
        self.coherence = Coherence(max_entries, ttl, on_invalidate=on_invalidate)
        self.tracker = Tracker(self.coherence, connection_factory, prefix)
        # The L1 hit path reads these directly (one attribute lookup less per hit).
        self._l1_get = self.coherence.l1.get

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)  # e.g. ``client`` of the wrapped backend

    def open(self) -> None:
        self.inner.open()
        self.tracker.start()

    def get(self, key: str) -> Entry | None:
        coherence = self.coherence
        if coherence.enabled:
            entry = self._l1_get(key)
            if entry is not None:
                tracker = self.tracker
                if _monotonic() - tracker.last_drain > tracker.DRAIN_EVERY:
                    tracker.drain_nowait()  # invalidations first (see Tracker)
                    entry = self._l1_get(key) if coherence.enabled else None
                if entry is not None:
                    coherence.hits += 1
                    return entry
        token = coherence.begin(key)
        entry = None
        try:
            entry = self.inner.get(key)
        finally:
            coherence.end(key, token, entry)
        return entry

    def write(
        self,
        key: str,
        kind: Kind,
        version: int,
        payload: bytes,
        *,
        ttl: float,
        tombstone_ttl: float,
        token: bytes | None = None,
        lease_ttl: float = 2.0,
        floor: int = 0,
    ) -> WriteOutcome:
        self.coherence.invalidate(key)
        try:
            return self.inner.write(
                key, kind, version, payload, ttl=ttl, tombstone_ttl=tombstone_ttl, token=token,
                lease_ttl=lease_ttl, floor=floor,
            )  # fmt: skip
        finally:
            self.coherence.invalidate(key)

    def lease(
        self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0
    ) -> tuple[LeaseOutcome, Entry | None]:
        self.coherence.invalidate(key)
        try:
            return self.inner.lease(key, token, lease_ttl=lease_ttl, floor=floor)
        finally:
            self.coherence.invalidate(key)

    def fill(self, key: str, token: bytes, entry: Entry, *, ttl: float, floor: int = 0) -> bool:
        self.coherence.invalidate(key)
        try:
            return self.inner.fill(key, token, entry, ttl=ttl, floor=floor)
        finally:
            self.coherence.invalidate(key)

    def renew(self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0) -> bool:
        # A lease is never held in the L1; renewing one changes nothing a reader sees there.
        return self.inner.renew(key, token, lease_ttl=lease_ttl, floor=floor)

    def set(self, key: str, entry: Entry, *, ttl: float) -> None:
        self.coherence.invalidate(key)
        try:
            self.inner.set(key, entry, ttl=ttl)
        finally:
            self.coherence.invalidate(key)

    def delete(self, key: str) -> None:
        self.coherence.invalidate(key)
        try:
            self.inner.delete(key)
        finally:
            self.coherence.invalidate(key)

    # -- batches: the L1 first, the rest in one MGET; writes drop their keys before and after

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        coherence = self.coherence
        out: list[Entry | None] = [None] * len(keys)
        rest = list(range(len(keys)))
        if coherence.enabled:
            tracker = self.tracker
            if _monotonic() - tracker.last_drain > tracker.DRAIN_EVERY:
                tracker.drain_nowait()  # invalidations first (see Tracker)
            if coherence.enabled:
                rest = []
                for i, key in enumerate(keys):
                    entry = self._l1_get(key)
                    if entry is None:
                        rest.append(i)
                    else:
                        coherence.hits += 1
                        out[i] = entry
        if not rest:
            return out
        wanted = [keys[i] for i in rest]
        tokens = [coherence.begin(key) for key in wanted]
        found: list[Entry | None] = [None] * len(wanted)
        try:
            found = self.inner.get_many(wanted)  # type: ignore[attr-defined]
        finally:
            for key, token, entry in zip(wanted, tokens, found, strict=True):
                coherence.end(key, token, entry)
        for i, entry in zip(rest, found, strict=True):
            out[i] = entry
        return out

    def write_many(
        self, writes: Sequence[BatchWrite], *, tombstone_ttl: float, lease_ttl: float = 2.0, floor: int = 0
    ) -> list[WriteOutcome | CacheError]:
        keys = [w[0] for w in writes]
        self._drop(keys)
        try:
            return self.inner.write_many(  # type: ignore[attr-defined,no-any-return]
                writes, tombstone_ttl=tombstone_ttl, lease_ttl=lease_ttl, floor=floor)
        finally:
            self._drop(keys)

    def lease_many(
        self, leases: Sequence[tuple[str, bytes]], *, lease_ttl: float, floor: int = 0
    ) -> list[tuple[LeaseOutcome, Entry | None] | CacheError]:
        keys = [k for k, _ in leases]
        self._drop(keys)
        try:
            return self.inner.lease_many(  # type: ignore[attr-defined,no-any-return]
                leases, lease_ttl=lease_ttl, floor=floor)
        finally:
            self._drop(keys)

    def fill_many(self, fills: Sequence[BatchFill], *, floor: int = 0) -> list[bool | CacheError]:
        keys = [f[0] for f in fills]
        self._drop(keys)
        try:
            return self.inner.fill_many(fills, floor=floor)  # type: ignore[attr-defined,no-any-return]
        finally:
            self._drop(keys)

    def _drop(self, keys: list[str]) -> None:
        for key in keys:
            self.coherence.invalidate(key)

    def close(self) -> None:
        self.tracker.stop()
        self.inner.close()


class AsyncNearCache:
    """The asyncio near cache: the same L1 and tracking thread around an asyncio Redis backend.

    The L1 bookkeeping is a few dict operations under a thread lock (no I/O), so it
    runs inline on the event loop; the tracking connection is a daemon thread.
    """

    # Not forwarded to the wrapped backend (``__getattr__``): batch reads go through
    # ``get_many``, which keeps the L1's bookkeeping.
    get_many_hits = None

    def __init__(
        self,
        inner: AsyncCache,
        connection_factory: Callable[[], Any],
        *,
        max_entries: int = 10_000,
        ttl: float = 60.0,
        prefix: str = DEFAULT_PREFIX,
        on_invalidate: Callable[[str | None], None] | None = None,
    ) -> None:
        self.inner = inner
        self.name = f"near+{inner.name}"
        self.coherence = Coherence(max_entries, ttl, on_invalidate=on_invalidate)
        self.tracker = Tracker(self.coherence, connection_factory, prefix)
        self._l1_get = self.coherence.l1.get

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def open(self) -> None:
        await self.inner.open()
        import asyncio

        await asyncio.to_thread(self.tracker.start)

    async def get(self, key: str) -> Entry | None:
        coherence = self.coherence
        if coherence.enabled:
            entry = self._l1_get(key)
            if entry is not None:
                tracker = self.tracker
                if _monotonic() - tracker.last_drain > tracker.DRAIN_EVERY:
                    tracker.drain_nowait(0)  # non-blocking lock and select: fine on the loop
                    entry = self._l1_get(key) if coherence.enabled else None
                if entry is not None:
                    coherence.hits += 1
                    return entry
        token = coherence.begin(key)
        entry = None
        try:
            entry = await self.inner.get(key)
        finally:
            coherence.end(key, token, entry)
        return entry

    async def write(
        self,
        key: str,
        kind: Kind,
        version: int,
        payload: bytes,
        *,
        ttl: float,
        tombstone_ttl: float,
        token: bytes | None = None,
        lease_ttl: float = 2.0,
        floor: int = 0,
    ) -> WriteOutcome:
        self.coherence.invalidate(key)
        try:
            return await self.inner.write(
                key, kind, version, payload, ttl=ttl, tombstone_ttl=tombstone_ttl, token=token,
                lease_ttl=lease_ttl, floor=floor,
            )  # fmt: skip
        finally:
            self.coherence.invalidate(key)

    async def lease(
        self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0
    ) -> tuple[LeaseOutcome, Entry | None]:
        self.coherence.invalidate(key)
        try:
            return await self.inner.lease(key, token, lease_ttl=lease_ttl, floor=floor)
        finally:
            self.coherence.invalidate(key)

    async def fill(
        self, key: str, token: bytes, entry: Entry, *, ttl: float, floor: int = 0
    ) -> bool:
        self.coherence.invalidate(key)
        try:
            return await self.inner.fill(key, token, entry, ttl=ttl, floor=floor)
        finally:
            self.coherence.invalidate(key)

    async def renew(self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0) -> bool:
        return await self.inner.renew(key, token, lease_ttl=lease_ttl, floor=floor)

    async def set(self, key: str, entry: Entry, *, ttl: float) -> None:
        self.coherence.invalidate(key)
        try:
            await self.inner.set(key, entry, ttl=ttl)
        finally:
            self.coherence.invalidate(key)

    async def delete(self, key: str) -> None:
        self.coherence.invalidate(key)
        try:
            await self.inner.delete(key)
        finally:
            self.coherence.invalidate(key)

    # -- batches: the L1 first, the rest in one MGET; writes drop their keys before and after

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        coherence = self.coherence
        out: list[Entry | None] = [None] * len(keys)
        rest = list(range(len(keys)))
        if coherence.enabled:
            tracker = self.tracker
            if _monotonic() - tracker.last_drain > tracker.DRAIN_EVERY:
                tracker.drain_nowait(0)  # invalidations first (see Tracker)
            if coherence.enabled:
                rest = []
                for i, key in enumerate(keys):
                    entry = self._l1_get(key)
                    if entry is None:
                        rest.append(i)
                    else:
                        coherence.hits += 1
                        out[i] = entry
        if not rest:
            return out
        wanted = [keys[i] for i in rest]
        tokens = [coherence.begin(key) for key in wanted]
        found: list[Entry | None] = [None] * len(wanted)
        try:
            found = await self.inner.get_many(wanted)  # type: ignore[attr-defined]
        finally:
            for key, token, entry in zip(wanted, tokens, found, strict=True):
                coherence.end(key, token, entry)
        for i, entry in zip(rest, found, strict=True):
            out[i] = entry
        return out

    async def write_many(
        self, writes: Sequence[BatchWrite], *, tombstone_ttl: float, lease_ttl: float = 2.0, floor: int = 0
    ) -> list[WriteOutcome | CacheError]:
        keys = [w[0] for w in writes]
        self._drop(keys)
        try:
            return await self.inner.write_many(  # type: ignore[attr-defined,no-any-return]
                writes, tombstone_ttl=tombstone_ttl, lease_ttl=lease_ttl, floor=floor)
        finally:
            self._drop(keys)

    async def lease_many(
        self, leases: Sequence[tuple[str, bytes]], *, lease_ttl: float, floor: int = 0
    ) -> list[tuple[LeaseOutcome, Entry | None] | CacheError]:
        keys = [k for k, _ in leases]
        self._drop(keys)
        try:
            return await self.inner.lease_many(  # type: ignore[attr-defined,no-any-return]
                leases, lease_ttl=lease_ttl, floor=floor)
        finally:
            self._drop(keys)

    async def fill_many(self, fills: Sequence[BatchFill], *, floor: int = 0) -> list[bool | CacheError]:
        keys = [f[0] for f in fills]
        self._drop(keys)
        try:
            return await self.inner.fill_many(fills, floor=floor)  # type: ignore[attr-defined,no-any-return]
        finally:
            self._drop(keys)

    def _drop(self, keys: list[str]) -> None:
        for key in keys:
            self.coherence.invalidate(key)

    async def close(self) -> None:
        import asyncio

        await asyncio.to_thread(self.tracker.stop)
        await self.inner.close()


# -- URLs ---------------------------------------------------------------------------------

NEAR_OPTIONS = ("near", "near_ttl")


def split_near(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``near*`` query options, and those options (empty: no near cache)."""
    import urllib.parse

    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    near = {k: v for k, v in pairs if k in NEAR_OPTIONS}
    if not near:
        return url, {}
    rest = urllib.parse.urlencode([(k, v) for k, v in pairs if k not in NEAR_OPTIONS])
    return (f"{base}?{rest}" if rest else base), near


def near_settings(url: str, near: dict[str, str]) -> tuple[int, float]:
    from ..urls import parse_url

    parsed = parse_url(url, kind="cache", schemes={"redis": "", "rediss": "", "redis+cluster": "",
                                                   "rediss+cluster": "", "memory": ""})  # fmt: skip
    if parsed.scheme not in ("redis", "rediss"):
        raise ConfigError(
            f"near= needs a redis:// or rediss:// cache URL (one server), not {parsed.scheme}://"
        )
    if "near" not in near:
        raise ConfigError("near_ttl= needs near=<entries> too")
    try:
        entries = int(near["near"])
        ttl = float(near.get("near_ttl", "60"))
    except ValueError:
        raise ConfigError(f"near={near.get('near')!r} / near_ttl={near.get('near_ttl')!r} must be numbers") from None
    if entries < 1 or not ttl > 0 or ttl == float("inf"):
        raise ConfigError(f"near must be >= 1 entries and near_ttl > 0 s, got {entries}, {ttl}")
    return entries, ttl


def connection_factory(url: str) -> Callable[[], Any]:
    """A factory of plain redis-py connections (RESP2) to the server of ``url``, for the tracker."""
    import redis

    from ..urls import parse_url

    parsed = parse_url(url, kind="cache", schemes={"redis": "", "rediss": ""})
    host, port = parsed.hosts[0]
    timeout = float(parsed.query.get("socket_timeout", "1") or 1)
    kwargs: dict[str, Any] = {
        "host": host,
        "port": port or 6379,
        "username": parsed.username,
        "password": parsed.password,
        "socket_timeout": max(timeout, 1.0),
        "socket_connect_timeout": max(float(parsed.query.get("socket_connect_timeout", "1")), 1.0),
        "client_name": "writethrough-near",
        # RESP2 on purpose: REDIRECT to itself + SUBSCRIBE __redis__:invalidate gives plain
        # ["message", channel, [keys]] replies (redis-py 8 defaults to RESP3, whose push
        # replies go through redis-py's own handlers instead).
        "protocol": 2,
    }
    cls: Any = redis.Connection
    if parsed.scheme == "rediss":
        cls = redis.SSLConnection
        for name in ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if name in parsed.query:
                kwargs[name] = parsed.query[name]

    def make() -> Any:
        return cls(**kwargs)

    return make
