"""Every row of the performance table against its baseline, in one run (issue 13).

    .venv/bin/python benchmarks/bench_all.py [--quick] [--report DIR] [--postgres URL] ...

The same as ``writethrough bench`` (library: ``writethrough.tools.bench``; options:
``writethrough bench --help``). Uses a throwaway redis-server unless ``--redis`` is
given, and ``WRITETHROUGH_POSTGRES_URL`` or ``--postgres`` for the PostgreSQL rows.
"""

from __future__ import annotations

import sys

from writethrough.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
