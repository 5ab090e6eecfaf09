"""The Quickstart's first command runs on a plain ``pip install -e .``: no Redis or
PostgreSQL driver, nothing optional, is imported by the command line or by compare."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("redis", "psycopg", "psycopg_pool", "sqlalchemy", "django", "prometheus_client",
            "opentelemetry", "matplotlib", "fastapi")


def test_the_cli_and_compare_import_no_optional_driver() -> None:
    code = (
        "import sys, writethrough.cli, writethrough.tools.compare\n"
        f"loaded = [m for m in {OPTIONAL!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
