"""The consuming kombu connection itself: :class:`Link` (connected, broken, dropped, its socket).

kombu's public ``Connection.ensure_connection`` opens each connection (one
attempt, see :class:`~.connector.Connector`), but its retry loop is not
used: it has no deadline, cannot be cut short by
:meth:`~tavrida.transports.base.Transport.interrupt` or ``close()``, and
sleeps in ``time.sleep``; the link (re)connects through
:meth:`~.context.KombuContext.retry` instead. What a new connection
declares and consumes is its owner's (``setup``), as is what a dropped one
leaves behind (``teardown``). A link dropped without the broker's word
gives the un-acked messages of its virtual channels (Redis) back to their
queues here.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable, List, Optional, TypeVar

import amqp
from kombu.connection import Connection

from tavrida import exceptions
from tavrida.transports.kombu.compat.virtual import restore_unacked
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.nodes import QueueUnavailable, queue_unavailable
from tavrida.transports.kombu.polling import Readable, fileno, frame_waits
from tavrida.transports.kombu.reconnect import retry_call
from tavrida.transports.kombu.severing import sever

# It logs as the connections always have (operators filter on that name).
LOG = logging.getLogger("tavrida.transports.kombu.connections")

T = TypeVar("T")


class Link:
    """The consuming kombu connection, its control channel and whether it still works.

    Guarded by the consuming connection's ``lock``, except the reads that
    say so (:meth:`fileno`, :meth:`alive`, :meth:`current`: a moment late at
    worst) and :meth:`sever`, which any thread may call. ``setup()`` runs on
    each new connection (lock held; it declares and consumes), ``teardown()``
    on each dropped one and returns the consumers' channels it had.
    """

    def __init__(self, context: KombuContext, lock: threading.RLock,
                 setup: Callable[[], None], teardown: Callable[[], List[Any]]) -> None:
        self._context = context
        self._lock = lock
        self._setup = setup
        self._teardown = teardown
        self.conn: Optional[Connection] = None
        #: The channel declarations go through.
        self.control: Any = None
        #: Connections opened so far: deliveries know which one they came on.
        self.generation = 0
        self.ever_connected = False
        #: A write or a read failed (or a stop severed it): drop it at the next read.
        self.broken = False
        #: kombu QoS objects of lost virtual channels whose un-acked messages are not back yet.
        self._unrestored: List[Any] = []
        #: Poll of the consuming socket: is it alive (any thread).
        self._alive_poll = Readable()

    @property
    def up(self) -> bool:
        """Open and not known to be broken."""
        return self.conn is not None and not self.broken

    def current(self, generation: int) -> bool:
        """True while the connection of ``generation`` is up (its acks can go)."""
        return self.generation == generation and not self.broken and self.conn is not None

    def mark_broken(self) -> None:
        """A write failed: the next read drops the connection and opens a new one."""
        self.broken = True

    def ensure(self) -> None:
        """Open (or re-open) the connection, per the reconnect policy; lock held."""
        context = self._context
        if context.lifecycle.closed:
            raise exceptions.TavridaError("the transport is closed")
        if self.conn is not None and not self.broken and self.conn.connected:
            return
        initial = not self.ever_connected
        if not initial:
            LOG.info("reconnecting to %s", context.config.safe_url)
        context.retry(self.connect_declaring, initial, "connecting to")
        if not initial:
            LOG.info("reconnected to %s",
                     context.config.safe_urls[context.connector.rotation("consume").current])

    def connect_declaring(self) -> None:
        """:meth:`connect`; a queue whose home node is down is retried, not fatal."""
        try:
            self.connect()
        except amqp.NotFound as exc:
            if not queue_unavailable(exc):
                raise
            raise QueueUnavailable(str(exc)) from exc

    def connect(self) -> None:
        """One attempt: connect, then ``setup()`` (declare everything, consume again)."""
        self.drop()
        context = self._context
        heartbeat = context.config.heartbeat_interval or 0
        self.conn = conn = context.connector.open("consume", heartbeat if context.is_amqp else 0)
        self.generation += 1
        self.ever_connected = True
        try:
            self.control = context.connector.channel(conn)
            self._setup()
        except BaseException:
            self.drop()
            raise
        if self._unrestored:
            self.restore_unacked()

    def lost(self, exc: BaseException) -> None:
        """The connection failed: log it and drop it (the next operation reconnects)."""
        context = self._context
        LOG.warning("connection to %s lost (%s: %s)",
                    context.config.safe_urls[context.connector.rotation("consume").current],
                    type(exc).__name__, exc)
        self.drop()

    def reopen_control(self) -> None:
        """A new control channel for the one the broker closed; lock held."""
        if self.conn is None:
            return
        try:
            self.control = self._context.connector.channel(self.conn)
        except self._context.connection_errors + self._context.channel_errors as exc:
            self.lost(exc)  # the next operation reconnects

    def with_connection(self, action: Callable[[Any], T], remember: Callable[[], None]) -> T:
        """Run ``action(control_channel)``, reconnecting on connection errors (3 attempts).

        ``remember`` records the operation for reconnects; it runs before a
        reconnect (which then performs the declarations itself) or once the
        action worked, never after the broker refused it. Reconnecting is
        :meth:`ensure`'s (with its own pauses): no pause here.
        """
        context = self._context

        def attempt() -> T:
            self.ensure()
            return action(self.control)

        def lost(exc: BaseException) -> None:
            remember()
            self.lost(exc)

        with context.holding(self._lock):
            result = retry_call(
                attempt, attempts=1 if context.config.reconnect_attempts == 0 else 3,
                delay=0.0, max_interval=0.0, deadline=None, wake=context.lifecycle.wake,
                retry_errors=context.retry_errors, fatal_errors=(),
                failed=context.connector.failed, on_error=lost, pause=False)
            remember()
            return result

    def raw(self) -> Any:
        """The transport-level connection, without kombu's implicit reconnect."""
        return self._context.connector.raw(self.conn)

    def fileno(self) -> int:
        """The consuming socket's descriptor; -1 without one, or while broken."""
        conn = self.conn
        if conn is None or self.broken:
            return -1
        return fileno(self._context.connector.raw(conn))

    def frame_waits(self) -> bool:
        """A whole frame waits read ahead (:func:`.polling.frame_waits`; any thread)."""
        raw = self._context.connector.raw(self.conn)
        return raw is not None and frame_waits(raw.transport)

    def alive(self) -> bool:
        """Up (:attr:`up`), and its socket not closed or reset by the peer (one peek,
        any thread)."""
        conn = self.conn
        if conn is None or self.broken:
            return False
        raw = self._context.connector.raw(conn)
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

    def sever(self) -> None:
        """Shut the sockets down (any thread): reads on them end now."""
        self.broken = True
        sever(self.conn, self._context.connector.raw)

    def drop(self) -> None:
        """Forget the connection without talking to the broker; lock held.

        On virtual brokers the un-acked messages of its consumers' channels
        (``teardown()``'s) go back to their queues (RabbitMQ requeues what a
        lost connection held itself).
        """
        conn, self.conn, self.control = self.conn, None, None
        self.broken = False
        channels = self._teardown()
        if conn is None:
            return
        if not self._context.is_amqp:
            self._unrestored.extend(channel.qos for channel in channels)
            self.restore_unacked()
        try:
            conn.collect()
        except Exception:  # the connection is dead anyway: nothing to report
            LOG.debug("ignoring error while dropping a connection", exc_info=True)

    def restore_unacked(self) -> None:
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
                if self._context.compat.private:
                    restore_unacked(qos)
                else:
                    qos.restore_unacked()
            except Exception as exc:  # noqa: BLE001 - kept for the next attempt
                LOG.warning("could not give un-acked messages back yet (%s: %s)",
                            type(exc).__name__, exc)
                self._unrestored.append(qos)
