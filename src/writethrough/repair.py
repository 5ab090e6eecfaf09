"""The failure ladder's parts: retry policy, circuit breaker, repair log, repair worker.

Small objects with the clock passed in, so tests can run them on simulated time.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .checks import check_count, check_seconds
from .protocol import Kind


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff, all inside the write budget.

        >>> RetryPolicy(retries=2, base=0.002, cap=0.02).backoff(1)
        0.002
    """

    retries: int = 2
    base: float = 0.002
    cap: float = 0.02

    def __post_init__(self) -> None:
        check_count("RetryPolicy.retries", self.retries, least=0, most=100)
        check_seconds("RetryPolicy.base", self.base, allow_zero=True)
        check_seconds("RetryPolicy.cap", self.cap, allow_zero=True)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return float(min(self.cap, self.base * (2 ** (attempt - 1))))


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops paying a timeout on every call while the cache is down.

    After ``threshold`` consecutive failures it opens for ``reset_after`` seconds;
    then one caller at a time may probe (half-open); a success closes it.

        >>> breaker = CircuitBreaker(threshold=3, reset_after=1.0)
        >>> breaker.allow()
        True
    """

    def __init__(
        self,
        threshold: int = 5,
        reset_after: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.reset_after = reset_after
        self.clock = clock
        self.opened = 0  # how many times it opened
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._state = BreakerState.CLOSED
        self.closed = True  # a plain attribute: read on every cache call
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        return self._state


    def allow(self) -> bool:
        """May a call go to the cache now?"""
        if self._state is BreakerState.CLOSED:
            return True
        with self._lock:
            if self._state is BreakerState.OPEN and self.clock() >= self._open_until:
                self._state = BreakerState.HALF_OPEN
                self._probing = False
            if self._state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return self._state is BreakerState.CLOSED

    def success(self) -> None:
        if self._state is BreakerState.CLOSED and self._failures == 0:
            return
        with self._lock:
            self._failures = 0
            self._probing = False
            self._state = BreakerState.CLOSED
            self.closed = True

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
                if self._state is not BreakerState.OPEN:
                    self.opened += 1
                self._state = BreakerState.OPEN
                self.closed = False
                self._open_until = self.clock() + self.reset_after


@dataclass(frozen=True, slots=True)
class Repair:
    """A cache write that did not get through: apply it later, conditionally."""

    key: str  # the user's key
    kind: Kind
    version: int
    payload: bytes
    recorded_at: float
    outbox_ids: tuple[int, ...] = ()  # outbox rows this repair settles (durability="outbox")


class RepairLog:
    """Pending cache repairs in this process, newest version per key.

    While a key is here, this process reads it from the database
    (read-your-writes), and the repair worker tries to apply it.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Repair] = {}
        self._lock = threading.Lock()
        self.recorded = 0
        self.applied = 0

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, key: object) -> bool:
        return key in self.pending

    def record(self, repair: Repair) -> None:
        with self._lock:
            old = self.pending.get(repair.key)
            if old is None or old.version < repair.version:
                ids = repair.outbox_ids + (old.outbox_ids if old is not None else ())
                self.pending[repair.key] = dataclasses.replace(repair, outbox_ids=ids)
            else:  # an older failure: the newer repair settles its outbox row too
                ids = old.outbox_ids + repair.outbox_ids
                self.pending[repair.key] = dataclasses.replace(old, outbox_ids=ids)
            self.recorded += 1

    def settled(self, key: str, version: int) -> Repair | None:
        """The cache now holds ``version`` (or newer) for ``key``: drop older repairs.

        Returns the dropped repair, if any.
        """
        if key not in self.pending:
            return None
        with self._lock:
            old = self.pending.get(key)
            if old is not None and old.version <= version:
                del self.pending[key]
                self.applied += 1
                return old
            return None

    def snapshot(self) -> list[Repair]:
        with self._lock:
            return sorted(self.pending.values(), key=lambda r: r.recorded_at)
