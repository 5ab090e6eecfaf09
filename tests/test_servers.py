"""Self-tests for the throwaway-server helpers in tests/servers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from servers import (
    ClusterServer,
    PostgresServer,
    RedisServer,
    ServerUnavailable,
    keyslot,
    postgres_server,
    redis_cluster,
    redis_server,
    unavailable,
)


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    try:
        with redis_server() as server:
            yield server
    except ServerUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def cluster_srv() -> Iterator[ClusterServer]:
    try:
        with redis_cluster(3) as cluster:
            yield cluster
    except ServerUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def postgres_srv() -> Iterator[PostgresServer]:
    try:
        with postgres_server() as server:
            yield server
    except ServerUnavailable as exc:
        unavailable(str(exc))


@pytest.mark.redis
def test_redis_set_get(redis_srv: RedisServer) -> None:
    with redis.Redis.from_url(redis_srv.url, decode_responses=True) as client:
        client.set("wt:test:key", "value")
        assert client.get("wt:test:key") == "value"
        client.delete("wt:test:key")


@pytest.mark.redis
@pytest.mark.slow
def test_redis_restart_loses_data_and_scripts(redis_srv: RedisServer) -> None:
    if redis_srv.pid is None:
        with pytest.raises(ServerUnavailable):
            redis_srv.restart()
        pytest.skip("restart() needs a server the tests started")
    old_pid, port = redis_srv.pid, redis_srv.port
    with redis.Redis.from_url(redis_srv.url, decode_responses=True) as client:
        client.set("wt:test:survives", "1")
        sha = client.script_load("return 1")
        assert client.script_exists(sha) == [True]
    redis_srv.restart()
    assert redis_srv.pid not in (None, old_pid)
    assert redis_srv.port == port
    with redis.Redis.from_url(redis_srv.url, decode_responses=True) as client:
        assert client.get("wt:test:survives") is None
        assert client.script_exists(sha) == [False]
        assert client.execute_command("SCRIPT", "EXISTS", sha) == [0]


def _cluster_client(cluster: ClusterServer) -> RedisCluster:
    nodes = [ClusterNode(h, p) for h, p in cluster.nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, decode_responses=True)


def _cached_port(client: RedisCluster, key: str) -> int:
    """The port the client's (possibly stale) slot cache routes ``key`` to."""
    return int(client.get_node_from_key(key).port)  # type: ignore[no-untyped-call]


@pytest.mark.cluster
def test_cluster_keys_on_every_master(cluster_srv: ClusterServer) -> None:
    client = _cluster_client(cluster_srv)
    try:
        ports_hit: set[int] = set()
        i = 0
        while ports_hit != set(cluster_srv.ports):
            key = f"wt:test:spread:{i}"
            client.set(key, str(i))
            assert client.get(key) == str(i)
            ports_hit.add(cluster_srv.slot_owner(keyslot(key)))
            assert _cached_port(client, key) == cluster_srv.slot_owner(keyslot(key))
            i += 1
        assert i < 100
    finally:
        client.close()


@pytest.mark.cluster
def test_cluster_move_slot_redirects(cluster_srv: ClusterServer) -> None:
    client = _cluster_client(cluster_srv)
    try:
        for name in ("moved", "ask"):
            key = f"wt:test:{name}"
            slot = keyslot(key)
            client.set(key, name)
            owner = cluster_srv.slot_owner(slot)
            target = next(p for p in cluster_srv.ports if p != owner)
            finish = name == "moved"
            assert _cached_port(client, key) == owner
            cluster_srv.move_slot(slot, target, finish=finish)
            # The client's slot cache still points at the old owner: MOVED / ASK must be followed.
            assert client.get(key) == name
            if not finish:
                assert cluster_srv.slot_owner(slot) == owner
                cluster_srv.move_slot(slot, target)
                assert client.get(key) == name
            assert cluster_srv.slot_owner(slot) == target
            host = {p: h for h, p in cluster_srv.nodes}[target]
            with redis.Redis(host=host, port=target, decode_responses=True) as node:
                assert node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
            client.set(key, "after")
            assert client.get(key) == "after"
            assert _cached_port(client, key) == target
    finally:
        client.close()


@pytest.mark.postgres
def test_postgres_select_1(postgres_srv: PostgresServer) -> None:
    if os.environ.get("WRITETHROUGH_POSTGRES_URL"):
        assert postgres_srv.pid is None
    else:
        assert postgres_srv.pid is not None
    with psycopg.connect(postgres_srv.url, connect_timeout=5) as conn:
        row = conn.execute("select 1").fetchone()
        assert row == (1,)
