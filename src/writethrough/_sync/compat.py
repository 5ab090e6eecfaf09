"""What differs between the sync and the asyncio shells; the rest is generated.

``_async/compat.py`` has the same names with tasks instead of threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager
from typing import Any, TypeVar

T = TypeVar("T")

Semaphore = threading.BoundedSemaphore
sleep = time.sleep


def shielded(result: T) -> T:
    """A sync call cannot be cancelled half-way: nothing to shield."""
    return result


class LeaderGone(Exception):
    """The local reader that held the fill lease failed."""


class Flights:
    """In-process single flight: local readers wait for the lease holder's load.

    Keyed by lease token: a thread that sees a lease of this process in the
    cache waits for its result instead of polling the cache or querying the DB.
    """

    def __init__(self) -> None:
        self._futures: dict[bytes, Future[Any]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._futures)

    def lead(self, token: bytes) -> None:
        with self._lock:
            self._futures[token] = Future()

    def finish(self, token: bytes, result: Any) -> None:
        with self._lock:
            future = self._futures.pop(token, None)
        if future is not None:
            future.set_result(result)

    def fail(self, token: bytes) -> None:
        with self._lock:
            future = self._futures.pop(token, None)
        if future is not None:
            future.set_exception(LeaderGone())

    def follow(self, token: bytes, timeout: float) -> tuple[bool, Any]:
        """(True, result) if a local leader delivered in time, else (False, None)."""
        future = self._futures.get(token)
        if future is None:
            return False, None
        try:
            return True, future.result(timeout)
        except (LeaderGone, FutureTimeout):
            return False, None


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
