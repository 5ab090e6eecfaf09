"""Fault injection at controlled points: wrappers around a real cache or source.

``FaultyCache`` / ``FaultySource`` forward every call to the real backend, but can
fail it (raising the mapped error the real backend would raise) or pause it on a
``threading.Event`` so a test can force an exact interleaving of two threads.

    cache = FaultyCache(MemoryCache())
    cache.fail("write", CacheTimeout("injected"))      # every write times out
    cache.heal()                                        # back to normal
    gate = cache.pause("fill")                          # next fill blocks ...
    gate.release()                                      # ... until released
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..protocol import Entry, Kind, LeaseOutcome, WriteOutcome
from ..sources.base import Row


def times(n: int, error: BaseException) -> Callable[[], BaseException | None]:
    """A fault schedule for ``fail``: ``error`` for the next ``n`` calls, then none."""
    left = [n]

    def make() -> BaseException | None:
        left[0] -= 1
        return error if left[0] >= 0 else None

    return make


def every(n: int, error: BaseException) -> Callable[[], BaseException | None]:
    """A fault schedule for ``fail``: ``error`` on every ``n``-th call (never two in a row)."""
    count = [0]

    def make() -> BaseException | None:
        count[0] += 1
        return error if count[0] % n == 0 else None

    return make


class Gate:
    """Blocks the next call of one operation until released; tells when it was reached."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()
        self.timeout = timeout

    def wait_reached(self, timeout: float = 10.0) -> bool:
        return self.reached.wait(timeout)

    def release(self) -> None:
        self._open.set()

    def block(self) -> None:
        self.reached.set()
        if not self._open.wait(self.timeout):
            raise TimeoutError("gate was never released")


class _Faults:
    """Per-operation failures and one-shot gates, shared by both wrappers."""

    def __init__(self) -> None:
        self._errors: dict[str, Callable[[], BaseException | None]] = {}
        self._gates: dict[str, list[tuple[Gate, bool]]] = {}
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def fail(self, op: str, error: BaseException | Callable[[], BaseException | None]) -> None:
        """Make every call of ``op`` raise ``error`` (or what the callable returns)."""
        self._errors[op] = error if callable(error) else (lambda: error)

    def heal(self, op: str | None = None) -> None:
        if op is None:
            self._errors.clear()
        else:
            self._errors.pop(op, None)

    def pause(self, op: str, *, after: bool = False) -> Gate:
        """The next call of ``op`` blocks before (or after) reaching the backend."""
        gate = Gate()
        with self._lock:
            self._gates.setdefault(op, []).append((gate, after))
        return gate

    def call(self, op: str, do: Callable[[], Any]) -> Any:
        with self._lock:
            self.calls[op] = self.calls.get(op, 0) + 1
            queued = self._gates.get(op)
            gate, after = queued.pop(0) if queued else (None, False)
        if gate is not None and not after:
            gate.block()
        make_error = self._errors.get(op)
        if make_error is not None:
            error = make_error()
            if error is not None:
                raise error
        result = do()
        if gate is not None and after:
            gate.block()
        return result


class FaultyCache(_Faults):
    """A cache wrapper with injectable failures and pauses (ops: get, write, lease, fill, set, delete;
    a pipeline of writes or fills is one "write" or "fill")."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.name = f"faulty-{inner.name}"
        if hasattr(inner, "write_many"):  # the pipelined forms, faulted as one call each
            self.write_many = self._write_many
            self.fill_many = self._fill_many

    def _write_many(self, writes: Any, **kwargs: Any) -> Any:
        return self.call("write", lambda: self.inner.write_many(writes, **kwargs))

    def _fill_many(self, fills: Any, **kwargs: Any) -> Any:
        return self.call("fill", lambda: self.inner.fill_many(fills, **kwargs))

    def get(self, key: str) -> Entry | None:
        result: Entry | None = self.call("get", lambda: self.inner.get(key))
        return result

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
        result: WriteOutcome = self.call(
            "write",
            lambda: self.inner.write(key, kind, version, payload, ttl=ttl, tombstone_ttl=tombstone_ttl,
                                     token=token, lease_ttl=lease_ttl, floor=floor),
        )
        return result

    def lease(
        self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0
    ) -> tuple[LeaseOutcome, Entry | None]:
        result: tuple[LeaseOutcome, Entry | None] = self.call(
            "lease", lambda: self.inner.lease(key, token, lease_ttl=lease_ttl, floor=floor)
        )
        return result

    def fill(self, key: str, token: bytes, entry: Entry, *, ttl: float, floor: int = 0) -> bool:
        return bool(self.call("fill", lambda: self.inner.fill(key, token, entry, ttl=ttl, floor=floor)))

    def renew(self, key: str, token: bytes, *, lease_ttl: float, floor: int = 0) -> bool:
        return bool(self.call("renew", lambda: self.inner.renew(key, token, lease_ttl=lease_ttl, floor=floor)))

    def set(self, key: str, entry: Entry, *, ttl: float) -> None:
        self.call("set", lambda: self.inner.set(key, entry, ttl=ttl))

    def delete(self, key: str) -> None:
        self.call("delete", lambda: self.inner.delete(key))

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()


class FaultySource(_Faults):
    """A source wrapper with injectable failures and pauses (ops: read, write, delete)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.name = f"faulty-{inner.name}"

    def read(self, key: str) -> Row:
        row: Row = self.call("read", lambda: self.inner.read(key))
        return row

    def write(self, key: str, payload: bytes) -> int:
        return int(self.call("write", lambda: self.inner.write(key, payload)))

    def delete(self, key: str) -> int:
        return int(self.call("delete", lambda: self.inner.delete(key)))

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()
