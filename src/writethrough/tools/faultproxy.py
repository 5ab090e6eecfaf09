"""A small thread-based TCP proxy that puts faults between a client and one upstream server.

For tests and the chaos tool: faults on the wire between this library and a real Redis or
PostgreSQL. stdlib only, no event loop. Traffic only ever goes to ``(upstream_host,
upstream_port)``. Modes can be switched at any time and apply to new and existing connections::

    with FaultProxy("127.0.0.1", 6379) as proxy:
        r = redis.Redis(port=proxy.port, socket_timeout=0.2)
        proxy.delay(0.05)     # hold every chunk 50 ms, each direction
        proxy.blackhole()     # forward nothing; clients hit their socket timeout
        proxy.lose_replies()  # requests reach the server, replies are held (a lost reply)
        proxy.switch(6380)    # new connections go to another server (a failover)
        proxy.pass_through()  # normal again; held bytes are delivered (a healed partition)
        proxy.reset()         # RST every open connection, keep accepting
        proxy.refuse()        # server down: RST existing and every new connection

A "chunk" is what one ``recv()`` returned: several protocol messages, or part of one.
``drop(p)`` cannot delete bytes from a TCP stream without corrupting it, so it models loss the
way TCP surfaces it: with probability ``p`` a chunk is stalled ``stall`` seconds (retransmission
delay), then forwarded intact. ``blackhole()`` holds rather than discards (one chunk per
direction in the proxy, the rest backs up in kernel buffers), so a write sent during the
partition may still reach the server after the client gave up on it.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

__all__ = ["FaultProxy"]

_POLL = 0.05  # seconds; bounds how long any thread takes to notice close/stop
_CHUNK = 65536


@dataclass(frozen=True, eq=False)
class _Mode:
    kind: str  # "pass" | "delay" | "blackhole" | "lose_replies" | "drop" | "refuse"
    seconds: float = 0.0  # delay, or stall for "drop"
    jitter: float = 0.0
    probability: float = 0.0


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket | None = None
    closed: bool = False
    rst: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class FaultProxy:
    """Forward ``listen_host:listen_port`` to ``upstream_host:upstream_port``, with faults."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        connect_timeout: float = 2.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listen = self._address = (listen_host, listen_port)
        self._connect_timeout = connect_timeout
        self._cond = threading.Condition(threading.Lock())
        self._mode = _Mode("pass")
        self._rng = random.Random()
        self._conns: set[_Conn] = set()
        self._sock: socket.socket | None = None
        self._listener: threading.Thread | None = None
        self._stopping = False
        self.connections_accepted = 0
        self.connections_refused = 0
        self.bytes_to_upstream = 0
        self.bytes_to_client = 0

    def start(self) -> FaultProxy:
        if self._sock is not None or self._stopping:
            raise RuntimeError("FaultProxy can only be started once")
        sock = socket.create_server(self._listen, backlog=128)  # IPv4; sets SO_REUSEADDR
        sock.settimeout(_POLL)
        self._sock, self._address = sock, sock.getsockname()[:2]
        self._listener = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)
        self._listener.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Close the listener and every connection; join all threads within ``timeout``."""
        with self._cond:
            self._stopping = True
        conns = self._close_all(rst=False)
        deadline = time.monotonic() + timeout
        for t in [self._listener] + [c.thread for c in conns]:
            if t is not None and t.is_alive() and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        if self._sock is None:
            raise RuntimeError("FaultProxy is not started")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def mode(self) -> str:
        return self._mode.kind

    @property
    def active_connections(self) -> int:
        with self._cond:
            return len(self._conns)

    def pass_through(self) -> None:
        self._set_mode(_Mode("pass"))

    def delay(self, seconds: float, jitter: float = 0.0) -> None:
        """Hold every chunk, both directions, ``seconds`` + uniform(0, ``jitter``)."""
        self._set_mode(_Mode("delay", seconds, jitter))

    def blackhole(self) -> None:
        """Keep connections open but forward nothing either way until the mode changes."""
        self._set_mode(_Mode("blackhole"))

    def lose_replies(self) -> None:
        """Forward requests, hold every reply: the server acts, the client never hears back."""
        self._set_mode(_Mode("lose_replies"))

    def switch(self, upstream_port: int, upstream_host: str | None = None) -> None:
        """Send new connections to another server and reset the open ones (a failover
        behind a stable address, as Sentinel-aware proxies and managed services do)."""
        with self._cond:
            self.upstream = (upstream_host or self.upstream[0], upstream_port)
        self.reset()

    def drop(self, probability: float, seed: int | None = None, stall: float = 0.2) -> None:
        """Model loss: with ``probability`` a chunk is stalled ``stall`` s, then forwarded."""
        self._set_mode(_Mode("drop", stall, probability=probability), seed)

    def reset(self, timeout: float = 1.0) -> None:
        """RST all current connections and wait until they are closed; the mode is unchanged."""
        deadline = time.monotonic() + timeout
        for conn in self._close_all(rst=True):
            conn.done.wait(max(0.0, deadline - time.monotonic()))

    def refuse(self) -> None:
        """Server down: RST every new connection right after accept, and reset existing ones."""
        self._set_mode(_Mode("refuse"))
        self.reset()

    def _set_mode(self, mode: _Mode, seed: int | None = None) -> None:
        if min(mode.seconds, mode.jitter) < 0 or not 0.0 <= mode.probability <= 1.0:
            raise ValueError(f"invalid fault parameters: {mode}")
        with self._cond:
            if seed is not None:
                self._rng = random.Random(seed)
            self._mode = mode
            self._cond.notify_all()

    def _close_all(self, rst: bool) -> list[_Conn]:
        with self._cond:
            conns = list(self._conns)
            for conn in conns:
                conn.closed, conn.rst = True, conn.rst or rst
            self._cond.notify_all()
        return conns

    def _accept_loop(self) -> None:
        assert self._sock is not None
        with self._sock as lsock:
            while not self._stopping:
                try:
                    conn = _Conn(lsock.accept()[0])
                except TimeoutError:
                    continue
                except OSError:
                    break
                conn.thread = threading.Thread(
                    target=self._serve, args=(conn,), name="faultproxy-conn", daemon=True
                )
                with self._cond:
                    self.connections_accepted += 1
                    refused = self._stopping or self._mode.kind == "refuse"
                    if not refused:
                        self._conns.add(conn)
                    elif not self._stopping:
                        self.connections_refused += 1
                if refused:
                    conn.rst = True
                    self._close(conn)
                else:
                    conn.thread.start()

    def _serve(self, conn: _Conn) -> None:
        try:
            conn.client.settimeout(_POLL)
            conn.upstream = up = socket.create_connection(self.upstream, self._connect_timeout)
            up.settimeout(_POLL)
            args = (conn, up, conn.client, False)
            back = threading.Thread(target=self._pump, args=args, name="faultproxy-pump")
            back.daemon = True
            back.start()
            self._pump(conn, conn.client, up, True)
            back.join()
        except OSError:
            conn.rst = True  # upstream unreachable: the client sees a reset
        finally:
            with self._cond:
                self._conns.discard(conn)
            self._close(conn)

    @staticmethod
    def _close(conn: _Conn) -> None:
        for sock in (conn.client, conn.upstream):
            if sock is not None:
                if conn.rst:  # linger 0: close() sends RST instead of FIN
                    with contextlib.suppress(OSError):
                        linger = struct.pack("ii", 1, 0)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.close()
        conn.done.set()

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while not conn.closed:
                try:
                    data = src.recv(_CHUNK)
                except TimeoutError:
                    continue
                if not data:  # half-close: pass the FIN on, let the other direction finish
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                if not self._gate(conn, up):
                    return
                with self._cond:  # counted before sending: a peer never sees bytes uncounted
                    if up:
                        self.bytes_to_upstream += len(data)
                    else:
                        self.bytes_to_client += len(data)
                view = memoryview(data)
                while view and not conn.closed:
                    try:
                        view = view[dst.send(view) :]
                    except TimeoutError:
                        continue
        except OSError:
            with self._cond:
                conn.closed = True
                self._cond.notify_all()

    def _hold_locked(self, up: bool) -> float | None:
        """Seconds to hold the next chunk in the current mode; None means until it changes."""
        m = self._mode
        if m.kind == "blackhole" or (m.kind == "lose_replies" and not up):
            return None
        if m.kind == "delay":
            return m.seconds + (self._rng.uniform(0.0, m.jitter) if m.jitter else 0.0)
        if m.kind == "drop":
            return m.seconds if self._rng.random() < m.probability else 0.0
        return 0.0

    def _gate(self, conn: _Conn, up: bool) -> bool:
        """Hold a chunk as the mode says, re-evaluated on mode change; False if conn closed."""
        with self._cond:
            mode, hold, start = self._mode, self._hold_locked(up), time.monotonic()
            while not conn.closed:
                if self._mode is not mode:
                    mode, hold, start = self._mode, self._hold_locked(up), time.monotonic()
                if hold is None:
                    self._cond.wait(0.5)
                    continue
                remaining = start + hold - time.monotonic()
                if remaining <= 0:
                    return True
                self._cond.wait(remaining)
            return False
