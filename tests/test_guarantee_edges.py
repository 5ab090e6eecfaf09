"""The guarantee at its edges, found by an adversarial review of issue 9 (branch review9):
each test failed on the first version of the fix and passes now, on real servers (Redis,
PostgreSQL, SQLite; no mocks). Two findings are limits, documented in the README, not
fixed: two databases on one Redis with the same namespace share entries, and a write a
partitioned old primary acknowledges inside ``min-replicas-max-lag``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import writethrough
from conftest import unique_namespace
from servers import ServerUnavailable, unavailable
from writethrough import CacheOutcome, SourceError
from writethrough.cli import main as cli_main
from writethrough.tools.faultproxy import FaultProxy

ROOMY = "socket_timeout=0.5&socket_connect_timeout=0.5"
ACKED = (CacheOutcome.UPDATED, CacheOutcome.INVALIDATED)
TIMEOUT_MS = 1500  # the statement timeout of the lost-reply test's source


def _via_proxy(url: str) -> tuple[FaultProxy, str]:
    """A FaultProxy in front of the PostgreSQL at ``url``, and the URL through it."""
    target = psycopg.conninfo.conninfo_to_dict(url)
    port = int(target.get("port") or 5432)
    proxy = FaultProxy(str(target.get("host") or "127.0.0.1"), port).start()
    via = url.replace(f":{port}/", f":{proxy.port}/")
    assert via != url
    return proxy, via


# -- R1. apply_write composes the row version with the epoch the store *last saw* ------------


def test_apply_write_after_an_epoch_bump_writes_in_the_new_epoch(
    redis_srv: Any, tmp_path: Path
) -> None:
    """An application that commits rows itself reports them with ``apply_write(key, version)``;
    the store adds the epoch *it last saw* (refreshed every ``epoch_refresh``). Right after an
    epoch bump (the runbook's ``writethrough epoch --bump``, a PostgreSQL failover seen by
    another process, a TRUNCATE seen by capture) the composed version is below every entry of
    the new epoch: the write is SUPERSEDED by an older row version and reported UPDATED."""
    path = tmp_path / "app.db"
    url, cache = f"sqlite:///{path}", f"{redis_srv.url}?{ROOMY}"
    ns = unique_namespace("aw")
    # epoch_refresh only widens the window deterministically (default 1 s: the same race).
    with writethrough.open(source=url, cache=cache, namespace=ns, epoch_refresh=30.0) as app, \
            writethrough.open(source=url, cache=cache, namespace=ns) as other:
        assert app.put("k", "v1").cache is CacheOutcome.UPDATED
        assert cli_main(["epoch", "--bump", "--source", url]) == 0
        assert other.put("k", "v2").cache is CacheOutcome.UPDATED  # row version 2, new epoch
        # The application commits row version 3 itself (its ORM), then reports it.
        with sqlite3.connect(path) as conn:
            (version,) = conn.execute(
                "UPDATE writethrough_items SET value = ?, version = version + 1 "
                "WHERE namespace = ? AND key = 'k' RETURNING version", (b'"v3"', ns)).fetchone()
        assert version == 3
        result = app.apply_write("k", 3, "v3")
        assert result.cache in ACKED  # the acknowledgement the guarantee is about
        assert other.get("k") == "v3", "another process reads row version 2 after 3 was acknowledged"


# -- R2. a lost reply whose statement commits *after* the verify repair ran ------------------


def test_a_lost_reply_whose_statement_commits_late_is_repaired_after_the_statement_timeout(
    postgres_srv: Any, redis_srv: Any
) -> None:
    """README race 9: "the DB commits but its reply is lost -> the store records a repair that
    reads the key's version back and invalidates at it". The repair reads the version as soon
    as the worker runs; but a statement whose client connection died keeps running on the
    server (here: waiting on a row lock) and commits later, up to statement_timeout (5 s)
    after the error. The repair then tombstoned the *old* version, was marked done, and the
    committed write is never invalidated: other processes read the old value until the TTL."""
    proxy, via = _via_proxy(postgres_srv.url)
    via += f"?statement_timeout_ms={TIMEOUT_MS}"
    ns = unique_namespace("late")
    cache = f"{redis_srv.url}?{ROOMY}"
    direct = writethrough.open(source=postgres_srv.url, cache=cache, namespace=ns, repair_worker=False)
    locker = psycopg.connect(postgres_srv.url)
    try:
        with writethrough.open(source=via, cache=cache, namespace=ns, repair_worker=False) as store:
            store.put("k", "v1")
            assert direct.get("k") == "v1"
            # Someone holds the row (an application transaction, a long UPDATE).
            locker.execute("SELECT 1 FROM writethrough_items WHERE namespace = %s AND key = 'k' "
                           "FOR UPDATE", (ns,))
            errors: list[BaseException] = []

            def put() -> None:
                try:
                    store.put("k", "v2")
                except BaseException as exc:
                    errors.append(exc)

            writer = threading.Thread(target=put)
            writer.start()
            with psycopg.connect(postgres_srv.url, autocommit=True) as watch:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'INSERT INTO%%writethrough_items%%'").fetchone()[0]:
                    time.sleep(0.02)
            proxy.reset()  # the connection dies: the reply (whenever it comes) is lost
            writer.join(10)
            assert len(errors) == 1 and isinstance(errors[0], SourceError)
            proxy.pass_through()
            assert store.repair_once() == 0, "the statement may still commit: not yet"
            locker.commit()  # the orphaned statement gets its lock and commits v2
            deadline = time.monotonic() + 10
            while direct.source.read("k").payload != b'"v2"' and time.monotonic() < deadline:
                time.sleep(0.02)
            assert direct.source.read("k").payload == b'"v2"', "the DB committed v2"
            time.sleep(TIMEOUT_MS / 1000 + 1.1)  # past the statement timeout: it ran or it died
            assert store.repair_once() == 1  # reads version 2 back, invalidates at it
            assert direct.get("k") == "v2", "v2 is committed and served"
    finally:
        locker.close()
        direct.close()
        proxy.stop()


# -- R3. the reign check runs once per connection; a failover need not close connections ----


class SessionKeepingProxy(FaultProxy):
    """A stable address that, like HAProxy by default (``on-marked-down shutdown-sessions``
    is opt-in), sends *new* connections to the new primary and leaves established ones
    where they are."""

    def reroute(self, port: int) -> None:
        with self._cond:
            self.upstream = (self.upstream[0], port)


def test_a_connection_to_a_demoted_primary_is_dropped_within_the_recheck_interval(tmp_path: Path) -> None:
    """``check_lifetime`` moves the reign marker when a connection is *opened*; the module
    docstring assumes "a restart or failover closes every connection". A failover does not:
    Redis keeps client connections when REPLICAOF demotes a primary, and a proxy (HAProxy's
    default, a VIP, a DNS name already resolved) keeps established sessions. A reader whose
    pooled connection still reaches the old primary -- demoted, cut off from the new one,
    serving its stale data set -- reads entries of the old reign as current: v1 after v2 was
    acknowledged on the new primary."""
    from writethrough.tools.redisproc import RedisProcess

    try:
        a = RedisProcess(save=False)
    except writethrough.ConfigError as exc:
        unavailable(f"Redis: {exc}")
    link_ab = FaultProxy("127.0.0.1", a.port).start()  # B replicates A through this
    b = RedisProcess(save=False, replica_of=link_ab.port)
    link_ba = FaultProxy("127.0.0.1", b.port).start()  # A will follow B through this
    front = SessionKeepingProxy("127.0.0.1", a.port).start()
    url = f"redis://127.0.0.1:{front.port}/0?{ROOMY}"
    db = f"sqlite:///{tmp_path}/wt.db"
    try:
        with writethrough.open(source=db, cache=url, namespace="ks") as writer, \
                writethrough.open(source=db, cache=url, namespace="ks") as reader:
            assert writer.put("k", "v1").cache is CacheOutcome.UPDATED
            assert reader.get("k") == "v1"  # the reader's pooled connection reaches A
            deadline = time.monotonic() + 20
            while not b.synced_with(a) and time.monotonic() < deadline:
                time.sleep(0.02)
            # Failover: B is promoted; A is demoted but cannot reach B (a partition).
            link_ab.blackhole()
            link_ba.blackhole()
            b.promote()
            a.follow(link_ba.port)
            front.reroute(b.port)
            with writethrough.open(source=db, cache=url, namespace="ks") as after:  # new connection: B
                assert after.put("k", "v2").cache is CacheOutcome.UPDATED
                assert after.get("k") == "v2"
            time.sleep(0.6)
            assert [reader.get("k") for _ in range(3)] == ["v2"] * 3, \
                "v2 was acknowledged; the reader's old connection serves v1 from the old reign"
    finally:
        front.stop()
        link_ba.stop()
        link_ab.stop()
        b.destroy()
        a.destroy()


# -- R4. lease renewal shares the worker with the epoch check, which waits on the slow DB -----


def test_a_uniformly_slow_database_still_fills(postgres_srv: Any, redis_srv: Any) -> None:
    """Issue 9 case 7 was fixed by renewing leases from the repair worker. The same worker
    checks the DB epoch every second -- a statement on the same slow database -- and renews
    nothing while it waits. When the DB is slow for everyone (not only for the one read the
    existing test slows down), renewals stop, the lease lapses, the fill is dropped: the key
    is never cached again while the DB stays slow."""
    proxy, via = _via_proxy(postgres_srv.url)
    ns = unique_namespace("slowdb")
    try:
        with writethrough.open(source=via, cache=f"{redis_srv.url}?{ROOMY}", namespace=ns,
                               lease_ttl=0.5, repair_interval=0.02) as store:
            store.source.write("k", b'"v1"')  # in the DB, not cached
            proxy.delay(0.9)  # every statement now takes ~1.8 s: the read, and the epoch check
            assert store.get("k") == "v1"
            proxy.pass_through()
            assert store.stats.fills == 1, (
                f"fill dropped: fills={store.stats.fills} dropped={store.stats.fills_dropped} "
                f"renewals={store.stats.lease_renewals}")
    finally:
        proxy.stop()


# -- R5. a PostgreSQL connection opened to a standby is never observed after its promotion ----


class _PgNode:
    """One throwaway PostgreSQL server of ours (primary or streaming standby)."""

    def __init__(self, root: Path, name: str) -> None:
        from servers import free_port

        self.root, self.data = root, root / name
        self.log, self.port = root / f"{name}.log", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *args: str, check: bool = True) -> None:
        import subprocess

        from servers import _as_owner

        done = subprocess.run(_as_owner(list(args))[0], cwd=self.root, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise ServerUnavailable(f"{args} failed: {done.stdout}{done.stderr}{tail}")

    def start(self) -> None:
        from servers import _pg_binary

        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(_pg_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                 "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        from servers import _pg_binary

        self.run(_pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)


def _chown_tree(path: Path) -> None:
    import os

    from servers import _as_owner

    owner = _as_owner(["true"])[1]
    if owner is not None:
        for p in [path, *path.rglob("*")]:
            os.chown(p, owner.pw_uid, owner.pw_gid, follow_symlinks=False)


def test_a_standby_is_never_used_and_its_promotion_bumps_the_epoch(
    redis_srv: Any,
) -> None:
    """PostgreSQL bumps the epoch when "a new connection finds another system identifier or
    timeline". A connection made while the server is still a standby skips the check
    (``_observe``: "a standby cannot tell its timeline (nor take writes)") -- and is then
    used, unobserved, once the standby is promoted. After a failover whose stable address
    moved before the promotion finished, the pool's connections were all made in that
    window: the promoted standby's versions restart below what the cache holds, in the old
    epoch. A new write is SUPERSEDED by the lost one, reported UPDATED, and the cache keeps
    serving a value the database no longer has."""
    import shutil
    import tempfile

    from servers import _pg_binary

    root = Path(tempfile.mkdtemp(prefix="wt-pg-standby-"))
    _chown_tree(root)
    primary, standby = _PgNode(root, "primary"), _PgNode(root, "standby")
    link = front = None
    try:
        try:
            primary.run(_pg_binary("initdb"), "-D", str(primary.data), "-A", "trust", "-U",
                        "postgres", "--no-sync", "-E", "UTF8", "--locale=C")
            primary.start()
            link = FaultProxy("127.0.0.1", primary.port).start()  # the replication link
            primary.run(_pg_binary("pg_basebackup"), "-h", "127.0.0.1", "-p", str(link.port),
                        "-U", "postgres", "-D", str(standby.data), "-R", "-X", "stream")
            standby.start()
        except ServerUnavailable as exc:
            unavailable(f"PostgreSQL primary + standby: {exc}")
        front = FaultProxy("127.0.0.1", primary.port).start()  # the service's stable address
        via = f"postgresql://postgres@127.0.0.1:{front.port}/postgres"
        ns = unique_namespace("promo")
        with writethrough.open(source=via, cache=f"{redis_srv.url}?{ROOMY}", namespace=ns,
                               source_options={"pool_min": 1, "pool_max": 1}) as store:
            store.put("k", "v1")
            store.put("k", "v2")
            with psycopg.connect(standby.url, autocommit=True) as s:  # replayed on the standby
                deadline, replayed = time.monotonic() + 60, 0
                while replayed < 2:
                    with contextlib.suppress(psycopg.errors.UndefinedTable):  # not replayed yet
                        replayed = s.execute(
                            "SELECT coalesce(max(version), 0) FROM writethrough_items "
                            "WHERE namespace = %s", (ns,)).fetchone()[0]
                    if replayed < 2:
                        assert time.monotonic() < deadline, "the standby never replayed v2"
                        time.sleep(0.05)
            link.blackhole()  # the standby stops receiving WAL
            assert store.put("k", "v3").cache is CacheOutcome.UPDATED  # lost with the primary
            primary.stop("immediate")
            front.switch(standby.port)  # the address moves; the promotion is still under way
            with pytest.raises(SourceError):  # the standby, still in recovery, is never used
                store.get_versioned("probe")
            standby.run(_pg_binary("pg_ctl"), "-D", str(standby.data), "-w", "promote")
            deadline = time.monotonic() + 30
            while True:  # the pool connects again, now to the promoted server: observed
                try:
                    result = store.put("k", "v3 again")  # row version 3 again, a new epoch
                    break
                except SourceError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert result.cache in ACKED
            assert result.version > 10**19, "versions after the promotion order after the lost ones"
            assert store.get("k") == "v3 again"
    finally:
        for proxy in (front, link):
            if proxy is not None:
                proxy.stop()
        standby.stop("immediate")
        primary.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


# -- R6. the same on Redis Cluster, no proxy at all: a node's pooled connections survive its
#        demotion, and are reused when it is promoted again --------------------------------


def _info(port: int, section: str) -> dict[str, Any]:
    import redis

    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as c:
        return dict(c.info(section))


def _wait(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_cluster_node_promoted_again_never_serves_its_first_reign(
    tmp_path: Path,
) -> None:
    """A Redis Cluster shard: A primary, B its replica. redis-py keeps each node's pool across
    role changes (a MOVED only re-points the slot: ``NodesManager.move_slot``), and Redis
    closes no client connection on a role change. Fail over to B (graceful), write v2 there,
    let A fall behind, write v3 (acknowledged), then A takes over (what the cluster does when
    B dies and A is the only replica left). The client goes back to A through the
    connections it opened in A's *first* reign -- checked then, never again -- and reads v2."""
    import redis

    from servers import _launch

    extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000"]
    procs: list[Any] = []
    try:
        try:
            procs.append(_launch(extra, set(), with_bus=True))
            procs.append(_launch(extra, {procs[0].port}, with_bus=True))
        except ServerUnavailable as exc:
            unavailable(f"Redis Cluster nodes: {exc}")
        a, b = procs[0].port, procs[1].port
        ra = redis.Redis(host="127.0.0.1", port=a, socket_timeout=5, decode_responses=True)
        rb = redis.Redis(host="127.0.0.1", port=b, socket_timeout=5, decode_responses=True)
        ra.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        rb.execute_command("CLUSTER", "MEET", "127.0.0.1", a)
        a_id = ra.execute_command("CLUSTER", "MYID")
        _wait(lambda: a_id in rb.execute_command("CLUSTER", "NODES"), "B to know A")
        rb.execute_command("CLUSTER", "REPLICATE", a_id)
        _wait(lambda: _info(b, "replication").get("master_link_status") == "up", "B to sync")
        _wait(lambda: all("cluster_state:ok" in r.execute_command("CLUSTER", "INFO")
                          for r in (ra, rb)), "cluster ok")

        def synced(replica: int, primary: int) -> bool:
            want = _info(primary, "replication")["master_repl_offset"]
            info = _info(replica, "replication")
            return info.get("master_link_status") == "up" and info.get("slave_repl_offset", -1) >= want

        url = f"redis+cluster://127.0.0.1:{a},127.0.0.1:{b}?{ROOMY}"
        with writethrough.open(source=f"sqlite:///{tmp_path}/wt.db", cache=url, namespace="cl") as store:
            assert store.put("k", "v1").cache is CacheOutcome.UPDATED  # A's first reign
            assert store.get("k") == "v1"
            _wait(lambda: synced(b, a), "B to catch up")
            rb.execute_command("CLUSTER", "FAILOVER")  # graceful: B is the primary now
            _wait(lambda: _info(b, "replication")["role"] == "master"
                  and _info(a, "replication")["role"] == "slave", "failover to B")
            assert store.put("k", "v2").cache is CacheOutcome.UPDATED  # on B, B's reign
            _wait(lambda: synced(a, b), "A to catch up")
            # A falls behind: its link to B breaks and cannot be re-established.
            ra.config_set("masteruser", "nobody")
            ra.config_set("masterauth", "wrong")
            ra.execute_command("CLIENT", "KILL", "TYPE", "master")
            _wait(lambda: _info(a, "replication").get("master_link_status") != "up", "A's link down")
            assert store.put("k", "v3").cache is CacheOutcome.UPDATED  # on B only
            ra.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")  # B lost; A, behind, takes over
            _wait(lambda: _info(a, "replication")["role"] == "master"
                  and _info(b, "replication")["role"] == "slave", "A primary again")
            time.sleep(0.6)
            reads = []
            for _ in range(5):
                reads.append(store.get("k"))
                time.sleep(0.05)
            assert "v2" not in reads, f"v3 was acknowledged; reads after the takeover: {reads}"
    finally:
        for p in procs:
            p.cleanup()


