"""Lazy imports: ``import writethrough`` for the sync API stays small.

Checked in a fresh interpreter (this test process has imported everything already).
The time itself is not asserted (timings are noisy on shared CI machines):
``writethrough bench`` measures it (row "import writethrough").
"""

from __future__ import annotations

import json
import subprocess
import sys

# What the sync API must not drag in at import time.
NOT_IMPORTED = [
    "asyncio",
    "rich",
    "concurrent.futures",
    "writethrough._async.store",
    "writethrough._async.compat",
    "writethrough.tools",
    "writethrough.cli",
    "redis",
    "psycopg",
    "orjson",
    "matplotlib",
]


def _modules_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_import_writethrough_imports_no_asyncio_rich_tools_or_other_store() -> None:
    loaded = _modules_after("import writethrough")
    assert "writethrough._sync.store" in loaded  # the sync store is there...
    assert sorted(m for m in NOT_IMPORTED if m in loaded) == []  # ...and none of these


def test_the_async_store_is_still_reachable_by_its_names() -> None:
    loaded = _modules_after(
        "import writethrough, writethrough.store\n"
        "assert writethrough.AsyncStore is writethrough.store.AsyncStore\n"
        "assert writethrough.AsyncStore.__name__ == 'AsyncStore'"
    )
    assert "asyncio" in loaded and "writethrough._async.store" in loaded


def test_from_writethrough_import_star_works() -> None:
    loaded = _modules_after("from writethrough import *\nassert AsyncStore and Store and open")
    assert "writethrough._async.store" in loaded
