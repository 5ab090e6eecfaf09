"""What differs between the sync and the asyncio shells; the rest is generated.

``_async/compat.py`` has the same names with tasks instead of threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

T = TypeVar("T")

Semaphore = threading.BoundedSemaphore
SHARE_READS = False  # threads call the cache each (see Reads)
sleep = time.sleep


def shielded(result: T) -> T:
    """A sync call cannot be cancelled half-way: nothing to shield."""
    return result


class LeaderGone(Exception):
    """The local reader that held the fill lease failed."""


class _Result:
    """A one-shot result between threads (concurrent.futures.Future without its imports:
    ``concurrent.futures`` pulls in logging and friends, ~4 ms of ``import writethrough``)."""

    __slots__ = ("_done", "_failed", "_value")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._failed = False
        self._value: Any = None

    def set_result(self, value: Any) -> None:
        self._value = value
        self._done.set()

    def set_exception(self) -> None:
        self._failed = True
        self._done.set()

    def result(self, timeout: float) -> tuple[bool, Any]:
        """(True, value) once set in time; (False, None) on timeout or failure."""
        if not self._done.wait(timeout) or self._failed:
            return False, None
        return True, self._value


class Flights:
    """In-process single flight: local readers wait for the lease holder's load.

    Keyed by lease token: a thread that sees a lease of this process in the
    cache waits for its result instead of polling the cache or querying the DB.
    """

    def __init__(self) -> None:
        self._futures: dict[bytes, _Result] = {}
        self.keys: dict[str, KeyFlight] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._futures) + len(self.keys)

    def lead(self, token: bytes) -> None:
        with self._lock:
            self._futures[token] = _Result()

    def finish(self, token: bytes, result: Any) -> None:
        with self._lock:
            future = self._futures.pop(token, None)
        if future is not None:
            future.set_result(result)

    def fail(self, token: bytes) -> None:
        with self._lock:
            future = self._futures.pop(token, None)
        if future is not None:
            future.set_exception()

    def follow(self, token: bytes, timeout: float) -> tuple[bool, Any]:
        """(True, result) if a local leader delivered in time, else (False, None)."""
        future = self._futures.get(token)
        if future is None:
            return False, None
        return future.result(timeout)

    # -- by key: readers of one key that have not looked it up yet --------------------

    def start(self, key: str) -> KeyFlight | None:
        """Become the local leader of ``key``'s lookup; None if there is one already."""
        with self._lock:
            if key in self.keys:
                return None
            flight = self.keys[key] = KeyFlight(key)
        return flight

    def join(self, key: str) -> tuple[KeyFlight, int] | None:
        """The open flight of ``key`` and the observation count at joining, or None."""
        with self._lock:
            flight = self.keys.get(key)
            if flight is None or not flight.open:
                return None
            return flight, flight.seen

    def observe(self, flight: KeyFlight, last: bool = False) -> int:
        """The leader is about to look at the cache or the DB: the number of that look.
        ``last``: its result is the flight's (a DB read); nobody joins after it starts."""
        with self._lock:
            flight.seen += 1
            if last:
                flight.open = False
            return flight.seen

    def end(self, flight: KeyFlight, result: Any) -> None:
        """Deliver ``result`` (None: failed) and close the flight."""
        with self._lock:
            if self.keys.get(flight.key) is flight:
                del self.keys[flight.key]
            flight.open = False
        flight.future.set_result(result)

    def wait(self, flight: KeyFlight, timeout: float) -> Any:
        """The leader's result, or None (failed, or not within ``timeout``)."""
        return flight.future.result(timeout)[1]


class Reads:
    """The asyncio side shares one cache call among concurrent readers of a key; threads
    call the cache each (a lock on every hit would cost more than the herd of threads
    saves: their herd waits on the lease holder's load, see :class:`Flights`)."""

    def __init__(self, failed: Any) -> None:
        self._failed = failed

    def __len__(self) -> int:
        return 0

    def read(self, key: str, call: Callable[..., Any], *args: Any) -> Any:
        return call(*args)


class KeyFlight:
    """One local lookup of a key that other readers of the key wait for."""

    __slots__ = ("future", "key", "open", "seen")

    def __init__(self, key: str) -> None:
        self.key, self.future, self.open, self.seen = key, _Result(), True, 0


class RepairWorker:
    """A daemon thread that calls ``repair_once`` every ``interval`` seconds."""

    def __init__(self, repair_once: Callable[[], Any], interval: float) -> None:
        self.repair_once = repair_once
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="writethrough-repair", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(2.0)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.repair_once()
            except Exception:
                continue  # a worker must not die; the next round retries


def spawn(fn: Callable[[], None]) -> None:
    """Run ``fn()`` in the background (a daemon thread)."""
    threading.Thread(target=fn, name="writethrough-background", daemon=True).start()


def floor_guard() -> AbstractContextManager[Any]:
    """Threads share the store's read floors: check-then-act under a lock."""
    return threading.Lock()
