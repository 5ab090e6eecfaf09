"""One small hierarchy of errors.

Errors from drivers (sqlite3, redis-py, psycopg) are mapped into these where the
I/O happens, so the store's failure ladder branches on a few families, not on
driver classes.

    WritethroughError
    ├── ConfigError            bad URL, unknown scheme or strategy, ttl <= 0 ...
    │   └── ReadOnlyTableError put()/delete() on a store over your own table
    ├── InvalidKeyError        wrong type, empty, too long          (also TypeError/ValueError)
    ├── InvalidValueError      not serializable, too large           (also TypeError/ValueError)
    ├── InvalidVersionError    a version that is not a database row version (ValueError)
    ├── SourceError            the database failed; nothing was written to the cache
    │   ├── SourceUnavailable  cannot connect / open
    │   ├── SourceTimeout
    │   ├── SourceConflict     serialization failure, constraint violation
    │   └── SourceDataError    a row's value the serializer cannot read
    └── CacheError             the cache failed (the store handles these itself)
        ├── CacheTimeout       ambiguous: the command may have been applied
        ├── CacheUnavailable   connection refused / reset, circuit open
        ├── CacheServerError   the server answered with an error
        └── CacheDataError     an entry in the cache could not be decoded
"""

from __future__ import annotations


class WritethroughError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(WritethroughError, ValueError):
    """A setting or URL is malformed or unsupported."""


class InvalidKeyError(WritethroughError, ValueError):
    """The key is not a non-empty str within the size limit."""


class InvalidValueError(WritethroughError, ValueError):
    """The value cannot be serialized, or is larger than allowed."""


class InvalidVersionError(WritethroughError, ValueError):
    """A version passed to the store is not an int in [1, 2**63 - 1]."""


class SourceError(WritethroughError):
    """The source of truth (database) failed. The cache was not touched."""


class SourceUnavailable(SourceError):
    """The database cannot be reached or opened."""


class SourceTimeout(SourceError):
    """The database did not answer in time."""


class SourceConflict(SourceError):
    """A serialization failure or constraint violation; retrying may succeed."""


class SourceDataError(SourceError):
    """A row holds a value the store's serializer cannot read (written by someone else)."""


class CacheError(WritethroughError):
    """The cache failed. The store turns these into outcomes; callers rarely see them."""


class CacheTimeout(CacheError):
    """No answer in time. Ambiguous: the command may or may not have been applied."""


class CacheUnavailable(CacheError):
    """Connection refused or lost, or the circuit breaker is open."""


class CacheServerError(CacheError):
    """The cache server answered with an error."""


class CacheDataError(CacheError):
    """A cached entry could not be decoded."""


class ReadOnlyTableError(ConfigError):
    """``put``/``delete`` on a store over the application's own table: nothing was written.

    Write the row in your own transaction, then ``store.apply_write(key, version, value)``.
    """
