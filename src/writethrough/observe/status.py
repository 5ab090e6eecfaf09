"""A periodic status line for long-running commands (``listen``, ``repair``), with the stdlib
``logging``: one record every ``interval`` seconds on the ``writethrough.status`` logger,
its fields both in the message (``key=value``, for grep) and in ``record.status`` (a dict,
for JSON formatters) -- so a kill -9 loses at most one interval of figures.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..capture.listener import BaseListener as Listener
    from ..store import Store

log = logging.getLogger("writethrough.status")
Fields = dict[str, Any]


def logfmt(fields: Fields) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


class StatusLogger:
    """Calls ``fields()`` every ``interval`` seconds and logs them (and once more on stop).

        >>> with StatusLogger(lambda: {"applied": listener.stats.applied}, 30.0):
        ...     listener.run(stop)
    """

    def __init__(self, fields: Callable[[], Fields], interval: float, what: str = "status") -> None:
        self.fields, self.interval, self.what = fields, interval, what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writethrough-status", daemon=True)

    def __enter__(self) -> StatusLogger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.log()

    def log(self) -> None:
        try:
            fields = self.fields()
        except Exception as exc:  # a status line must never stop the command
            log.warning("%s unavailable: %s", self.what, exc)
            return
        log.info("%s %s", self.what, logfmt(fields), extra={"status": fields})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.log()


def listener_fields(listener: Listener) -> Callable[[], Fields]:
    """The listener's counters, lag and backlog, with the event rate since the last line."""
    last = [time.monotonic(), listener.stats.applied]

    def fields() -> Fields:
        now, s, lag = time.monotonic(), listener.stats, listener.lag_percentiles()
        rate = (s.applied - last[1]) / max(now - last[0], 1e-9)
        last[:] = [now, s.applied]
        out: Fields = {"namespaces": ",".join(listener.namespaces), "applied": s.applied,
                       "per_s": round(rate, 1), "values": s.values, "tombstones": s.tombstones,
                       "superseded": s.superseded, "lag_p50_ms": round(lag.p50 * 1000, 1),
                       "lag_p99_ms": round(lag.p99 * 1000, 1), "reconnects": s.reconnects,
                       "cache_errors": s.cache_errors, "source_errors": s.source_errors}
        try:
            backlog = listener.backlog()
        except Exception:
            out["backlog"] = "unknown"
        else:
            out["backlog"], out["backlog_age_s"] = backlog.events, round(backlog.oldest_age, 2)
            if backlog.wal_behind is not None:  # logical capture: the slot's
                out["wal_behind_kb"] = backlog.wal_behind // 1024
                out["wal_kept_kb"] = (backlog.wal_kept or 0) // 1024
        return out

    return fields


def store_fields(store: Store) -> Callable[[], Fields]:
    """A store's repair figures: applied, outbox rows repaired, pending, breaker."""

    def fields() -> Fields:
        stats, pending = store.stats, store.repairs.snapshot()
        age = store.clock() - pending[0].recorded_at if pending else 0.0
        return {"namespace": store.namespace, "repairs_applied": stats.repairs_applied,
                "outbox_repairs": stats.outbox_repairs, "pending": len(pending),
                "oldest_pending_s": round(age, 2), "breaker": store.breaker.state.value,
                "cache_write_failures": stats.cache_write_failures,
                **outbox_fields(store)}

    return fields


def outbox_fields(store: Store) -> Fields:
    """Outbox rows waiting for a repair, once the repair round has counted them."""
    counted = getattr(store, "outbox_backlog", None)
    if counted is None:
        return {}
    return {"outbox_waiting": counted[0], "outbox_oldest_s": round(counted[1], 2)}


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and a status line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: Fields = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                        "logger": record.name, "msg": record.getMessage()}
        status = getattr(record, "status", None)
        if isinstance(status, dict):
            data.update(status)
        return json.dumps(data, default=str)


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Log ``writethrough.*`` to stderr (text or JSON lines), unless the application has
    already configured the ``writethrough`` logger."""
    logger = logging.getLogger("writethrough")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
