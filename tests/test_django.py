"""writethrough.django (issue 10): post_save / post_delete + transaction.on_commit,
configured in settings; commit, rollback, savepoints, a failed cache; and the reordering
race a versionless "cache on save" (django-cacheops' cache_on_save) loses. Real PostgreSQL
(and SQLite) and Redis, with Django's own test tooling."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from tables import roomy
from writethrough.tools.faultproxy import FaultProxy

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
RUN = os.environ.setdefault("WT_DJANGO_RUN", uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def django_env(_postgres_session: Any, _redis_session: Any, tmp_path_factory: Any
               ) -> Iterator[dict[str, Any]]:
    from servers import ServerUnavailable, unavailable

    if isinstance(_postgres_session, ServerUnavailable) or isinstance(_redis_session,
                                                                      ServerUnavailable):
        unavailable(f"Django tests need PostgreSQL and Redis: {_postgres_session} "
                    f"{_redis_session}")
    import django
    from django.conf import settings

    pg = urlsplit(_postgres_session.url)
    lite = tmp_path_factory.mktemp("dj") / "lite.db"
    ns = f"dj{RUN}"
    config = {
        "CACHE": roomy(_redis_session.url),
        "OPTIONS": {"strategy": "write-through", "ttl": 60},
        "MODELS": {"djapp.Profile": {"namespace": f"{ns}pg"},
                   "djapp.LiteProfile": {"namespace": f"{ns}lite", "using": "lite"}},
    }
    if not settings.configured:
        settings.configure(
            DATABASES={
                "default": {"ENGINE": "django.db.backends.postgresql",
                            "NAME": pg.path.lstrip("/"), "USER": pg.username or "",
                            "PASSWORD": pg.password or "", "HOST": pg.hostname,
                            "PORT": pg.port or 5432},
                "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(lite)},
            },
            INSTALLED_APPS=["writethrough.django", "djapp"],
            USE_TZ=True,
            WRITETHROUGH=config,
        )
        django.setup()
    from django.db import connections

    from djapp.models import LiteProfile, Profile
    from writethrough.django import install_sqlite_version_trigger
    from writethrough.django.conf import reset
    from writethrough.events import install_triggers

    with connections["default"].schema_editor() as editor:
        editor.create_model(Profile)
    install_triggers(_postgres_session.url, Profile._meta.db_table, "id", f"{ns}pg")
    with connections["lite"].schema_editor() as editor:
        editor.create_model(LiteProfile)
    install_sqlite_version_trigger(LiteProfile._meta.db_table, using="lite")
    yield {"config": config, "redis": _redis_session, "models": {"default": Profile,
                                                                  "lite": LiteProfile}}
    reset()
    with connections["default"].schema_editor() as editor:
        editor.delete_model(Profile)
    with connections["default"].cursor() as cur:
        cur.execute("DELETE FROM writethrough_namespaces WHERE namespace = %s", [f"{ns}pg"])
    for conn in connections.all():
        conn.close()


@pytest.mark.parametrize("using", ["default", "lite"])
def test_commit_rollback_savepoints_delete(django_env: dict[str, Any], using: str) -> None:
    from django.db import connections, transaction
    from django.test.utils import CaptureQueriesContext

    from writethrough.django import get, store_for

    model = django_env["models"][using]
    store = store_for(model)
    pk = 100 + (using == "lite")
    with transaction.atomic(using=using):
        model(id=pk, name="Ann", balance=Decimal("500.00")).save(using=using)
        assert get(model, pk) is None  # not committed yet: the cache reads the committed table
    version = model.objects.using(using).get(pk=pk).version
    assert get(model, pk) == {"id": pk, "name": "Ann", "balance": 500.0, "version": version}

    with CaptureQueriesContext(connections[using]) as queries, transaction.atomic(using=using):
        profile = model.objects.using(using).get(pk=pk)
        profile.balance = Decimal("400.50")
        profile.save(using=using)
    # SELECT (the app's), UPDATE, the integration's SELECT of version + columns
    assert [q["sql"].split()[0] for q in queries.captured_queries
            if q["sql"].split()[0] in ("SELECT", "UPDATE")] == ["SELECT", "UPDATE", "SELECT"]
    reads = store.stats.source_reads
    version = model.objects.using(using).get(pk=pk).version
    assert get(model, pk) == {"id": pk, "name": "Ann", "balance": 400.5, "version": version}
    assert store.stats.source_reads == reads  # a hit

    with pytest.raises(RuntimeError), transaction.atomic(using=using):
        model.objects.using(using).filter(pk=pk).get().save(using=using)
        raise RuntimeError  # rolled back: nothing applied
    assert get(model, pk)["version"] == version

    with transaction.atomic(using=using):
        profile = model.objects.using(using).get(pk=pk)
        profile.name = "Kept"
        profile.save(using=using)  # version 3
        with pytest.raises(RuntimeError), transaction.atomic(using=using):
            profile.name = "Dropped"
            profile.save(using=using)  # version 4, rolled back with its savepoint
            raise RuntimeError
        with transaction.atomic(using=using):
            profile.name = "Inner"
            profile.save(using=using)  # version 4 again, savepoint released
    version = model.objects.using(using).get(pk=pk).version
    assert get(model, pk) == {"id": pk, "name": "Inner", "balance": 400.5, "version": version}

    model.objects.using(using).get(pk=pk).delete()
    assert get(model, pk) is None
    assert store.get_versioned(str(pk)) is None


def test_failed_cache_pending_repair(django_env: dict[str, Any]) -> None:
    from django.db import transaction
    from django.test import override_settings

    from writethrough.django import get, store_for

    model = django_env["models"]["default"]
    port = urlsplit(django_env["redis"].url).port
    with FaultProxy("127.0.0.1", port) as proxy:
        config = {**django_env["config"],
                  "CACHE": f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.05"}
        with override_settings(WRITETHROUGH=config):
            store = store_for(model)
            model(id=7, name="A").save()
            assert get(model, 7)["name"] == "A"
            proxy.blackhole()
            with transaction.atomic():
                profile = model.objects.get(pk=7)
                profile.name = "B"
                profile.save()
            assert "7" in store.repairs.pending  # the commit stands; the cache step waits
            assert get(model, 7)["name"] == "B"  # this process reads its own write
            proxy.pass_through()
            for _ in range(200):
                if not store.repairs.pending:
                    break
                store.repair_once()
            assert not store.repairs.pending
    assert get(model, 7)["name"] == "B"  # another store (the settings' own) sees it too
    model.objects.filter(pk=7).delete()


def test_reordered_on_commit_callbacks(django_env: dict[str, Any]) -> None:
    """Two transactions update one profile; T1 commits first, T2 second, but T1's on_commit
    callbacks run after T2's (a slow thread). A versionless cache-on-save (what
    django-cacheops' cache_on_save does: SET the saved instance) ends with T1's older row;
    writethrough's versioned write keeps T2's."""
    from django.db import connections, transaction
    from django.db.models.signals import post_save

    from writethrough.django import get

    model = django_env["models"]["default"]
    naive = redis.Redis.from_url(django_env["redis"].url)
    naive_key = f"naive:{RUN}:9"

    def cache_on_save(sender: type, instance: Any, **kwargs: Any) -> None:
        row = f"{instance.name}".encode()
        transaction.on_commit(lambda: naive.set(naive_key, row))

    post_save.connect(cache_on_save, sender=model, dispatch_uid="naive")
    try:
        model(id=9, name="v0").save()
        get(model, 9)  # cached
        t1_committed, t2_done = threading.Event(), threading.Event()

        def writer(name: str, wait_before: threading.Event | None,
                   hold_callbacks: threading.Event | None, done: threading.Event) -> None:
            try:
                if wait_before is not None:
                    wait_before.wait(10)
                with transaction.atomic():
                    if hold_callbacks is not None:  # runs first among this commit's callbacks
                        transaction.on_commit(lambda: (t1_committed.set(),
                                                       hold_callbacks.wait(10)))
                    profile = model.objects.select_for_update().get(pk=9)
                    profile.name = name
                    profile.save()
            finally:
                done.set()
                connections.close_all()

        t1_done = threading.Event()
        t1 = threading.Thread(target=writer, args=("T1", None, t2_done, t1_done))
        t2 = threading.Thread(target=writer, args=("T2", t1_committed, None, t2_done))
        t1.start()
        t2.start()
        t1.join(20)
        t2.join(20)
        assert t1_done.is_set() and t2_done.is_set()
        assert model.objects.get(pk=9).name == "T2"  # the database's last committed write
        assert naive.get(naive_key) == b"T1"  # the versionless cache kept the older row
        assert get(model, 9)["name"] == "T2"  # the versioned one did not
    finally:
        post_save.disconnect(dispatch_uid="naive", sender=model)
        naive.delete(naive_key)
        naive.close()
        model.objects.filter(pk=9).delete()
