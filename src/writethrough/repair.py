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
    then one caller at a time may probe (half-open); a success closes it, a failure
    opens it again. A probe always ends: a caller that got one and has no verdict
    calls :meth:`release`, and a probe that reported nothing within ``reset_after``
    (a cancelled task, a caller that forgot) is given to the next caller.

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
        self._probe_until: float | None = None  # a probe is out until then
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
            now = self.clock()
            if self._state is BreakerState.OPEN and now >= self._open_until:
                self._state = BreakerState.HALF_OPEN
                self._probe_until = None
            if self._state is BreakerState.HALF_OPEN and (
                self._probe_until is None or now >= self._probe_until
            ):
                self._probe_until = now + self.reset_after
                return True
            return self._state is BreakerState.CLOSED

    def release(self) -> None:
        """A probe ended without a verdict (nothing was sent): let the next caller probe."""
        if self._state is BreakerState.HALF_OPEN:
            with self._lock:
                self._probe_until = None

    def success(self) -> None:
        if self._state is BreakerState.CLOSED and self._failures == 0:
            return
        with self._lock:
            self._failures = 0
            self._probe_until = None
            self._state = BreakerState.CLOSED
            self.closed = True

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probe_until = None
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
                if self._state is not BreakerState.OPEN:
                    self.opened += 1
                self._state = BreakerState.OPEN
                self.closed = False
                self._open_until = self.clock() + self.reset_after


@dataclass(frozen=True, slots=True)
class Repair:
    """A cache write that did not get through: apply it later, conditionally.

    Always a tombstone (small, and always safe: the next reader fills from the
    database). ``verify``: the database write itself may or may not have committed
    (its reply was lost), so the repair first reads the key's version from the
    database and tombstones at that.
    """

    key: str  # the user's key
    version: int
    recorded_at: float
    outbox_ids: tuple[int, ...] = ()  # outbox rows this repair settles (durability="outbox")
    verify: bool = False


class RepairLog:
    """Pending cache repairs in this process, newest version per key, at most ``capacity``.

    While a key is in ``pending``, this process reads it from the database
    (read-your-writes), and the repair worker tries to apply it. Repairs of writes
    whose outcome is unknown (``verify``: the caller got an error, so no
    read-your-writes is owed) wait in ``unsure``. Past ``capacity`` keys the oldest
    repair is dropped (``dropped``): that key is then stale for other processes
    until its TTL, as without a repair.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.pending: dict[str, Repair] = {}
        self.unsure: dict[str, Repair] = {}
        self.capacity = capacity
        self._lock = threading.Lock()
        self.recorded = 0
        self.applied = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.pending) + len(self.unsure)

    def __contains__(self, key: object) -> bool:
        return key in self.pending or key in self.unsure

    def record(self, repair: Repair) -> None:
        with self._lock:
            where = self.unsure if repair.verify else self.pending
            old = where.pop(repair.key, None)
            if old is None:
                where[repair.key] = repair
            else:  # one repair per key and kind: the newest version
                newest = repair if repair.version >= old.version else old
                where[repair.key] = dataclasses.replace(
                    newest,
                    outbox_ids=old.outbox_ids + repair.outbox_ids,
                    recorded_at=min(old.recorded_at, repair.recorded_at),
                )
            self.recorded += 1
            while len(where) > self.capacity:
                del where[next(iter(where))]
                self.dropped += 1

    def settled(self, key: str, version: int) -> Repair | None:
        """The cache now holds ``version`` (or newer) for ``key``: drop older repairs.

        Returns the dropped repair, if any. An unsure repair is settled only by
        :meth:`done` (the database may hold a version nobody reported).
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

    def done(self, repair: Repair) -> bool:
        """``repair`` was applied: drop it unless a newer one was recorded meanwhile."""
        where = self.unsure if repair.verify else self.pending
        with self._lock:
            if where.get(repair.key) is repair:
                del where[repair.key]
                self.applied += 1
                return True
            return False

    def oldest_age(self, now: float) -> float:
        """Seconds since the oldest pending repair was recorded (0 when none)."""
        with self._lock:
            ages = [now - r.recorded_at for r in (*self.pending.values(), *self.unsure.values())]
        return max(ages, default=0.0)

    def snapshot(self) -> list[Repair]:
        with self._lock:
            return sorted((*self.pending.values(), *self.unsure.values()),
                          key=lambda r: r.recorded_at)
