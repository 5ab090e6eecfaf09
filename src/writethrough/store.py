"""The store's public names, in one place.

``Store`` is generated (``_sync/store.py``) from the hand-written ``AsyncStore``
(``_async/store.py``); settings, outcomes and counters are in ``core``.
``AsyncStore`` is imported on first use, so the sync API never imports asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._sync.store import Store
from .core import (
    PROTOCOLS,
    STAT_NAMES,
    STRATEGIES,
    CacheOutcome,
    ProtocolName,
    Settings,
    Stats,
    Strategy,
    Versioned,
    WriteResult,
)

if TYPE_CHECKING:
    from ._async.store import AsyncStore


def __getattr__(name: str) -> Any:
    """``AsyncStore`` on first use: the sync API does not import asyncio."""
    if name == "AsyncStore":
        from ._async.store import AsyncStore

        return AsyncStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROTOCOLS",
    "STAT_NAMES",
    "STRATEGIES",
    "AsyncStore",
    "CacheOutcome",
    "ProtocolName",
    "Settings",
    "Stats",
    "Store",
    "Strategy",
    "Versioned",
    "WriteResult",
]
