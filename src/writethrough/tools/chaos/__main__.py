"""A killed writer's child process (see ``phase._killed_writers``): its config on stdin."""

from __future__ import annotations

import json
import sys

from .phase import killed_writer

if __name__ == "__main__":
    killed_writer(json.loads(sys.stdin.read()))
