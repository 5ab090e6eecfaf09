"""post_save / pre_delete / post_delete receivers: read the committed version in the
transaction, apply after COMMIT (``transaction.on_commit``)."""

from __future__ import annotations

from typing import Any

from ..integrations.pending import Change, apply_sync, key_of, row_value
from .conf import ModelCache, models

_DISPATCH = "writethrough.django"
_STASH = "_writethrough_deleted_version"


def connect() -> None:
    from django.core.signals import setting_changed
    from django.db.models.signals import post_delete, post_save, pre_delete

    post_save.connect(on_save, dispatch_uid=f"{_DISPATCH}.save")
    pre_delete.connect(before_delete, dispatch_uid=f"{_DISPATCH}.pre_delete")
    post_delete.connect(on_delete, dispatch_uid=f"{_DISPATCH}.delete")
    setting_changed.connect(_settings_changed, dispatch_uid=f"{_DISPATCH}.settings")


def _settings_changed(setting: str, **kwargs: Any) -> None:
    if setting == "WRITETHROUGH":
        from .conf import reset

        reset()


def on_save(sender: type, instance: Any, using: str, raw: bool = False, **kwargs: Any) -> None:
    entry = models().get(sender)
    if entry is None or raw:
        return
    store = entry.open()
    found = _select(entry, using, instance.pk, lock=False)
    if found is None:  # the row is gone again within this transaction
        return
    version, row = found
    change = Change(store, key_of(instance.pk), version, row_value(store, row))
    _on_commit(change, using)


def before_delete(sender: type, instance: Any, using: str, **kwargs: Any) -> None:
    entry = models().get(sender)
    if entry is None:
        return
    found = _select(entry, using, instance.pk, lock=True)
    setattr(instance, _STASH, None if found is None else found[0])


def on_delete(sender: type, instance: Any, using: str, **kwargs: Any) -> None:
    entry = models().get(sender)
    version = getattr(instance, _STASH, None)
    if entry is None or version is None:
        return
    _on_commit(Change(entry.open(), key_of(instance.pk), version, deleted=True), using)


def _on_commit(change: Change, using: str) -> None:
    from django.db import transaction

    transaction.on_commit(lambda: apply_sync([change]), using=using)


def _select(entry: ModelCache, using: str, pk: Any, *, lock: bool
            ) -> tuple[int, dict[str, Any]] | None:
    """The row's version and cached columns, in the current transaction (one query)."""
    from django.db import connections

    connection = connections[using]
    store = entry.open()
    columns = tuple(dict.fromkeys((entry.table.version, *_columns(store))))
    qn = connection.ops.quote_name
    table = ".".join(qn(p) for p in entry.table.parts)
    statement = (f"SELECT {', '.join(qn(c) for c in columns)} FROM {table} "
                 f"WHERE {qn(entry.table.key)} = %s")
    if lock and connection.features.has_select_for_update:
        statement += " FOR UPDATE"
    with connection.cursor() as cur:
        cur.execute(statement, [pk])
        found = cur.fetchone()
    if found is None:
        return None
    row = dict(zip(columns, found, strict=True))
    return int(row[entry.table.version]), row


def _columns(store: Any) -> tuple[str, ...]:
    table = store.source.table
    return (table.value_column,) if table.value_column is not None else tuple(
        store.source.columns)
