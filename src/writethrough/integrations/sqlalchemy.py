"""SQLAlchemy 2.x: mapped classes whose rows are cached, kept current after each COMMIT.

    from sqlalchemy import BigInteger, FetchedValue
    from writethrough.integrations.sqlalchemy import Writethrough

    class User(Base):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]
        # kept by the database (writethrough install-triggers): a server-side version counter
        version: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue(),
                                             server_onupdate=FetchedValue())
        __mapper_args__ = {"version_id_col": version, "version_id_generator": False}

    wt = Writethrough()
    wt.cache(User, source="postgresql://app@db/app", cache="redis://cache:6379/0",
             strategy="write-through", ttl=300)      # or wt.cache(User, store=an_open_store)
    wt.listen(Session)                                # every Session (AsyncSession included)

    with Session(engine) as session, session.begin():
        session.get(User, 42).name = "Alice"
    # COMMIT, then the cache step for users/42 with the version the UPDATE returned
    wt.store(User).get("42")      # {'id': 42, 'name': 'Alice', 'version': 8}: the row dict
    wt.get(User, 42)              # a detached User built from the cached row, or None

How: ``after_flush`` records each new, changed and deleted instance of a cached class with
the version SQLAlchemy fetched for it (``version_id_col`` with ``version_id_generator=False``:
the ``UPDATE ... RETURNING version`` of a server-side counter); ``after_commit`` applies them
(``store.apply_write`` / ``apply_delete``); a rollback drops them; a ``begin_nested()``
savepoint that rolls back drops what was flushed inside it. A deleted row's delete
version is its last version + 1 (what the triggers record). With an ``AsyncSession`` the
store is an ``AsyncStore`` (``wt.cache(..., store=await open_async(...))``) and the cache
step is awaited inside the commit (SQLAlchemy's greenlet bridge).

**Not seen here:** bulk ``session.execute(update(User)...)`` / ``delete(User)`` and raw SQL
change rows without instances: run the listener (``writethrough listen``) on the same
namespace; it writes the same entries with the same conditional writes, so both race
safely. Keep ``eager_defaults=True`` on mappers with other server-generated columns, or
reading them after the flush costs a SELECT.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from ..errors import ConfigError
from .pending import Change, Pending, apply_async, apply_sync, key_of, row_value

__all__ = ["Cached", "Writethrough"]

_PENDING = "writethrough.pending"
RESULTS = "writethrough.results"


class Cached:
    """How one mapped class is cached: its store and how to read an instance's row."""

    def __init__(self, cls: type, store: Any) -> None:
        from sqlalchemy import inspect

        mapper: Any = inspect(cls)
        if mapper.version_id_col is None:
            raise ConfigError(
                f"{cls.__name__} needs a version counter kept by the database: "
                "__mapper_args__ = {'version_id_col': version, 'version_id_generator': False}")
        if len(mapper.primary_key) != 1:
            raise ConfigError(f"{cls.__name__}: one primary key column is needed")
        self.cls, self.store, self.mapper = cls, store, mapper
        self.key_attr = mapper.get_property_by_column(mapper.primary_key[0]).key
        self.version_attr = mapper.get_property_by_column(mapper.version_id_col).key
        # column name -> attribute name, for the columns the store caches
        self.attrs = {col.name: mapper.get_property_by_column(col).key
                      for col in mapper.columns if col.table is mapper.local_table}
        self.async_store = hasattr(store, "__aenter__")

    def row(self, obj: Any) -> dict[str, Any]:
        return {name: getattr(obj, attr) for name, attr in self.attrs.items()}

    def change(self, obj: Any, deleted: bool, tags: frozenset[Any]) -> Change:
        version = getattr(obj, self.version_attr)
        key = key_of(getattr(obj, self.key_attr))
        if deleted:
            return Change(self.store, key, int(version), deleted=True, tags=tags)
        return Change(self.store, key, int(version), row_value(self.store, self.row(obj)),
                      tags=tags)

    def instance(self, row: Any) -> Any:
        """A detached instance from a cached row dict (types restored from the columns)."""
        if not isinstance(row, dict):
            raise ConfigError(f"{self.cls.__name__}'s store caches one column, not rows")
        obj = self.mapper.class_manager.new_instance()
        from sqlalchemy.orm.attributes import set_committed_value

        for col in self.mapper.columns:
            if col.name in row and col.name in self.attrs:
                set_committed_value(obj, self.attrs[col.name], _python(col, row[col.name]))
        return obj


