"""What the sync and asyncio PostgreSQL sources share: SQL, settings checks, error
mapping. No I/O here."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import PoolClosed, PoolTimeout

from ..checks import check_count, check_identifier
from ..errors import (
    InvalidKeyError,
    SourceConflict,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
)
from ..urls import scrub

Connection = psycopg.Connection[TupleRow]
AsyncConnection = psycopg.AsyncConnection[TupleRow]
DEFAULT_TABLE = "writethrough_items"
TEXT = ("text", "character varying")
EXPECTED_TYPES = {"namespace": TEXT, "key": TEXT, "value": ("bytea",), "version": ("bigint",)}
# SQLSTATE classes meaning "cannot use the server now": connection, authorization, unknown
# database, resources, operator intervention, system error ("" = client-side failure).
_UNREACHABLE = ("", "08", "28", "3D", "53", "57", "58")
OPTIONS = {"table", "pool_min", "pool_max", "connect_timeout", "statement_timeout_ms"}
# libpq parameters passed through from the URL query as they are.
LIBPQ_OPTIONS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "application_name"}
# Every statement also returns the namespace's epoch (see ``epochs``): versions handed
# to the cache are epoch * 10**19 + the row's own. At the bigint maximum the update does
# not happen and nothing is returned: refused with a clear error, never wrapped.
EPOCH_OF = "(SELECT coalesce(max(epoch), 0) FROM writethrough_epochs WHERE namespace IN ('', %(ns)s))"
SQL_READ = (
    "SELECT e.epoch, t.version, t.value FROM (SELECT " + EPOCH_OF + " AS epoch) e "
    "LEFT JOIN {} t ON t.namespace = %(ns)s AND t.key = %(key)s"
)
SQL_UPSERT_ONLY = (
    "INSERT INTO {} AS t (namespace, key, value, version) VALUES (%(ns)s, %(key)s, %(value)s, 1) "
    "ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, "
    "version = t.version + 1 WHERE t.version < 9223372036854775807 RETURNING version"
)
SQL_UPSERT = SQL_UPSERT_ONLY + ", " + EPOCH_OF
SQL_EPOCH = "SELECT " + EPOCH_OF
# Batches (store.get_many / put_many / delete_many): one statement each. The keys go in
# sorted, so two batches lock their rows in the same order (no deadlock between them).
SQL_READ_MANY = (
    "SELECT e.epoch, t.key, t.version, t.value FROM (SELECT " + EPOCH_OF + " AS epoch) e "
    "LEFT JOIN {} t ON t.namespace = %(ns)s AND t.key = ANY(%(keys)s::text[])"
)
SQL_UPSERT_MANY_ONLY = (
    "INSERT INTO {} AS t (namespace, key, value, version) "
    "SELECT %(ns)s, u.k, u.v, 1 FROM unnest(%(keys)s::text[], %(values)s::bytea[]) AS u(k, v) ORDER BY u.k "
    "ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, "
    "version = t.version + 1 WHERE t.version < 9223372036854775807 RETURNING t.key, t.version"
)
SQL_UPSERT_MANY = SQL_UPSERT_MANY_ONLY + ", " + EPOCH_OF
SQL_LOGGED_MANY = (
    "WITH w AS (" + SQL_UPSERT_MANY_ONLY + ") INSERT INTO {} (namespace, key, version, action) "
    "SELECT %(ns)s, w.key, w.version, %(action)s FROM w ORDER BY w.key RETURNING key, version, id, "
    + EPOCH_OF
)
SQL_CREATE = (
    "CREATE TABLE IF NOT EXISTS {} (namespace text NOT NULL, key text NOT NULL, "
    "value bytea, version bigint NOT NULL, PRIMARY KEY (namespace, key))"
)
# The outbox (durability="outbox"): one statement writes the row and logs it, so both
# commit together; claims use the server's clock and SKIP LOCKED, so repairers share rows.
OUTBOX_TABLE = "writethrough_outbox"
SQL_LOGGED = (
    "WITH w AS (" + SQL_UPSERT_ONLY + ") INSERT INTO {} (namespace, key, version, action) "
    "SELECT %(ns)s, %(key)s, version, %(action)s FROM w RETURNING version, id, " + EPOCH_OF
)
SQL_CREATE_OUTBOX = (
    "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, namespace text NOT NULL, "
    "key text NOT NULL, version bigint NOT NULL, action text NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now(), claimed_until timestamptz)"
)
SQL_CLAIM = (
    "UPDATE {0} SET claimed_until = now() + make_interval(secs => %(claim_for)s) WHERE id IN ("
    "SELECT id FROM {0} WHERE namespace = %(ns)s "
    "AND created_at <= now() - make_interval(secs => %(older_than)s) "
    "AND (claimed_until IS NULL OR claimed_until < now()) "
    "ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING id, key, version, action, "
    + EPOCH_OF
)
SQL_BACKLOG = (
    "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM {} "
    "WHERE namespace = %(ns)s AND created_at <= now() - make_interval(secs => %(older_than)s)"
)
SQL_COLUMNS = """
SELECT a.attname, a.atttypid::regtype::text, a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''
FROM pg_attribute a WHERE a.attrelid = to_regclass(%(t)s) AND a.attnum > 0 AND NOT a.attisdropped
"""
SQL_UNIQUE = """
SELECT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = to_regclass(%(t)s) AND i.indisunique
  AND i.indnatts = 2 AND i.indpred IS NULL AND i.indexprs IS NULL
  AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
       WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])) = '{key,namespace}')
