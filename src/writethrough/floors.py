"""Read floors: monotonic reads per process, in bounded memory. No I/O.

A read that went to the database (lease busy, cache down, pending repair) may see a
version the cache does not hold yet; returning the cached one next would go back in
time for this process. So such a read leaves a *floor* for its key, and a hit below
it reads the database again until the cache catches up.

A floor is forgotten only when it can no longer matter:

* the cache caught up (a hit at or above it);
* ``keep_for`` seconds passed (the value TTL, at least the lease TTL): every entry
  older than the floor that existed when it was set has expired by then, and no new
  one can appear -- fills read the database after taking their lease, writes of
  older versions land within their write budget, repairs are tombstones;
* it was pushed to the cache as a tombstone of its version (when more than
  ``capacity`` keys hold floors): the cache itself then serves nothing older, to
  anyone. Only if that push fails too (the cache is down) is a floor dropped,
  counted in ``stats.floors_dropped``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any


class ReadFloors:
    """``key -> (version, set_at)``, oldest first; safe between threads under ``guard``."""

    def __init__(
        self,
        capacity: int,
        keep_for: float,
        clock: Callable[[], float],
        guard: AbstractContextManager[Any],
    ) -> None:
        self.capacity = capacity
        self.keep_for = keep_for
        self.clock = clock
        self.floors: dict[str, tuple[int, float]] = {}
        self._guard = guard

    def __contains__(self, key: object) -> bool:
        return key in self.floors

    def __len__(self) -> int:
        return len(self.floors)

    def version(self, key: str) -> int:
        found = self.floors.get(key)
        return 0 if found is None else found[0]

    def below(self, key: str, version: int) -> bool:
        """Is ``version`` (a hit) below the key's floor? A hit at or above it lifts it."""
        with self._guard:  # check-then-act: atomic between threads
            found = self.floors.get(key)
            if found is None:
                return False
            if version < found[0]:
                return True
            del self.floors[key]  # the cache caught up
            return False

    def raise_to(self, key: str, version: int) -> list[tuple[str, int]]:
        """Record a database read of ``version``. Returns the floors that must leave to
        stay within ``capacity`` and have not expired: push them to the cache."""
        now = self.clock()
        evicted: list[tuple[str, int]] = []
        with self._guard:
            found = self.floors.pop(key, None)
            if found is not None and found[0] >= version:
                self.floors[key] = (found[0], now)
                return evicted
            self.floors[key] = (version, now)
            while len(self.floors) > self.capacity:
                oldest = next(iter(self.floors))
                old_version, set_at = self.floors.pop(oldest)
                if now - set_at < self.keep_for:
                    evicted.append((oldest, old_version))
        return evicted

    def expire(self) -> int:
        """Forget floors older than ``keep_for``; returns how many."""
        cutoff = self.clock() - self.keep_for
        dropped = 0
        with self._guard:
            while self.floors:
                oldest = next(iter(self.floors))
                if self.floors[oldest][1] > cutoff:
                    break
                del self.floors[oldest]
                dropped += 1
        return dropped