class Writethrough:
    """The registry of cached mapped classes, and the session events that keep them."""

    def __init__(self) -> None:
        self.classes: dict[type, Cached] = {}
        self._opened: list[Any] = []
        self._listening: list[Any] = []

    def cache(self, cls: type, store: Any = None, *, source: str | None = None,
              cache: str = "memory://", namespace: str | None = None,
              columns: tuple[str, ...] | None = None, **options: Any) -> Any:
        """Cache ``cls``'s rows: in ``store`` (opened over its table), or in a sync store
        opened here from ``source`` / ``cache`` and ``open()`` options (``strategy``,
        ``ttl``, ...). The namespace defaults to the table's name. Returns the store."""
        if store is None:
            if source is None:
                raise ConfigError("give store= or source= (and cache=)")
            import writethrough

            spec = self.table_of(cls, columns)
            store = writethrough.open(source, cache, table=spec,
                                      namespace=namespace or spec.parts[-1], **options)
            self._opened.append(store)
        self.classes[cls] = Cached(cls, store)
        return store

    @staticmethod
    def table_of(cls: type, columns: tuple[str, ...] | None = None) -> Any:
        """The :class:`writethrough.Table` of a mapped class (key, version, columns)."""
        from sqlalchemy import inspect

        import writethrough

        mapper: Any = inspect(cls)
        table = mapper.local_table
        if mapper.version_id_col is None or len(mapper.primary_key) != 1:
            raise ConfigError(f"{cls.__name__}: one primary key and a version_id_col needed")
        name = f"{table.schema}.{table.name}" if getattr(table, "schema", None) else table.name
        return writethrough.Table(name, key=mapper.primary_key[0].name,
                                  version=mapper.version_id_col.name, columns=columns or tuple(
                                      c.name for c in mapper.columns if c.table is table))

    def record(self, session: Any, cls: type, row: Any) -> None:
        """Record a row changed by a Core statement -- ``update(User)...returning(User)`` or
        ``...returning(*User.__table__.c)`` -- for the cache step after this session's
        COMMIT, like an instance changed through the ORM. ``row``: a mapped instance, a
        ``Row`` or a mapping by column name (with the version the statement returned).
        """
        cached = self._cached(cls)
        session = getattr(session, "sync_session", session)
        if isinstance(row, cls):
            change = cached.change(row, False, _savepoints(session))
        else:
            mapping = dict(getattr(row, "_mapping", row))
            values = {name: mapping[name] if name in mapping else mapping[attr]
                      for name, attr in cached.attrs.items()}
            change = Change(cached.store, key_of(values[cached.mapper.primary_key[0].name]),
                            int(values[cached.mapper.version_id_col.name]),
                            row_value(cached.store, values), tags=_savepoints(session))
        session.info.setdefault(_PENDING, Pending()).add(change)

    def store(self, cls: type) -> Any:
        return self._cached(cls).store

    def get(self, cls: type, key: Any) -> Any:
        """The cached row of ``cls`` as a detached instance, or None (sync stores)."""
        cached = self._cached(cls)
        row = cached.store.get(key_of(key))
        return None if row is None else cached.instance(row)

    async def aget(self, cls: type, key: Any) -> Any:
        """The same through an AsyncStore."""
        cached = self._cached(cls)
        row = await cached.store.get(key_of(key))
        return None if row is None else cached.instance(row)

    def listen(self, target: Any = None) -> None:
        """Keep the cache after each commit of ``target``'s sessions: the ``Session``
        class (default: every session, sync and async), a ``sessionmaker``, or one
        ``Session``."""
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        target = _sync_target(Session if target is None else target)
        for name, fn in (("after_flush", self._after_flush), ("after_commit", self._after_commit),
                         ("after_soft_rollback", self._after_soft_rollback)):
            event.listen(target, name, fn)
        self._listening.append(target)

    def close(self) -> None:
        """Remove the listeners; close the stores opened by :meth:`cache`."""
        from sqlalchemy import event

        for target in self._listening:
            for name, fn in (("after_flush", self._after_flush),
                             ("after_commit", self._after_commit),
                             ("after_soft_rollback", self._after_soft_rollback)):
                if event.contains(target, name, fn):
                    event.remove(target, name, fn)
        self._listening.clear()
        for store in self._opened:
            store.close()
        self._opened.clear()

    # -- events -------------------------------------------------------------------

    def _cached(self, cls: type) -> Cached:
        try:
            return self.classes[cls]
        except KeyError:
            raise ConfigError(f"{cls.__name__} is not cached: wt.cache({cls.__name__}, ...)"
                              ) from None

    def _after_flush(self, session: Any, flush_context: Any) -> None:
        if not self.classes:
            return
        tags = _savepoints(session)
        pending: Pending = session.info.setdefault(_PENDING, Pending())
        for objs, deleted in ((session.new, False), (session.dirty, False),
                              (session.deleted, True)):
            for obj in objs:
                cached = self.classes.get(type(obj))
                if cached is None or (not deleted and objs is session.dirty
                                      and not session.is_modified(obj)):
                    continue
                pending.add(cached.change(obj, deleted, tags))

    def _after_soft_rollback(self, session: Any, previous: Any) -> None:
        pending: Pending | None = session.info.get(_PENDING)
        if pending is not None:
            pending.drop(previous if previous.nested else None)

    def _after_commit(self, session: Any) -> None:
        pending: Pending | None = session.info.get(_PENDING)
        if pending is None or session.in_nested_transaction():
            return
        changes = pending.take()
        if not changes:
            return
        sync = [c for c in changes if not hasattr(c.store, "__aenter__")]
        results = apply_sync(sync)
        rest = [c for c in changes if hasattr(c.store, "__aenter__")]
        if rest:
            from sqlalchemy.util import await_only

            results += await_only(apply_async(rest))
        session.info[RESULTS] = results


