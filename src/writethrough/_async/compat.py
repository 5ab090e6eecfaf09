"""What differs between the asyncio and the sync shells; the rest is generated.

``_sync/compat.py`` has the same names with threads instead of tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

T = TypeVar("T")

Semaphore = asyncio.Semaphore
sleep = asyncio.sleep
_background: set[asyncio.Task[Any]] = set()


async def shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end even if the caller is cancelled.

    A put whose caller is cancelled after the DB commit must still update the
    cache or record its repair: a cancelled caller gets CancelledError, the work
    goes on.
    """
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return await asyncio.shield(task)


class LeaderGone(Exception):
    """The local reader that held the fill lease failed or was cancelled."""


class Flights:
    """In-process single flight: local readers await the lease holder's load.

    Keyed by lease token: a reader that sees a lease of this process in the
    cache awaits its result instead of polling the cache or querying the DB.
    """

    def __init__(self) -> None:
        self._futures: dict[bytes, asyncio.Future[Any]] = {}
        self.keys: dict[str, KeyFlight] = {}

    def __len__(self) -> int:
        return len(self._futures) + len(self.keys)

    def lead(self, token: bytes) -> None:
        self._futures[token] = asyncio.get_running_loop().create_future()

    def finish(self, token: bytes, result: Any) -> None:
        future = self._futures.pop(token, None)
        if future is not None and not future.done():
            future.set_result(result)

    def fail(self, token: bytes) -> None:
        future = self._futures.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(LeaderGone())
            future.exception()  # mark retrieved: followers may be none

    async def follow(self, token: bytes, timeout: float) -> tuple[bool, Any]:
        """(True, result) if a local leader delivered in time, else (False, None)."""
        future = self._futures.get(token)
        if future is None:
            return False, None
        return await _wait(future, timeout)

    # -- by key: readers of one key that have not looked it up yet --------------------

    def start(self, key: str) -> KeyFlight | None:
        """Become the local leader of ``key``'s lookup; None if there is one already."""
        if key in self.keys:
            return None
        flight = self.keys[key] = KeyFlight(key, asyncio.get_running_loop().create_future())
        return flight

    def join(self, key: str) -> tuple[KeyFlight, int] | None:
        """The open flight of ``key`` and the observation count at joining, or None."""
        flight = self.keys.get(key)
        if flight is None or not flight.open:
            return None
        return flight, flight.seen

    def observe(self, flight: KeyFlight, last: bool = False) -> int:
        """The leader is about to look at the cache or the DB: the number of that look.
        ``last``: its result is the flight's (a DB read); nobody joins after it starts."""
        flight.seen += 1
        if last:
            flight.open = False
        return flight.seen

    def end(self, flight: KeyFlight, result: Any) -> None:
        """Deliver ``result`` (None: failed) and close the flight."""
        if self.keys.get(flight.key) is flight:
            del self.keys[flight.key]
        flight.open = False
        if not flight.future.done():
            flight.future.set_result(result)

    async def wait(self, flight: KeyFlight, timeout: float) -> Any:
        """The leader's result, or None (failed, or not within ``timeout``)."""
        return (await _wait(flight.future, timeout))[1]


class KeyFlight:
    """One local lookup of a key that other readers of the key wait for."""

    __slots__ = ("future", "key", "open", "seen")

    def __init__(self, key: str, future: asyncio.Future[Any]) -> None:
        self.key, self.future, self.open, self.seen = key, future, True, 0


async def _wait(future: asyncio.Future[Any], timeout: float) -> tuple[bool, Any]:
    try:
        # shield: a cancelled follower must not cancel the leader's future.
        return True, await asyncio.wait_for(asyncio.shield(future), timeout)
    except (LeaderGone, TimeoutError):
        return False, None


class RepairWorker:
    """Calls ``repair_once`` every ``interval`` seconds in a task of the running loop."""

    def __init__(self, repair_once: Callable[[], Awaitable[Any]], interval: float) -> None:
        self.repair_once = repair_once
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="writethrough-repair")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.repair_once()
            except Exception:
                continue  # a worker must not die; the next round retries


def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``fn()`` in the background (a task of the running loop)."""
    task = asyncio.ensure_future(fn())
    _background.add(task)
    task.add_done_callback(_background.discard)


def floor_guard() -> AbstractContextManager[Any]:
    """One event loop thread: the store's read floors need no lock."""
    return nullcontext()
