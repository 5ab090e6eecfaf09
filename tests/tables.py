"""Helpers for tests over application tables: a fresh table with the version triggers."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from conftest import unique_namespace
from writethrough.events import install_triggers

_n = itertools.count()


class PgTable:
    """A table ``users``-like of our own on the test PostgreSQL, triggers installed."""

    def __init__(self, url: str, columns: str = "name text, balance numeric(12,2)") -> None:
        self.url = url
        self.name = f"t10u_{uuid.uuid4().hex[:10]}_{next(_n)}"
        self.namespace = unique_namespace("tab")
        self.sql(f"CREATE TABLE {{t}} (id bigint PRIMARY KEY, {columns})")
        install_triggers(url, self.name, "id", self.namespace)

    def sql(self, statement: str, params: Any = None) -> list[Any]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement.replace("{t}", self.name), params)
            return cur.fetchall() if cur.description else []

    def version(self, key: int) -> int | None:
        found = self.sql("SELECT version FROM {t} WHERE id = %s", (key,))
        return int(found[0][0]) if found else None

    def drop(self) -> None:
        self.sql("DROP TABLE IF EXISTS {t}")
        if self.sql("SELECT to_regclass('writethrough_namespaces')")[0][0] is not None:
            self.sql("DELETE FROM writethrough_namespaces WHERE namespace = %s",
                     (self.namespace,))


@contextmanager
def pg_table(url: str, columns: str = "name text, balance numeric(12,2)") -> Iterator[PgTable]:
    table = PgTable(url, columns)
    try:
        yield table
    finally:
        table.drop()


def roomy(url: str) -> str:
    """A Redis URL with timeouts that survive a loaded CI machine (not what these tests
    are about; the fault tests set their own)."""
    return f"{url}{'&' if '?' in url else '?'}socket_timeout=0.5&socket_connect_timeout=0.5"
