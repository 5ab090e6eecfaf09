"""``settings.WRITETHROUGH``: which models are cached and how; their stores, opened lazily."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

_lock = threading.Lock()
_models: dict[type, ModelCache] | None = None
_KEYS = {"CACHE", "SOURCE", "OPTIONS", "MODELS"}
_MODEL_KEYS = {"namespace", "columns", "value_column", "version", "using", "source", "cache"}


@dataclass
class ModelCache:
    """One cached model: its table spec, store options, and the store once opened."""

    model: type
    table: Any  # writethrough.Table
    namespace: str
    source: str
    cache: str
    options: dict[str, Any]
    using: str
    store: Any = None
    select_columns: tuple[str, ...] = field(default=())

    def open(self) -> Any:
        if self.store is None:
            with _lock:
                if self.store is None:
                    import writethrough

                    self.store = writethrough.open(self.source, self.cache, table=self.table,
                                                   namespace=self.namespace, **self.options)
        return self.store


def models() -> dict[type, ModelCache]:
    """The cached models from ``settings.WRITETHROUGH`` (read once)."""
    global _models
    if _models is None:
        with _lock:
            if _models is None:
                _models = _read_settings()
    return _models


def reset() -> None:
    """Close the stores and forget the settings (tests, ``setting_changed``)."""
    global _models
    with _lock:
        found, _models = _models, None
    for entry in (found or {}).values():
        if entry.store is not None:
            entry.store.close()


def store_for(model: type) -> Any:
    """The store of a cached model (opened on first use)."""
    entry = models().get(model)
    if entry is None:
        raise ConfigError(f"{model.__name__} is not in settings.WRITETHROUGH['MODELS']")
    return entry.open()


def get(model: type, pk: Any) -> Any:
    """The cached row of ``model`` with primary key ``pk`` as a dict, or None."""
    return store_for(model).get(str(pk))


def _read_settings() -> dict[type, ModelCache]:
    from django.apps import apps
    from django.conf import settings

    import writethrough

    conf = getattr(settings, "WRITETHROUGH", None)
    if not isinstance(conf, dict):
        raise ConfigError("settings.WRITETHROUGH must be a dict (see writethrough.django)")
    unknown = set(conf) - _KEYS
    if unknown:
        raise ConfigError(f"unknown WRITETHROUGH setting(s) {sorted(unknown)}")
    options = dict(conf.get("OPTIONS") or {})
    found: dict[type, ModelCache] = {}
    for label, spec in (conf.get("MODELS") or {}).items():
        spec = dict(spec or {})
        if set(spec) - _MODEL_KEYS:
            raise ConfigError(f"WRITETHROUGH['MODELS'][{label!r}]: unknown "
                              f"{sorted(set(spec) - _MODEL_KEYS)}")
        try:
            model = apps.get_model(label)
        except (LookupError, ValueError) as exc:
            raise ConfigError(f"WRITETHROUGH['MODELS']: no model {label!r}") from exc
        meta = model._meta
        using = spec.pop("using", "default")
        columns = spec.pop("columns", None)
        table = writethrough.Table(
            meta.db_table, key=meta.pk.column, version=spec.pop("version", "version"),
            columns=tuple(columns) if columns is not None else None,
            value_column=spec.pop("value_column", None))
        model_options = {**options, **{k: spec.pop(k) for k in list(spec)
                                      if k not in ("namespace", "source", "cache")}}
        found[model] = ModelCache(
            model=model, table=table, namespace=spec.get("namespace") or meta.db_table,
            source=spec.get("source") or conf.get("SOURCE") or database_url(using),
            cache=spec.get("cache") or conf.get("CACHE") or "memory://",
            options=model_options, using=using)
    return found


def database_url(using: str = "default") -> str:
    """A source URL for Django's database ``using`` (PostgreSQL or SQLite)."""
    from urllib.parse import quote

    from django.db import connections

    db = connections[using].settings_dict
    engine = db["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if engine.endswith("postgresql"):
        user = quote(db.get("USER") or "", safe="")
        password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
        host = db.get("HOST") or "localhost"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        auth = f"{user}{password}@" if user else ""
        return f"postgresql://{auth}{host}{port}/{db['NAME']}"
    raise ConfigError(f"writethrough.django supports PostgreSQL and SQLite, not {engine}")


def install_sqlite_version_trigger(table: str, key: str = "id", version: str = "version",
                                   using: str = "default") -> None:
    """On SQLite, bump ``version`` in every UPDATE that does not raise it itself (and start
    inserted rows at 1).

    The row's version then changes in the statement's own transaction, as the PostgreSQL
    triggers of ``writethrough install-triggers`` do (without their delete floor: a key
    deleted and inserted again starts at 1, and is read from the table until the delete's
    tombstone expires).
    """
    from django.db import connections

    for name, what in ((table, "table"), (key, "key"), (version, "version")):
        writethrough_table_ident(name, what)
    with connections[using].cursor() as cur:
        cur.execute(
            f'CREATE TRIGGER IF NOT EXISTS "wt_{table}_inserted" AFTER INSERT ON "{table}" '
            f'FOR EACH ROW WHEN NEW."{version}" < 1 BEGIN '
            f'UPDATE "{table}" SET "{version}" = 1 WHERE "{key}" = NEW."{key}"; END')
        cur.execute(
            f'CREATE TRIGGER IF NOT EXISTS "wt_{table}_version" AFTER UPDATE ON "{table}" '
            f'FOR EACH ROW WHEN NEW."{version}" <= OLD."{version}" BEGIN '
            f'UPDATE "{table}" SET "{version}" = OLD."{version}" + 1 '
            f'WHERE "{key}" = NEW."{key}"; END')


def writethrough_table_ident(name: str, what: str) -> None:
    from ..sources.table import _ident

    _ident(name, what)
