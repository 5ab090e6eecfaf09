"""Django: cached models kept current after each COMMIT (``post_save`` / ``post_delete`` +
``transaction.on_commit``), configured by one dict in ``settings.py``.

    INSTALLED_APPS = [..., "writethrough.django"]
    WRITETHROUGH = {
        "CACHE": "redis://127.0.0.1:6379/0",
        "OPTIONS": {"strategy": "write-through", "ttl": 300},   # writethrough.open() options
        "MODELS": {
            "accounts.Profile": {"namespace": "profiles", "columns": ["id", "name", "email"]},
        },
    }

    from writethrough.django import store_for
    store_for(Profile).get("42")          # {'id': 42, 'name': ..., 'version': 8}

The model's table needs a version column kept by the database: ``writethrough
install-triggers`` on PostgreSQL, :func:`install_sqlite_version_trigger` on SQLite (a
``version = models.BigIntegerField(default=0)`` field in the model). On each save the
integration reads the row's new version and cached columns in the same transaction (one
``SELECT`` by primary key: Django's UPDATE returns nothing), and ``on_commit`` hands them
to ``store.apply_write``; before a delete it reads (and locks) the row's version, and the
delete's version is that + 1. A rollback -- or a savepoint rolled back -- runs nothing:
Django drops those on_commit callbacks. ``QuerySet.update()`` / ``.delete()`` of many rows
and raw SQL send no per-instance signals: run ``writethrough listen`` on the same namespace.

Each entry has a version, so two transactions whose on_commit callbacks run in the
opposite order of their commits cannot leave the older row in the cache (the race a
plain "cache on save" loses).
"""

from __future__ import annotations

from .conf import get, install_sqlite_version_trigger, store_for

__all__ = ["get", "install_sqlite_version_trigger", "store_for"]