# -- R7. two epoch bumps on two timelines within one second get the same epoch ---------------


def test_two_bumps_in_one_second_get_different_epochs(redis_srv: Any, tmp_path: Path) -> None:
    """A bump sets ``greatest(epoch + 1, <unix microseconds now>)`` (it was seconds): a lost
    bump and the runbook's bump after the restore, within one second, still differ, and the
    restored database's versions order after the lost ones."""
    import shutil

    path = tmp_path / "app.db"
    url, cache = f"sqlite:///{path}", f"{redis_srv.url}?{ROOMY}"
    ns = unique_namespace("same")
    with writethrough.open(source=url, cache=cache, namespace=ns) as store:
        store.put("k", "v1")
        store.put("k", "v2")
    backup = tmp_path / "backup.db"
    shutil.copy(path, backup)
    started = time.monotonic()
    assert cli_main(["epoch", "--bump", "--source", url]) == 0  # e.g. a TRUNCATE seen by capture
    with writethrough.open(source=url, cache=cache, namespace=ns) as store:
        lost = store.put("k", "v3 lost")
        assert lost.cache is CacheOutcome.UPDATED
    shutil.copy(backup, path)  # the disk died: restored, the bump and v3 are lost
    assert cli_main(["epoch", "--bump", "--source", url]) == 0  # the runbook step
    with writethrough.open(source=url, cache=cache, namespace=ns) as store:
        again = store.put("k", "v3 again")
        assert again.version > lost.version, (again.version, lost.version)
        assert again.cache in ACKED
        assert store.get("k") == "v3 again"
    assert time.monotonic() - started < 30


