"""The store's public names, in one place.

``Store`` is generated (``_sync/store.py``) from the hand-written ``AsyncStore``
(``_async/store.py``); settings, outcomes and counters are in ``core``.
"""

from __future__ import annotations

from ._async.store import AsyncStore
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
