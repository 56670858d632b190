"""Connecting: connection parameters, deadlines, (re)connects.

kombu's public ``Connection.ensure_connection`` opens each connection (one
attempt, ``max_retries=0``), but its retry loop is not used: it has no
deadline, cannot be cut short by :meth:`~tavrida.transports.base.Transport.interrupt`
or ``close()``, and sleeps in ``time.sleep``. :func:`.retry.retry_call` is the one
retry loop of the adapter instead (connecting, reconnecting, declaring,
publishing): attempts per the config, a backoff up to ``max_retry_interval``,
the calling thread's deadline, and sleeps that end at once on an interrupt.
Giving up raises :class:`~tavrida.exceptions.ConnectionFailed`.

A cluster's nodes are failed over by :mod:`.nodes`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl as ssl_module
import time
from typing import Any, Callable, Dict, Optional, TypeVar

import amqp
from kombu.connection import Connection

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.kombu.deadlines import Deadline, Holding, take
from tavrida.transports.kombu.nodes import (
    NodeRotation,
    QueueUnavailable,
    node_endpoint,
    queue_unavailable,
)
from tavrida.transports.kombu.pyamqp_compat import AMQPTransport, raw_connection
from tavrida.transports.kombu.retry import retry_call
from tavrida.transports.kombu.severing import sever
from tavrida.transports.kombu.state import KombuState
from tavrida.transports.kombu.virtual import rabbit_channel, restore_unacked

LOG = logging.getLogger(__name__)

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss")

T = TypeVar("T")


class _SafeUrl:
    """``config.safe_url``, computed only when a log line shows it (not on every publish)."""

    __slots__ = ("config",)

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config

    def __str__(self) -> str:
        return self.config.safe_url


class KombuConnections(KombuState):
    """The connections part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    def _connect(self) -> None:
        """One attempt to connect and set everything up again (the facade's)."""
        raise NotImplementedError

    def _deadline(self) -> Optional[float]:
        """This thread's deadline (``time.monotonic()``), if any; see :meth:`deadline`."""
        return self._local.deadline

    def _step_deadline(self) -> float:
        """When a step of a stop (cancel, close) gives up on the broker.

        This thread's deadline, but no later than :attr:`stop_step_timeout`
        from now: a stalled connection cannot hold a stop.
        """
        bound = time.monotonic() + self.stop_step_timeout
        own = self._local.deadline
        return bound if own is None or own > bound else own

    def _sever_consuming(self) -> None:
        """Shut the consuming connection's sockets down (any thread): its reads end now."""
        self._broken = True
        sever(self._conn)

    def _sever_all(self) -> None:
        """Shut both connections' sockets down (any thread)."""
        self._sever_consuming()
        sever(self._pub_conn)


    def _connection_params(self, role: str, heartbeat: float = 0,
                           node: int = 0) -> Dict[str, Any]:
        """Connection arguments for one connection (``role`` names it on the broker).

        ``node`` indexes :attr:`~tavrida.config.ConnectionConfig.urls` (0: the first).
        """
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
        hostname, port = config.host or "localhost", config.port
        userid = credentials.username if credentials else None
        password = credentials.password if credentials else None
        if node:
            hostname, node_port, userid, password = node_endpoint(config.urls[node])
            port = node_port or port
        return {
            "hostname": hostname,
            "port": port,
            "userid": userid,
            "password": password,
            "virtual_host": config.virtual_host,
            "ssl": ssl,
            "transport": transport,
            "connect_timeout": config.socket_timeout,
            "heartbeat": heartbeat,
            "transport_options": options,
        }

    def _retry(self, fun: Callable[[], T], initial: bool, what: str,
               once_if_interrupted: bool = False) -> T:
        """Run ``fun`` until it stops raising connection errors, per the retry policy.

        Gives up with :class:`~tavrida.exceptions.ConnectionFailed` when the
        attempts run out (the first connect: ``connection_attempts``, later
        ones: ``reconnect_attempts``), this thread's :meth:`deadline` passes,
        or the transport is closed or interrupted; an error retrying cannot
        mend (a refused login) raises it at once. See :func:`retry_call`.

        ``once_if_interrupted`` (publishes): after :meth:`interrupt`, still make
        the first attempt -- a stopping server's answer on a healthy connection
        goes out -- but retry nothing.
        """
        config = self._config
        attempts = config.connection_attempts if initial else config.reconnect_attempts
        check: Callable[[], None] = self._check_not_stopped
        if once_if_interrupted:
            first = [True]

            def check_retries() -> None:
                if first[0]:
                    first[0] = False
                    if self._closed:
                        raise self._failed(None, "the transport is closed")
                    return
                self._check_not_stopped()

            check = check_retries

        return retry_call(
            fun, attempts=attempts, delay=config.retry_delay,
            max_interval=self.max_retry_interval, deadline=self._local.deadline,
            wake=self._wake, retry_errors=self._retry_errors,
            fatal_errors=self._connection_errors, failed=self._failed,
            check=check, give_up=f"gave up after {attempts} attempt(s)",
            what=what, url=self._safe_url)

    @functools.cached_property
    def _safe_url(self) -> _SafeUrl:
        """The masked URL for log lines, made once (see :class:`_SafeUrl`)."""
        return _SafeUrl(self._config)

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
        passwords = {credentials.password} if credentials is not None else set()
        if self._config.alternates:
            passwords.update(node_endpoint(url)[3] or "" for url in self._config.urls)
        for password in sorted(filter(None, passwords), key=len, reverse=True):
            text = text.replace(password, "***")
        return exceptions.ConnectionFailed(safe_url=self._config.safe_url, cause=cause,
                                           reason=text)

    def deadline(self, timeout: Optional[float]) -> "contextlib.AbstractContextManager[None]":
        """Bound this thread's blocking operations inside the block (see the base class)."""
        return Deadline(self._local, timeout)

    def _holding(self, lock: Any) -> "contextlib.AbstractContextManager[None]":
        """Acquire ``lock`` before this thread's deadline, or raise ConnectionFailed."""
        return Holding(self._local, lock, self._failed)

    def _take(self, lock: Any) -> None:
        """:meth:`_holding` without its block: acquire ``lock`` (the caller releases it)."""
        if not lock.acquire(False):
            take(self._local, lock, self._failed)

    def _rotation(self, role: str) -> NodeRotation:
        """The node rotation of the ``role`` connection (made on first use)."""
        rotation = self._nodes.get(role)
        if rotation is None:
            rotation = self._nodes[role] = NodeRotation(len(self._config.alternates) + 1)
        return rotation

    def _open_connection(self, role: str, heartbeat: float = 0) -> Connection:
        """Connect once to each node at most (retries belong to the caller).

        The node the ``role`` connection last had comes first, then the
        others in order; the first that answers is kept. Errors retrying
        cannot mend (login refused, no such virtual host) raise
        ConnectionFailed; when no node answers, the last node's error is
        raised (the caller's retry loop pauses, then tries the next node first).
        """
        rotation = self._rotation(role)
        order = rotation.order()
        last: Optional[BaseException] = None
        for index in order:
            if last is not None:
                self._check_not_stopped()
                deadline = self._deadline()
                if deadline is not None and time.monotonic() >= deadline:
                    break
            try:
                conn = self._open_node(role, heartbeat, index)
            except self._retry_errors as exc:
                last = exc
                if len(order) > 1:
                    LOG.warning("cannot connect to node %s (%s: %s)",
                                self._config.safe_urls[index], type(exc).__name__, exc)
                continue
            if index != rotation.current:
                LOG.warning("the %s connection moved to node %s", role,
                            self._config.safe_urls[index])
            rotation.connected(index)
            return conn
        rotation.failed_round()
        assert last is not None
        raise last

    def _open_node(self, role: str, heartbeat: float, node: int) -> Connection:
        """Connect once to node ``node``, before this thread's deadline."""
        params = self._connection_params(role, heartbeat, node)
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
            rabbit_channel(channel)
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
        self._retry(self._connect_declaring, initial, "connecting to")
        if not initial:
            LOG.info("reconnected to %s",
                     self._config.safe_urls[self._rotation("consume").current])

    def _connect_declaring(self) -> None:
        """:meth:`_connect`; a queue whose home node is down is retried, not fatal."""
        try:
            self._connect()
        except amqp.NotFound as exc:
            if not queue_unavailable(exc):
                raise
            raise QueueUnavailable(str(exc)) from exc

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
        LOG.warning("connection to %s lost (%s: %s)",
                    self._config.safe_urls[self._rotation("consume").current],
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
            if not self._alive_poll(sock):
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
