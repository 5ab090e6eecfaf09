"""The sync I/O shells. ``store.py`` here is generated from ``_async`` by scripts/unasync.py."""
