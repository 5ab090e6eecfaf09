"""FaultProxy against a real redis-server started (and stopped) by this module."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

try:
    from writethrough.tools.faultproxy import FaultProxy
except ModuleNotFoundError:  # package not installed into the venv: use the src layout directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from writethrough.tools.faultproxy import FaultProxy

pytestmark = pytest.mark.redis

REDIS_BIN = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    if REDIS_BIN is None:
        pytest.skip("redis-server binary not found on PATH")
    port = _free_port()
    proc = subprocess.Popen(
        [REDIS_BIN, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not come up on port {port}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()  # our own child, by its pid
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def proxy(redis_port: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", redis_port) as p:
        yield p


@pytest.fixture
def client(proxy: FaultProxy) -> Iterator[Callable[..., Any]]:
    """Factory for redis clients through the proxy, with redis-py 8's default retries disabled."""
    made: list[Any] = []

    def make(socket_timeout: float = 1.0, **kw: Any) -> Any:
        c = redis.Redis(
            host="127.0.0.1",
            port=proxy.port,
            socket_timeout=socket_timeout,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
            **kw,
        )
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.monotonic()
    result = fn()
    return result, time.monotonic() - t


def test_pass_through_set_get_and_counters(proxy: FaultProxy, client: Callable[..., Any]) -> None:
    r = client()
    assert r.set("fp:k", "v") is True
    assert r.get("fp:k") == b"v"
    assert proxy.mode == "pass"
    assert proxy.connections_accepted == 1
    assert proxy.active_connections == 1
    # "*3\r\n$3\r\nSET\r\n$4\r\nfp:k\r\n$1\r\nv\r\n" alone is 31 bytes; replies include "$1\r\nv\r\n"
    assert proxy.bytes_to_upstream > 31
    assert proxy.bytes_to_client > 7
    client().ping()
    assert proxy.connections_accepted == 2
    big = b"x" * (2 << 20)  # many chunks each way, exercises partial sends / backpressure
    assert r.set("fp:big", big) is True
    assert r.get("fp:big") == big
    assert proxy.bytes_to_upstream > len(big)
    assert proxy.bytes_to_client > len(big)


def test_delay_holds_each_direction(proxy: FaultProxy, client: Callable[..., Any]) -> None:
    r = client()
    r.ping()  # connect and handshake without delay
    proxy.delay(0.1)
    ok, elapsed = _timed(r.ping)
    assert ok is True
    assert 0.2 <= elapsed < 1.0  # 0.1 s on the way out and 0.1 s on the way back
    proxy.pass_through()
    _, elapsed = _timed(r.ping)
    assert elapsed < 0.1


def test_mode_change_releases_a_held_chunk(proxy: FaultProxy, client: Callable[..., Any]) -> None:
    r = client(socket_timeout=3.0)
    r.ping()
    proxy.delay(5.0)
    threading.Timer(0.2, proxy.pass_through).start()
    ok, elapsed = _timed(r.ping)
    assert ok is True
    assert 0.15 <= elapsed < 1.0


def test_drop_stalls_instead_of_losing(proxy: FaultProxy, client: Callable[..., Any]) -> None:
    r = client()
    r.ping()
    proxy.drop(1.0, seed=1, stall=0.1)
    ok, elapsed = _timed(r.ping)
    assert ok is True  # nothing was lost, only late
    assert 0.2 <= elapsed < 1.0
    proxy.drop(0.0)
    _, elapsed = _timed(r.ping)
    assert elapsed < 0.1
    with pytest.raises(ValueError):
        proxy.drop(1.5)
    with pytest.raises(ValueError):
        proxy.delay(-1)


def test_blackhole_times_out_then_recovers(proxy: FaultProxy, client: Callable[..., Any]) -> None:
    r = client(socket_timeout=0.2)
    r.ping()
    proxy.blackhole()
    t = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        r.ping()
    assert time.monotonic() - t < 1.0
    assert proxy.active_connections == 1  # the proxy kept the connection open
    proxy.pass_through()
    # redis-py dropped the timed-out connection, so this reconnects through the proxy
    assert r.set("fp:after-blackhole", "1") is True
    assert r.get("fp:after-blackhole") == b"1"
    assert proxy.connections_accepted == 2


def test_reset_pooled_client_reconnects_transparently(
    proxy: FaultProxy, client: Callable[..., Any]
) -> None:
    r = client()
    r.ping()
    proxy.reset()
    assert proxy.active_connections == 0
    # The pool checks an idle connection on checkout, sees the RST and reconnects before sending,
    # so even without retries the next command succeeds, on a new connection.
    assert r.ping() is True
    assert proxy.connections_accepted == 2
    assert proxy.mode == "pass"


def test_reset_single_connection_client_fails_once(
    proxy: FaultProxy, client: Callable[..., Any]
) -> None:
    r = client(single_connection_client=True)
    r.ping()
    proxy.reset()
    with pytest.raises(redis.exceptions.ConnectionError, match="reset by peer"):
        r.ping()
    assert r.ping() is True  # the failed connection was disconnected; this one reconnects
    assert proxy.connections_accepted == 2


def test_refuse_then_recover(proxy: FaultProxy, client: Callable[..., Any]) -> None:
    old = client(single_connection_client=True)
    old.ping()
    proxy.refuse()
    assert proxy.active_connections == 0
    with pytest.raises(redis.exceptions.ConnectionError):
        client().ping()  # new connection: accepted, then reset before the handshake completes
    with pytest.raises(redis.exceptions.ConnectionError):
        old.ping()  # existing connection was reset
    assert proxy.connections_refused >= 1
    proxy.pass_through()
    assert client().ping() is True
    assert old.ping() is True


def test_unreachable_upstream_resets_the_client() -> None:
    with FaultProxy("127.0.0.1", _free_port()) as proxy:
        r = redis.Redis(port=proxy.port, socket_timeout=1.0, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.exceptions.ConnectionError):
            r.ping()
        r.close()
        assert proxy.connections_accepted == 1


def test_stop_is_prompt_and_closes_everything(redis_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", redis_port).start()
    r = redis.Redis(port=proxy.port, socket_timeout=1.0, retry=Retry(NoBackoff(), 0))
    r.ping()
    proxy.blackhole()  # a held connection must not delay shutdown
    sock = socket.create_connection(proxy.address, timeout=1.0)
    sock.sendall(b"PING\r\n")
    time.sleep(0.1)
    _, elapsed = _timed(proxy.stop)
    assert elapsed < 1.0
    assert proxy.active_connections == 0
    assert sock.recv(16) == b""  # closed by the proxy, nothing was forwarded
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1.0).close()
    r.close()
    assert [t for t in threading.enumerate() if t.name.startswith("faultproxy")] == []
