"""The asyncio I/O shells: the hand-written source of the sync ones in ``_sync``."""