# -- R10. pg_restore into the same server: no new system id, no new timeline, no bump --------


def test_a_restore_into_the_same_server_is_detected_by_the_next_conflicting_write(redis_srv: Any) -> None:
    """README: PostgreSQL bumps the epoch by itself on "a point-in-time recovery, a promoted
    standby, a dump restored into a new cluster"; run ``epoch --bump`` after "a SQLite file,
    or a PostgreSQL data directory copied back without a new timeline". The everyday restore
    -- ``pg_restore --clean`` of last night's dump into the same server -- is in neither list:
    the restored ``writethrough_epochs`` row carries this very server's system id and
    timeline, nothing is bumped, and the cache keeps the lost v4 over new writes."""
    import subprocess

    from restorable import RestorableCluster
    from servers import _as_owner, _pg_binary

    try:
        cluster = RestorableCluster()
    except ServerUnavailable as exc:
        unavailable(f"PostgreSQL: {exc}")
    cache = f"{redis_srv.url}?{ROOMY}"
    ns = unique_namespace("dump")
    dump = cluster.root / "nightly.dump"
    try:
        with writethrough.open(source=cluster.url, cache=cache, namespace=ns) as store:
            store.put("k", "v1")
            store.put("k", "v2")
        subprocess.run(_as_owner([_pg_binary("pg_dump"), "-Fc", "-f", str(dump), cluster.url])[0],
                       check=True, capture_output=True, timeout=120)
        with writethrough.open(source=cluster.url, cache=cache, namespace=ns) as store:
            store.put("k", "v3")
            assert store.put("k", "v4").cache is CacheOutcome.UPDATED
        subprocess.run(_as_owner([_pg_binary("pg_restore"), "--clean", "--if-exists", "-d",
                                  cluster.url, str(dump)])[0],
                       check=True, capture_output=True, timeout=120)
        with writethrough.open(source=cluster.url, cache=cache, namespace=ns) as store:
            assert store.source.read("k").payload == b'"v2"'  # the database went back
            result = store.put("k", "v3 again")
            assert result.cache in ACKED
            assert store.get("k") == "v3 again", "the lost v4 is served over an acknowledged write"
    finally:
        cluster.destroy()


