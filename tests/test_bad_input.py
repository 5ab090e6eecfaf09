"""Bad input gets a typed error and changes nothing in the database or the cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import writethrough
from writethrough import ConfigError, InvalidKeyError, InvalidValueError, SourceUnavailable, Store

MakeStore = Callable[..., Store]


def snapshot(store: Store, key: str) -> tuple[Any, Any]:
    return store.source.read(key), store.cache.get(f"wt:{store.namespace}:{key}")


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (42, InvalidKeyError),
        (b"bytes", InvalidKeyError),
        (None, InvalidKeyError),
        ("", InvalidKeyError),
        ("x" * 1025, InvalidKeyError),
        ("é" * 513, InvalidKeyError),  # 1026 UTF-8 bytes
        ("\ud800", InvalidKeyError),  # a lone surrogate cannot be encoded
    ],
)
def test_bad_keys(make_any_store: MakeStore, key: Any, error: type[Exception]) -> None:
    store = make_any_store()
    with pytest.raises(error):
        store.put(key, 1)
    with pytest.raises(error):
        store.get(key)
    with pytest.raises(error):
        store.delete(key)
    assert store.stats.source_writes == 0 and store.stats.cache_writes == 0


def test_the_longest_allowed_key_works(make_any_store: MakeStore) -> None:
    store = make_any_store()
    key = "é" * 512  # exactly 1024 bytes
    store.put(key, 1)
    assert store.get(key) == 1


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, {"nested": object()}, 2**70, b"raw bytes"],
    ids=["object", "set", "nested", "bigint", "bytes"],
)
def test_unserializable_values_change_nothing(make_any_store: MakeStore, value: Any) -> None:
    store = make_any_store()
    store.put("k", "good")
    store.get("k")
    before = snapshot(store, "k")
    with pytest.raises(InvalidValueError):
        store.put("k", value)
    assert snapshot(store, "k") == before
    assert store.get("k") == "good"


def test_oversized_values_change_nothing(make_any_store: MakeStore) -> None:
    store = make_any_store(max_value_bytes=100)
    store.put("k", "small")
    store.get("k")
    before = snapshot(store, "k")
    with pytest.raises(InvalidValueError, match="limit is 100"):
        store.put("k", "x" * 200)
    assert snapshot(store, "k") == before


def test_errors_are_also_builtin_types_for_callers_that_catch_those() -> None:
    assert issubclass(InvalidKeyError, ValueError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(InvalidValueError, writethrough.WritethroughError)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": float("inf")}, "ttl"),
        ({"ttl": "300"}, "ttl"),
        ({"strategy": "write-back"}, "strategy"),
        ({"protocol": "magic"}, "protocol"),
        ({"on_empty": "maybe"}, "on_empty"),
        ({"breaker_threshold": 0}, "breaker_threshold"),
        ({"breaker_reset": 0}, "breaker_reset"),
        ({"namespace": ""}, "namespace"),
        ({"namespace": "a b"}, "namespace"),
        ({"cache": "memcached://x"}, "unknown cache URL scheme"),
        ({"cache": "memory"}, "malformed"),
        ({"cache": "memory://?max_entries=zero"}, "max_entries"),
        ({"cache": "memory://?colour=red"}, "unknown memory cache option"),
        ({"source": "mysql://db"}, "unknown source URL scheme"),
        ({"source": "sqlite://host/x.db"}, "no host"),
        ({"source": 42}, "non-empty string"),
    ],
)
def test_bad_settings_raise_config_errors_before_opening_anything(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    options.setdefault("source", f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ConfigError, match=match):
        writethrough.open(**options)
    assert not (tmp_path / "x.db").exists() or options.get("cache", "memory://").startswith(
        "memory"
    )


def test_a_source_that_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="cannot open"):
        writethrough.open(source=f"sqlite:///{tmp_path}/no/such/dir/x.db")


def test_a_table_with_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "x.db"
    sqlite3.connect(db).execute("CREATE TABLE writethrough_items (id INTEGER)").connection.close()
    with pytest.raises(ConfigError, match="without column"):
        writethrough.open(source=f"sqlite:///{db}")