"""


def check_key_text(key: str) -> str:
    if "\x00" in key:
        raise InvalidKeyError("PostgreSQL text cannot hold a NUL character; the key has one")
    return key


def validate(table: object, pool_min: object, pool_max: object, connect_timeout: object,
              statement_timeout_ms: object) -> None:
    check_identifier(table, "table name")
    minimum = max(1, pool_min) if isinstance(pool_min, int) else 1
    # connect_timeout 0 would make libpq wait forever; statement_timeout is an int32 of ms
    # on the server (0 = no timeout, PostgreSQL's meaning).
    for name, value, least, most in (("pool_min", pool_min, 0, POOL_MAX),
                                     ("pool_max", pool_max, minimum, POOL_MAX),
                                     ("connect_timeout", connect_timeout, 1, 3600),
                                     ("statement_timeout_ms", statement_timeout_ms, 0, 2**31 - 1)):
        check_count(name, value, least=least, most=most)


POOL_MAX = 1000  # connections per pool; PostgreSQL's default max_connections is 100
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def describe(params: dict[str, Any]) -> str:
    """``user@host:port/dbname`` for messages: never the password."""
    user = f"{params['user']}@" if params.get("user") else ""
    port = f":{params['port']}" if params.get("port") else ""
    return f"{user}{params.get('host') or 'localhost'}{port}/{params.get('dbname', '')}"


def map_error(exc: psycopg.Error, where: str, password: str = "") -> SourceError:
    """The SourceError family for a psycopg (or pool) error, without the password."""
    text = scrub(" ".join(str(exc).split()), password) or type(exc).__name__
    state = exc.sqlstate or ""
    if isinstance(exc, PoolClosed):
        return SourceUnavailable(f"the PostgreSQL source {where} is closed")
    if isinstance(exc, PoolTimeout):
        return SourceUnavailable(f"no PostgreSQL connection to {where} in time: {text}")
    if state in ("57014", "55P03"):  # statement_timeout, lock_timeout
        return SourceTimeout(f"PostgreSQL {where} did not answer in time: {text}")
    # Class 40 (serialization failure, deadlock) and 23 (constraints); SerializationFailure
    # does not subclass TransactionRollback in psycopg, so match on the SQLSTATE class.
    if state[:2] in ("40", "23") or isinstance(exc, psycopg.IntegrityError):
        return SourceConflict(f"PostgreSQL {where} conflict ({state}): {text}")
    if isinstance(exc, psycopg.InterfaceError) or (
        isinstance(exc, psycopg.OperationalError) and state[:2] in _UNREACHABLE
    ):
        return SourceUnavailable(f"cannot reach PostgreSQL {where}: {text}")
    return SourceError(f"PostgreSQL error on {where} ({state or 'client'}): {text}")