# -- R11. while the breaker is open, floor pushes still pay the cache timeout on every read ---


def test_with_the_breaker_open_floors_are_dropped_not_pushed(redis_srv: Any, tmp_path: Path) -> None:
    """README: "A circuit breaker stops paying the timeout on every write while the cache is
    down; reads then go to the DB". Every such DB read leaves a read floor; past 10,000 keys
    each new floor evicts the oldest, which ``_push_floor`` writes to the cache through
    ``_conditional_write`` -- which never asks the breaker. During an outage every read of a
    new key then pays a full cache timeout (and keeps the breaker open)."""
    from writethrough._sync.store import FLOOR_KEYS

    proxy = FaultProxy("127.0.0.1", redis_srv.port).start()
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.05&socket_connect_timeout=0.05"
        with writethrough.open(source=f"sqlite:///{tmp_path}/wt.db", cache=url,
                               namespace=unique_namespace("brk"), repair_worker=False) as store:
            store.put("warm", 1)
            proxy.blackhole()  # the cache stops answering (paused, partitioned)
            for i in range(store.settings.breaker_threshold + 1):
                store.get(f"first:{i}")
            assert not store.breaker.closed, "the breaker opened"
            for i in range(FLOOR_KEYS):  # reads go to the DB; each leaves a floor
                store.get(f"k:{i}")
            failures = store.stats.cache_write_failures
            started = time.monotonic()
            for i in range(20):
                store.get(f"more:{i}")
            took = time.monotonic() - started
            assert store.stats.cache_write_failures == failures, (
                f"{store.stats.cache_write_failures - failures} cache writes tried with the breaker "
                f"open; 20 DB reads took {took:.2f} s")
    finally:
        proxy.stop()


# -- R12. a renewed lease lets a fill land long after its read: floors must outlive that ------


def test_a_read_floor_outlives_every_fill_a_renewed_lease_can_land(redis_srv: Any) -> None:
    """A slow fill renews its lease for up to LEASE_RENEW_FOR: its read can be that old when
    it lands, so a floor is kept at least that long past the TTL (was: ttl + 1 s)."""
    from writethrough._sync.store import LEASE_RENEW_FOR

    with writethrough.open(source="sqlite:///:memory:", ttl=2.0, lease_ttl=0.5) as store:
        assert store.floors.keep_for >= LEASE_RENEW_FOR + 2.0
