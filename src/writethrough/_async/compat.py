"""What differs between the asyncio and the sync shells; the rest is generated.

``_sync/compat.py`` has the same names with threads instead of tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

Semaphore = asyncio.Semaphore
SHARE_READS = True  # concurrent hit-path reads of a key share one cache call (Reads)
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
    Each follower waits on a future of its own (a cancelled follower cancels only
    its own) until its own deadline, kept by one timer per load: a herd of 1,000
    tasks on a key costs one wake-up each when the load ends.
    """

    def __init__(self) -> None:
        # token -> the followers' (deadline, future) in arrival order, each future
        # resolved with (delivered, result)
        self._futures: dict[bytes, list[tuple[float, asyncio.Future[tuple[bool, Any]]]]] = {}
        self._timers: dict[bytes, asyncio.TimerHandle] = {}  # token -> its followers' timer
        self.keys: dict[str, KeyFlight] = {}

    def __len__(self) -> int:
        return len(self._futures) + len(self.keys) + len(self._timers)

    def lead(self, token: bytes) -> None:
        self._futures[token] = []

    def finish(self, token: bytes, result: Any) -> None:
        self._settle(token, (True, result))

    def fail(self, token: bytes) -> None:
        self._settle(token, (False, None))

    def _settle(self, token: bytes, outcome: tuple[bool, Any]) -> None:
        timer = self._timers.pop(token, None)
        if timer is not None:
            timer.cancel()
        for _, waiter in self._futures.pop(token, ()):
            if not waiter.done():  # not cancelled
                waiter.set_result(outcome)

    async def follow(self, token: bytes, timeout: float) -> tuple[bool, Any]:
        """(True, result) if a local leader delivered within ``timeout``, else (False, None)."""
        waiters = self._futures.get(token)
        if waiters is None:
            return False, None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        waiter: asyncio.Future[tuple[bool, Any]] = loop.create_future()
        waiters.append((deadline, waiter))
        if token not in self._timers:
            self._timers[token] = loop.call_at(deadline, self._expire, token)
        return await waiter

    def _expire(self, token: bytes) -> None:
        """The earliest follower's deadline passed: release those whose did; the leader
        still loads for the others (and for followers still to come)."""
        self._timers.pop(token, None)
        waiters = self._futures.get(token)
        if not waiters:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        while waiters and (waiters[0][0] <= now + 0.001 or waiters[0][1].done()):
            _, waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result((False, None))
        if waiters:  # deadlines grow with arrival: the next one is the first left
            self._timers[token] = loop.call_at(waiters[0][0], self._expire, token)

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


class Reads:
    """Concurrent hit-path reads of one key share one cache call.

    The first reader of a key calls the cache; readers that come while its call is in
    flight wait for the *next* call, made once it returns, for all of them: every reader
    gets an answer the cache gave after the reader began (a reply to a call sent before
    it began could predate a write acknowledged in between). At most one call per key is
    in flight; 1,000 tasks missing one cold key make two GETs, not 1,000.

    Calls account for themselves (the store's wrappers count a failure once and answer
    ``failed``, the store's "the cache did not answer": read the database). Waiters get
    ``failed`` without a call when the call before theirs failed (no second timeout in
    an outage), and when their call was cancelled (a shutdown): reading the database is
    always right. The call runs in a context of its own (not the first waiter's).
    """

    def __init__(self, failed: Any) -> None:
        # key -> None (a call in flight, nobody waits for the next) or the next call's
        # waiters and the call to make
        self._keys: dict[str, tuple[list[asyncio.Future[Any]], Callable[[], Coroutine[Any, Any, Any]]] | None] = {}
        self._failed = failed

    def __len__(self) -> int:
        return len(self._keys)

    async def read(self, key: str, call: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """``await call(*args)``, or the answer of the next such call, made for all readers
        of ``key`` that wait for it (its exception, if it raised)."""
        keys = self._keys
        if key not in keys:  # nobody reads it: call now
            keys[key] = None
            result = self._failed
            try:
                result = await call(*args)
                return result
            finally:
                self._next(key, result is self._failed)
        batch = keys[key]
        if batch is None:
            batch = keys[key] = ([], partial(call, *args))
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batch[0].append(waiter)  # its own future: a cancelled reader cancels only it
        return await waiter

    def _next(self, key: str, failed: bool) -> None:
        """The call of ``key`` returned: make the one its waiters wait for, if any (none
        if this one failed: they read the database)."""
        batch = self._keys.pop(key, None)
        if batch is None:
            return
        waiters, call = batch
        if failed:
            _resolve(waiters, self._failed)
            return
        self._keys[key] = None  # in flight from now: later readers wait for the next one
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(
            call(), context=contextvars.Context())
        _background.add(task)
        # A callback, not a finally: it runs even if the task is cancelled before it starts.
        task.add_done_callback(partial(self._done, key, waiters))

    def _done(self, key: str, waiters: list[asyncio.Future[Any]], task: asyncio.Task[Any]) -> None:
        _background.discard(task)
        failed = True
        if task.cancelled():
            _resolve(waiters, self._failed)
        elif (exc := task.exception()) is not None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            result = task.result()
            failed = result is self._failed
            _resolve(waiters, result)
        self._next(key, failed)


def _resolve(waiters: list[asyncio.Future[Any]], result: Any) -> None:
    for waiter in waiters:
        if not waiter.done():  # not cancelled
            waiter.set_result(result)


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
