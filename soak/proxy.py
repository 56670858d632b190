"""A TCP proxy on loopback that a test owns, to cut broker connections at will.

Clients connect to the proxy instead of the broker; :meth:`TcpProxy.cut`
drops every connection that goes through it at that moment (both ends get a
reset), as a network failure or a broker-side close would; :meth:`TcpProxy.silence`
leaves them open but drops what the broker sends (a half-open connection); :meth:`TcpProxy.stall`
forwards nothing either way on live and new connections and never resets them (a network
partition as a client sees it). New connections are forwarded again right away after a cut,
so clients reconnect through the proxy.
Works for any TCP broker (RabbitMQ, Redis); it touches nothing but its own
sockets, so brokers shared with other test suites are never disturbed.
"""

from __future__ import annotations

import socket
import struct
import threading
import urllib.parse
from typing import List, Optional, Tuple

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671, "pyamqp": 5672, "redis": 6379, "rediss": 6379}


def url_target(url: str) -> Tuple[str, int]:
    """Host and port a broker URL points at."""
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS.get(parts.scheme, 5672)


def _abort(sock: socket.socket) -> None:
    """Close with a reset (no lingering FIN handshake); ignore a socket already gone."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump thread blocked in recv()
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Pair:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, downstream: socket.socket, upstream: socket.socket) -> None:
        self.downstream = downstream
        self.upstream = upstream
        self.closed = threading.Event()
        self.bytes = 0
        #: Set: what the broker sends is read and dropped (the client hears nothing).
        self.silent = False
        #: Set: what either side sends is read and dropped (a partition).
        self.stalled = False
        #: What the client sent last (one read's worth).
        self.last_sent = b""

    def start(self) -> None:
        for src, dst in ((self.downstream, self.upstream), (self.upstream, self.downstream)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                             name="tcp-proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if self.stalled:
                    continue
                if src is self.upstream:
                    if self.silent:
                        continue
                else:
                    self.last_sent = data
                dst.sendall(data)
                self.bytes += len(data)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        _abort(self.downstream)
        _abort(self.upstream)


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; ``cut()`` drops every live connection.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener: Optional[socket.socket] = None
        self._pairs: List[_Pair] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None
        #: Connections accepted and connections cut so far.
        self.accepted = 0
        self.cut_count = 0
        #: Set by :meth:`stall`: new connections are accepted and never forwarded.
        self.stalled = False
        self._held: List[socket.socket] = []

    @classmethod
    def for_url(cls, url: str) -> "TcpProxy":
        return cls(*url_target(url))

    @property
    def port(self) -> int:
        assert self._listener is not None, "start() the proxy first"
        return self._listener.getsockname()[1]

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parts = urllib.parse.urlsplit(url)
        userinfo, _, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}@" if userinfo else ""
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{self.port}"))

    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)  # the accept loop checks for close() this often
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="tcp-proxy-accept")
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            downstream.settimeout(None)
            if self.stalled:
                self._hold(downstream)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _abort(downstream)
                continue
            upstream.settimeout(None)
            for sock in (downstream, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(downstream, upstream)
            with self._lock:
                if self._closed.is_set():
                    pair.close()
                    break
                self._pairs = [p for p in self._pairs if not p.closed.is_set()]
                self._pairs.append(pair)
                self.accepted += 1
            pair.start()

    def live(self) -> int:
        """Connections open through the proxy now."""
        with self._lock:
            return sum(1 for p in self._pairs if not p.closed.is_set())

    def cut(self) -> int:
        """Reset every connection open through the proxy now; returns how many."""
        with self._lock:
            pairs, self._pairs = [p for p in self._pairs if not p.closed.is_set()], []
        for pair in pairs:
            pair.close()
        self.cut_count += len(pairs)
        return len(pairs)

    def silence(self, last_sent: bytes = b"") -> int:
        """Drop what the broker sends on connections open now; returns how many.

        Only on those whose client last sent bytes containing ``last_sent``
        (all by default). The connections stay open: to the client the broker
        went silent, as behind a half-open connection. New connections are
        forwarded as usual.
        """
        with self._lock:
            pairs = [p for p in self._pairs if not p.closed.is_set() and last_sent in p.last_sent]
        for pair in pairs:
            pair.silent = True
        return len(pairs)

    def stall(self) -> int:
        """Forward nothing, either way, on live and new connections; never reset them.

        Returns how many live connections stalled. What a client writes is read
        and dropped (its writes never block); it hears nothing back, as behind
        a network partition. Only :meth:`cut` or :meth:`close` ends them.
        """
        self.stalled = True
        with self._lock:
            pairs = [p for p in self._pairs if not p.closed.is_set()]
        for pair in pairs:
            pair.stalled = True
        return len(pairs)

    def _hold(self, sock: socket.socket) -> None:
        """Keep an accepted connection open, reading and dropping what it sends."""
        with self._lock:
            self._held.append(sock)

        def swallow() -> None:
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass

        threading.Thread(target=swallow, daemon=True, name="tcp-proxy-held").start()

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self._closed.set()
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            _abort(sock)
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        self.cut()
        if self._thread is not None:
            self._thread.join(2)

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
