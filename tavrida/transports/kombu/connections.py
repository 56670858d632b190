"""Connecting: connection parameters, the one retry helper, deadlines, (re)connects.

kombu's public ``Connection.ensure_connection`` opens each connection (one
attempt, ``max_retries=0``), but its retry loop is not used: it has no
deadline, cannot be cut short by :meth:`~tavrida.transports.base.Transport.interrupt`
or ``close()``, and sleeps in ``time.sleep``. :func:`retry_call` is the one
retry loop of the adapter instead (connecting, reconnecting, declaring,
publishing): attempts per the config, a backoff up to ``max_retry_interval``,
the calling thread's deadline, and sleeps that end at once on an interrupt.
Giving up raises :class:`~tavrida.exceptions.ConnectionFailed`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import socket
import ssl as ssl_module
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Set, Tuple, Type, TypeVar

from kombu.connection import Connection

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import Binding, OnMessage, Transport
from tavrida.transports.kombu.batch import Batch
from tavrida.transports.kombu.deliveries import Consumer, KombuDelivery
from tavrida.transports.kombu.pyamqp_compat import AMQPTransport, raw_connection
from tavrida.transports.kombu.virtual import rabbit_topic_routing, restore_unacked

LOG = logging.getLogger(__name__)

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss")

T = TypeVar("T")
Errors = Tuple[Type[BaseException], ...]


def retry_call(fun: Callable[[], T], *, attempts: int, delay: float, max_interval: float,
               deadline: Optional[float], wake: threading.Event,
               retry_errors: Errors, fatal_errors: Errors,
               failed: Callable[[Optional[BaseException], str], exceptions.ConnectionFailed],
               check: Optional[Callable[[], None]] = None,
               on_error: Optional[Callable[[BaseException], None]] = None,
               give_up: str = "", pause: bool = True, what: str = "", url: object = "") -> T:
    """Call ``fun`` until it stops raising ``retry_errors``; the adapter's one retry loop.

    ``attempts`` calls at most (-1: no bound); ``fatal_errors`` (which retrying
    cannot mend: a refused login) raise ``failed(exc, "")`` at once, as does
    running out of attempts (``failed(exc, give_up)``) or, before a pause, the
    ``deadline`` (``time.monotonic()``) having passed. ``check`` runs before
    every call (it raises to stop), ``on_error`` after every retried error.
    With ``pause`` it sleeps ``delay``, ``2 * delay``, ... up to
    ``max_interval`` (cut to the deadline) between calls, on ``wake`` so that
    setting it ends the sleep. ``what`` and ``url`` name the operation in the
    warning logged before a pause (``url`` is turned into text only then).
    """
    tries_left = None if attempts < 0 else max(attempts, 1)
    interval = delay = max(delay, 0.0)
    while True:
        if check is not None:
            check()
        try:
            return fun()
        except retry_errors as exc:
            error: BaseException = exc
        except fatal_errors as exc:
            raise failed(exc, "") from exc
        if on_error is not None:
            on_error(error)
        if tries_left is not None:
            tries_left -= 1
            if tries_left <= 0:
                raise failed(error, give_up) from error
        if not pause:
            continue
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise failed(error, "timed out") from error
        wait = interval if deadline is None else min(interval, deadline - now)
        LOG.warning("%s %s failed (%s: %s); retrying in %.1fs", what, url,
                    type(error).__name__, error, wait)
        wake.wait(wait)
        interval = min(interval + delay, max(delay, max_interval))


class _SafeUrl:
    """``config.safe_url``, computed only when a log line shows it (not on every publish)."""

    __slots__ = ("config",)

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config

    def __str__(self) -> str:
        return self.config.safe_url


class KombuConnections(Transport):
    """The connections part of :class:`~tavrida.transports.kombu.KombuTransport`.

    Declares the state every part shares (set by the facade's ``__init__``).
    """

    max_retry_interval: float
    topology_check_interval: float
    poll_interval: float
    min_poll_interval: float
    confirm_timeout: float

    connection_name: str
    _config: ConnectionConfig
    _is_amqp: bool
    _confirms: bool
    _retry_errors: Errors
    _connection_errors: Errors
    _channel_errors: Errors
    # The consuming connection (guarded by _lock).
    _lock: threading.RLock
    _conn: Optional[Connection]
    _control: Any
    _generation: int
    _ever_connected: bool
    _broken: bool
    _exchanges: Dict[str, None]
    _queues: Dict[str, None]
    _bindings: Dict[Binding, None]
    _reply_queues: Dict[str, Tuple[Binding, ...]]
    _consumers: List[Consumer]
    _resume: List[Consumer]
    _next_topology_check: float
    _ready: Deque[Tuple[KombuDelivery, OnMessage]]
    _unsettled: Set[int]
    _slice: float
    _settles: Deque[Tuple[KombuDelivery, Optional[bool]]]
    _unrestored: List[Any]
    _stop: threading.Event
    _closed: bool
    _wake: threading.Event
    _interrupted: bool
    _local: threading.local
    _closing: threading.Event
    _beat_thread: Optional[threading.Thread]
    _last_beat: float
    # The publishing connection (guarded by _publish_lock).
    _publish_lock: threading.Lock
    _pub_conn: Optional[Connection]
    _pub_channel: Any
    _pub_ever_connected: bool
    _pub_confirming: bool
    _pub_seq: int
    #: Sequence number of the last publish RabbitMQ returned (see ``_on_return``).
    _pub_returned_seq: int
    #: Sequence number of each unconfirmed publish -> the index of its envelope.
    _pub_waiting: "collections.OrderedDict[int, Tuple[Batch, int]]"
    _pub_reader: bool
    _pub_idle: List[Tuple[Batch, threading.Condition, Callable[[], bool]]]
    #: Exchanges a virtual publisher channel has recorded as topic exchanges.
    _pub_exchanges: Set[str]

    def _connect(self) -> None:
        """One attempt to connect and set everything up again (the facade's)."""
        raise NotImplementedError

    def _deadline(self) -> Optional[float]:
        """This thread's deadline (``time.monotonic()``), if any; see :meth:`deadline`."""
        deadline: Optional[float] = getattr(self._local, "deadline", None)
        return deadline


    def _connection_params(self, role: str, heartbeat: float = 0) -> Dict[str, Any]:
        """Connection arguments for one connection (``role`` names it on the broker)."""
        config = self._config
        options: Dict[str, Any] = {}
        ssl: Any = False
        if self._is_amqp:
            transport: Any = AMQPTransport
            if config.channel_max:
                options["channel_max"] = config.channel_max
            if config.frame_max:
                options["frame_max"] = config.frame_max
            if config.locale:
                options["locale"] = config.locale
            if config.ssl:
                ssl = config.ssl_options or True
        elif config.scheme in REDIS_SCHEMES:
            transport = config.scheme
            options["socket_connect_timeout"] = config.socket_timeout
            # Bounds every read (kombu's default has none: a broker that stops answering
            # would hang a publish for ever); longer than the 1 s BRPOP wait.
            options["socket_timeout"] = config.socket_timeout
            if config.ssl:
                # kombu silently ignores a non-dict, and warns into CERT_NONE without one.
                ssl = config.ssl_options or {"ssl_cert_reqs": ssl_module.CERT_REQUIRED}
        else:
            transport = "memory"
            options["polling_interval"] = 0.005
        options.update(config.transport_options)
        if self._is_amqp:
            properties = dict(options.get("client_properties") or {})
            properties["connection_name"] = f"{self.connection_name}:{role}"
            options["client_properties"] = properties
        elif config.scheme in REDIS_SCHEMES:
            options["client_name"] = f"{self.connection_name}:{role}"
        credentials = config.credentials
        return {
            "hostname": config.host or "localhost",
            "port": config.port,
            "userid": credentials.username if credentials else None,
            "password": credentials.password if credentials else None,
            "virtual_host": config.virtual_host,
            "ssl": ssl,
            "transport": transport,
            "connect_timeout": config.socket_timeout,
            "heartbeat": heartbeat,
            "transport_options": options,
        }

    def _retry(self, fun: Callable[[], T], initial: bool, what: str) -> T:
        """Run ``fun`` until it stops raising connection errors, per the retry policy.

        Gives up with :class:`~tavrida.exceptions.ConnectionFailed` when the
        attempts run out (the first connect: ``connection_attempts``, later
        ones: ``reconnect_attempts``), this thread's :meth:`deadline` passes,
        or the transport is closed or interrupted; an error retrying cannot
        mend (a refused login) raises it at once. See :func:`retry_call`.
        """
        config = self._config
        attempts = config.connection_attempts if initial else config.reconnect_attempts
        return retry_call(
            fun, attempts=attempts, delay=config.retry_delay,
            max_interval=self.max_retry_interval, deadline=self._deadline(), wake=self._wake,
            retry_errors=self._retry_errors, fatal_errors=self._connection_errors,
            failed=self._failed, check=self._check_not_stopped,
            give_up=f"gave up after {attempts} attempt(s)", what=what, url=_SafeUrl(config))

    def _check_not_stopped(self) -> None:
        if self._closed:
            raise self._failed(None, "the transport is closed")
        if self._interrupted:
            raise self._failed(None, "stopped while the broker was unreachable")

    def _failed(self, cause: Optional[BaseException],
                reason: str = "") -> exceptions.ConnectionFailed:
        """A ConnectionFailed naming the masked URL and the cause (no password in it)."""
        text = f"{type(cause).__name__}: {cause}" if cause is not None else ""
        text = f"{reason} ({text})" if reason and text else reason or text
        credentials = self._config.credentials
        if credentials is not None and credentials.password:
            text = text.replace(credentials.password, "***")
        return exceptions.ConnectionFailed(safe_url=self._config.safe_url, cause=cause,
                                           reason=text)

    @contextlib.contextmanager
    def deadline(self, timeout: Optional[float]) -> Iterator[None]:
        """Bound this thread's blocking operations inside the block (see the base class)."""
        previous = getattr(self._local, "deadline", None)
        if timeout is None:
            yield
            return
        mine = time.monotonic() + max(timeout, 0.0)
        self._local.deadline = mine if previous is None else min(previous, mine)
        try:
            yield
        finally:
            self._local.deadline = previous

    @contextlib.contextmanager
    def _holding(self, lock: Any) -> Iterator[None]:
        """Acquire ``lock`` before this thread's deadline, or raise ConnectionFailed."""
        deadline = self._deadline()
        if deadline is None:
            lock.acquire()
        elif not lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise self._failed(None, "timed out: another thread holds the connection "
                                     "(reconnecting)")
        try:
            yield
        finally:
            lock.release()

    def _open_connection(self, role: str, heartbeat: float = 0) -> Connection:
        """Connect once (retries belong to the caller), before this thread's deadline.

        Errors retrying cannot mend (login refused, no such virtual host)
        raise ConnectionFailed.
        """
        params = self._connection_params(role, heartbeat)
        deadline = self._deadline()
        if deadline is not None:
            remaining = max(deadline - time.monotonic(), 0.1)
            for owner, key in ((params, "connect_timeout"),
                               (params["transport_options"], "socket_connect_timeout")):
                if key in owner:
                    owner[key] = min(owner[key] or remaining, remaining)
        conn = Connection(**params)
        try:
            conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        except self._retry_errors:
            raise
        except Exception as exc:
            try:
                conn.collect()
            except Exception:  # noqa: BLE001 - never connected: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)
            raise self._failed(exc) from exc
        return conn

    def _new_channel(self, conn: Connection) -> Any:
        channel = conn.channel()
        if not self._is_amqp:
            rabbit_topic_routing(channel)
        return channel

    def _ensure_connected(self) -> None:
        """Open (or re-open) the consuming connection; call with ``_lock`` held."""
        if self._closed:
            raise exceptions.TavridaError("the transport is closed")
        if self._conn is not None and not self._broken and self._conn.connected:
            return
        initial = not self._ever_connected
        if not initial:
            LOG.info("reconnecting to %s", self._config.safe_url)
        self._retry(self._connect, initial, "connecting to")
        if not initial:
            LOG.info("reconnected to %s", self._config.safe_url)

    def _drop_connection(self) -> None:
        """Forget the consuming connection without talking to the broker."""
        conn, self._conn, self._control = self._conn, None, None
        self._broken = False
        self._resume = []  # a new connection consumes everything again
        channels = [consumer.channel for consumer in self._consumers
                    if consumer.channel is not None]
        for consumer in self._consumers:
            consumer.channel = None
        # Deliveries not yet handed out came on the dead connection: the broker redelivers
        # them -- but not those taken without an ack (answers): those are still handed out.
        kept = [item for item in self._ready if item[0]._no_ack]
        self._ready.clear()
        self._ready.extend(kept)
        self._unsettled.clear()
        if conn is not None and not self._is_amqp:
            # RabbitMQ requeues what a lost connection held; Redis has no such thing.
            self._unrestored.extend(channel.qos for channel in channels)
            self._restore_unacked()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # the connection is dead anyway: nothing to report
                LOG.debug("ignoring error while dropping a connection", exc_info=True)

    def _restore_unacked(self) -> None:
        """Give the un-acked messages of lost virtual channels back to their queues.

        kombu restores them when a channel closes, but closing a channel whose
        Redis connection died mid-BRPOP raises before that, leaving them in
        kombu's ``unacked`` hash until ``visibility_timeout`` (an hour) -- among
        them deliveries received and never handed out. Done here instead, with
        fresh connections from the channel's pool; what cannot be restored now
        (Redis down) is tried again after each reconnect.
        """
        pending, self._unrestored = self._unrestored, []
        for qos in pending:
            try:
                restore_unacked(qos)
            except Exception as exc:  # noqa: BLE001 - kept for the next attempt
                LOG.warning("could not give un-acked messages back yet (%s: %s)",
                            type(exc).__name__, exc)
                self._unrestored.append(qos)

    def _lost(self, exc: BaseException) -> None:
        LOG.warning("connection to %s lost (%s: %s)", self._config.safe_url,
                    type(exc).__name__, exc)
        self._drop_connection()

    def _raw_connection(self) -> Any:
        """The transport-level connection, without kombu's implicit reconnect."""
        return raw_connection(self._conn)

    def _socket_alive(self) -> bool:
        """False when the consuming connection's socket was closed or reset by the peer."""
        raw = self._raw_connection()
        sock = getattr(getattr(raw, "transport", None), "sock", None)
        if sock is None:
            return False
        try:
            # Poll first: recv on a socket in timeout mode would wait for data.
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return True  # nothing to read: alive as far as can be told
            peeked: bytes = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return peeked != b""
        except (BlockingIOError, InterruptedError, socket.timeout):
            return True  # a drainer took the data meanwhile
        except OSError:
            return False

    def _with_connection(self, action: Callable[[Any], T], remember: Callable[[], None]) -> T:
        """Run ``action(control_channel)``, reconnecting on connection errors (3 attempts).

        ``remember`` records the operation for reconnects; it runs before a
        reconnect (which then performs the declarations itself) or once the
        action worked, never after the broker refused it. Reconnecting is
        :meth:`_ensure_connected`'s (with its own pauses): no pause here.
        """
        def attempt() -> T:
            self._ensure_connected()
            return action(self._control)

        def lost(exc: BaseException) -> None:
            remember()
            self._lost(exc)

        with self._holding(self._lock):
            result = retry_call(
                attempt, attempts=1 if self._config.reconnect_attempts == 0 else 3, delay=0.0,
                max_interval=0.0, deadline=None, wake=self._wake,
                retry_errors=self._retry_errors, fatal_errors=(), failed=self._failed,
                on_error=lost, pause=False)
            remember()
            return result
