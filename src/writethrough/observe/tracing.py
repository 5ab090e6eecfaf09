"""OpenTelemetry, through ``opentelemetry-api`` only (``pip install 'writethrough[tracing]'``).

Spans go to whatever SDK the application configured; without one the API's tracer is a
no-op. Nothing here is imported unless tracing is asked for, so an application without
OpenTelemetry pays nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

TRACER_NAME = "writethrough"
INT64_MAX = (1 << 63) - 1


def get_tracer(provider: TracerProvider | None = None) -> Tracer:
    """The ``writethrough`` tracer of ``provider`` (the global tracer provider if None)."""
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigError(
            f"tracing needs opentelemetry-api, which is not installed ({exc.name}); "
            "install it with: pip install 'writethrough[tracing]'"
        ) from exc
    from .. import __version__

    return trace.get_tracer(TRACER_NAME, __version__, tracer_provider=provider)


def version_attribute(version: int) -> int | str:
    """A version as a span attribute: an int, or its text beyond int64 (versions with a DB
    epoch exceed 2**63, and OTLP attributes are int64)."""
    return version if -INT64_MAX <= version <= INT64_MAX else str(version)


_DB_SYSTEMS = {"postgres": "postgresql", "redis+cluster": "redis"}


def db_system(backend_name: str) -> str:
    """OpenTelemetry's ``db.system.name`` for a backend's ``name`` (postgresql, sqlite, redis)."""
    return _DB_SYSTEMS.get(backend_name, backend_name)
