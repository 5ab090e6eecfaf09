"""Rows measured in fresh interpreters: memory:// bytes per entry, and ``import writethrough``."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from .context import Context
from .model import Measure, Row, median_ratio
from .peers import missing

# RSS growth per entry in a fresh interpreter; keys made during the inserts (they are
# kept by both caches), 30-byte orjson payloads as the store passes them in.
_MEMORY_PROBE = """
import gc, json, sys
import orjson
which, n = sys.argv[1], int(sys.argv[2])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
values = [{"n": "x" * 16, "i": i % 10} for i in range(n)]
assert len(orjson.dumps(values[0])) == 30
prefix = "wt:default:"
accounted = None
if which == "writethrough":
    from writethrough.caches.memory import MemoryCache
    from writethrough.protocol import Entry, Kind
    cache = MemoryCache(max_entries=None, max_bytes=None)
    gc.collect(); before = rss()
    for i, v in enumerate(values):  # a write-through over a cached value, as the store does
        key = prefix + "user:%d" % i
        cache.set(key, Entry.value(1, b""), ttl=300)
        cache.write(key, Kind.VALUE, 2, orjson.dumps(v), ttl=300, tombstone_ttl=30)
    accounted = cache.size_bytes / n
else:
    import cachetools
    cache = cachetools.TTLCache(maxsize=n * 2, ttl=300)
    gc.collect(); before = rss()
    for i, v in enumerate(values):
        cache[prefix + "user:%d" % i] = bytes(memoryview(orjson.dumps(v)))  # exact size
gc.collect()
print(json.dumps({"per_entry": (rss() - before) / n, "accounted": accounted}))
"""

_IMPORT_PROBE = """
import sys, json
import writethrough
print(json.dumps([m for m in ("asyncio", "rich", "writethrough._async.store", "writethrough.tools")
                  if m in sys.modules]))
"""


def _probe(code: str, *args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def memory_per_entry(ctx: Context) -> Row:
    key, goal = "memory_entry", "<= 400 B, max_bytes exact"
    path = "`memory://` bytes per 30-byte entry (RSS)"
    n = ctx.config.n(20_000, 100_000)
    reps = 1 if ctx.config.quick else 3
    ctx.start(path, reps * 2)
    note = missing("cachetools")
    ours: list[float] = []
    theirs: list[float] = []
    accounted: list[float] = []
    for _ in range(reps):
        data = json.loads(_probe(_MEMORY_PROBE, "writethrough", str(n)).stdout)
        ours.append(data["per_entry"])
        accounted.append(data["accounted"])
        ctx.tick()
        if note is None:
            theirs.append(json.loads(_probe(_MEMORY_PROBE, "cachetools", str(n)).stdout)["per_entry"])
        ctx.tick()
    mine = Measure("writethrough MemoryCache", statistics.median(ours), "B/entry",
                   extra={"accounted_bytes_per_entry": statistics.median(accounted)})  # fmt: skip
    if note is None:
        base = Measure("cachetools TTLCache (bytes values)", statistics.median(theirs), "B/entry")
        mine.ratio, spread = median_ratio(ours, theirs)
        mine.ratio_range = spread
    else:
        base = Measure("cachetools TTLCache", note=note)
    detail = (
        f"RSS growth over {n:,} entries in a fresh interpreter, {reps} run(s) each; keys "
        f"'wt:default:user:N' (16-21 bytes), 30-byte orjson payloads. Bytes accounted "
        f"against max_bytes per entry: {mine.extra['accounted_bytes_per_entry']:.1f} "
        "(key + payload + ENTRY_OVERHEAD)."
    )
    met = mine.value is not None and mine.value <= 400
    return Row(key, path, base, [mine], goal, met, detail)


def import_time(ctx: Context) -> Row:
    key, goal, path = "import", "<= 50 ms for the sync API", "`import writethrough`"
    runs = ctx.config.n(5, 21)
    ctx.start(path, runs)
    cumulative: list[float] = []
    loaded: list[str] = []
    for _ in range(runs):
        done = _probe(_IMPORT_PROBE, importtime=True)
        last = [line for line in done.stderr.splitlines() if line.rstrip().endswith("| writethrough")]
        cumulative.append(int(last[-1].split("|")[1]) / 1000)
        loaded = json.loads(done.stdout)
        ctx.tick()
    base = Measure("—", note="no baseline (absolute)")
    # The min is the figure: contention on a shared machine only ever adds to it.
    mine = Measure(
        "writethrough (min of runs)",
        min(cumulative),
        "ms",
        extra={
            "median_ms": statistics.median(cumulative),
            "runs": runs,
            "heavy_modules_loaded": loaded,
        },
    )
    detail = (
        f"`python -X importtime -c 'import writethrough'` cumulative time, {runs} fresh "
        f"interpreters: min {min(cumulative):.1f} ms, median {statistics.median(cumulative):.1f} ms "
        f"(the min is the machine without contention). asyncio/rich/the async store/"
        f"the tools loaded: {loaded or 'none'}."
    )
    met = min(cumulative) <= 50 and not loaded
    return Row(key, path, base, [mine], goal, met, detail)
