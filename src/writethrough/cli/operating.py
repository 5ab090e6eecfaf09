"""What the long-running commands (``listen``, ``repair``) share: the metrics endpoint,
structured logging and the periodic status line."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..observe.status import Fields, StatusLogger, configure_logging

log = logging.getLogger("writethrough.status")


@contextmanager
def operating(args: argparse.Namespace, register: Callable[[Any], None],
              fields: Callable[[], Fields]) -> Iterator[None]:
    """Logging configured, ``/metrics`` served if asked (``register(collector)`` adds the
    command's store or listener), a status line every ``--status-interval`` seconds and
    one more at the end."""
    configure_logging(args.log_format)
    server = None
    if args.metrics_port is not None:
        from ..observe.metrics import collector, serve

        register(collector())
        server = serve(args.metrics_port, args.metrics_addr)
        host = args.metrics_addr if args.metrics_addr not in ("", "0.0.0.0", "::") else "127.0.0.1"
        log.info("metrics on http://%s:%d/metrics", host, server.server_port,
                 extra={"status": {"metrics_port": server.server_port}})
    try:
        with StatusLogger(fields, args.status_interval):
            yield
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