def _sync_target(target: Any) -> Any:
    """Session events live on the sync Session behind an AsyncSession."""
    if isinstance(target, type):
        return getattr(target, "sync_session_class", target)
    inner = getattr(target, "sync_session", None)
    return target if inner is None or isinstance(inner, property) else inner


def _savepoints(session: Any) -> frozenset[Any]:
    """The savepoints (begin_nested) open now, innermost first."""
    found = []
    trans = session.get_nested_transaction()
    while trans is not None:
        if trans.nested:
            found.append(trans)
        trans = trans.parent
    return frozenset(found)


def _python(col: Any, value: Any) -> Any:
    """A cached JSON value back to the column's Python type (best effort)."""
    if value is None:
        return None
    try:
        kind = col.type.python_type
    except NotImplementedError:
        return value
    if kind is dt.datetime and isinstance(value, str):
        return dt.datetime.fromisoformat(value)
    if kind is dt.date and isinstance(value, str):
        return dt.date.fromisoformat(value)
    if kind is dt.time and isinstance(value, str):
        return dt.time.fromisoformat(value)
    if kind is Decimal and isinstance(value, int | float):
        return Decimal(str(value))
    if kind is bytes and isinstance(value, str) and value.startswith("\\x"):
        return bytes.fromhex(value[2:])
    if kind is uuid.UUID and isinstance(value, str):
        return uuid.UUID(value)
    return value
