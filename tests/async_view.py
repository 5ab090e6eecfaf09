"""Drive an AsyncStore from sync test code, so the behaviour suite runs on it too.

``SyncView(obj, loop)`` forwards attribute access; coroutine methods run on an event
loop in a background thread and are waited for. Threads calling through the view
become concurrent tasks on that one loop, as concurrent requests of an asyncio
service would be.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine
from typing import Any

_WRAPPED = {"cache", "source", "inner"}


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class SyncView:
    def __init__(self, inner: Any, loop: LoopThread) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_loop", loop)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in _WRAPPED:
            return SyncView(value, self._loop)
        if inspect.iscoroutinefunction(value):
            loop = self._loop

            def call(*args: Any, **kwargs: Any) -> Any:
                return loop.run(value(*args, **kwargs))

            return call
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)
