"""Faults at controlled points: per-call pauses and timeouts (some landing later) around a
phase's cache and source, on top of ``tools.faults``' wrappers."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import CacheTimeout, SourceTimeout
from ..faults import FaultyCache, FaultySource

CACHE_WRITES = ("write", "set", "delete")  # a writer's cache call, under either protocol
CACHE_CALLS = (*CACHE_WRITES, "fill")  # ... and a reader's fill


@dataclass(frozen=True, slots=True)
class Jitter:
    """Faults of one operation, per call: a pause of up to ``pause_max`` s (before the call,
    or ``after`` it), or a timeout that with probability ``late`` still lands later."""

    pause: float = 0.0
    pause_max: float = 0.0
    after: bool = False
    timeout: float = 0.0
    late: float = 0.0
    late_max: float = 0.02


class Injector:
    """The ``Jitter`` of each operation of one wrapper, and what it injected (``counts``).

    A late call runs on a timer thread, as a request held on the wire reaches the server
    after its client gave up."""

    def __init__(self, seed: str, error: Callable[[str], Exception]) -> None:
        self.jitter: dict[str, Jitter] = {}
        self.counts: Counter[str] = Counter()
        self._rng, self._error = random.Random(seed), error
        self._lock = threading.Lock()
        self._late: list[threading.Timer] = []

    def set(self, ops: Sequence[str], jitter: Jitter) -> None:
        self.jitter.update(dict.fromkeys(ops, jitter))

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.counts[what] += n

    def drain(self) -> None:
        """Wait until every late call has landed."""
        with self._lock:
            late, self._late = self._late, []
        for timer in late:
            timer.join(5.0)

    def call(self, op: str, do: Callable[[], Any], forward: Callable[[str, Callable[[], Any]], Any]) -> Any:
        j, rng = self.jitter.get(op), self._rng
        if j is None:
            return forward(op, do)
        if j.timeout and rng.random() < j.timeout:
            if j.late and rng.random() < j.late:
                self._land_later(rng.uniform(0.0, j.late_max), do)
                self.count(f"{op} timeouts landing late")
            self.count(f"{op} timeouts")
            raise self._error(f"chaos: {op} timed out (injected)")
        if not (j.pause and rng.random() < j.pause):
            return forward(op, do)
        self.count(f"{op} pauses")
        pause = rng.uniform(0.0, j.pause_max)
        if not j.after:
            time.sleep(pause)
        result = forward(op, do)
        if j.after:  # the call was done; its caller is slow to use the result
            time.sleep(pause)
        return result

    def _land_later(self, delay: float, do: Callable[[], Any]) -> None:
        def land() -> None:
            try:
                do()
            except Exception:
                self.count("late calls failed")

        timer = threading.Timer(delay, land)
        timer.daemon = True
        timer.start()
        with self._lock:
            if len(self._late) > 256:
                self._late = [t for t in self._late if t.is_alive()]
            self._late.append(timer)


class ChaosCache(FaultyCache):
    """``FaultyCache`` plus per-call ``Jitter``, shared by a phase's stores (close: no-op)."""

    def __init__(self, inner: Any, seed: str) -> None:
        super().__init__(inner)
        self.faults = Injector(seed, CacheTimeout)

    def open(self) -> None:
        self.inner.open()

    def call(self, op: str, do: Callable[[], Any]) -> Any:
        return self.faults.call(op, do, super().call)

    def close(self) -> None:
        """The phase closes the real cache once its stores are closed."""


class ChaosSource(FaultySource):
    """``FaultySource`` plus per-call ``Jitter``; forwards the outbox if the source has one."""

    def __init__(self, inner: Any, seed: str) -> None:
        super().__init__(inner)
        self.faults = Injector(seed, SourceTimeout)
        if hasattr(inner, "write_logged"):  # what durability="outbox" looks for
            for name in ("write_logged", "delete_logged", "outbox_claim", "outbox_done"):
                setattr(self, name, getattr(inner, name))

    def open(self) -> None:
        self.inner.open()

    def call(self, op: str, do: Callable[[], Any]) -> Any:
        return self.faults.call(op, do, super().call)

    def close(self) -> None:
        """The phase closes the real source once its stores are closed."""
