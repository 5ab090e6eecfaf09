"""Locust users doing "update my profile, then read it", checking every read.

Each user owns one profile id. A read is *stale* when it returns a version older than the
PUT this user just had acknowledged. Counts (and those inside the window when the bench
pauses Redis, PROFILES_PAUSE_AT .. +PROFILES_PAUSE_FOR + 1 s) go to PROFILES_CHECK_FILE.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections import Counter
from typing import Any

from locust import HttpUser, constant, events, task

_ids = itertools.count(1)
KEYS = int(os.environ.get("PROFILES_KEYS", "1000"))
PAUSE_AT = float(os.environ.get("PROFILES_PAUSE_AT", "0") or 0)
PAUSE_FOR = float(os.environ.get("PROFILES_PAUSE_FOR", "0") or 0)
counts: Counter[str] = Counter()


class ProfileUser(HttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.user_id = (next(_ids) - 1) % KEYS + 1

    @task
    def update_then_read(self) -> None:
        put = self.client.put(f"/users/{self.user_id}", json={"name": uuid.uuid4().hex[:12]},
                              name="PUT /users/[id]")
        if put.status_code != 200:
            return
        acked: dict[str, Any] = put.json()
        counts[f"put_{acked.get('cache')}"] += 1
        got = self.client.get(f"/users/{self.user_id}", name="GET /users/[id]")
        if got.status_code != 200:
            return
        now = time.time()
        paused = PAUSE_AT and PAUSE_AT <= now <= PAUSE_AT + PAUSE_FOR + 1.0
        stale = got.json()["version"] < acked["version"]
        counts["checked"] += 1
        counts["stale"] += stale
        if paused:
            counts["checked_in_pause"] += 1
            counts["stale_in_pause"] += stale


@events.quitting.add_listener
def _write_counts(environment: Any, **kwargs: Any) -> None:
    path = os.environ.get("PROFILES_CHECK_FILE")
    if path:
        with open(path, "w") as f:
            json.dump(dict(counts), f)
