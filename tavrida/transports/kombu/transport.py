"""The facade: :class:`KombuTransport`, the two connections it composes, closing.

The parts it is made of, and what the adapter guarantees, are described in
the package's docstring (:mod:`tavrida.transports.kombu`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Iterable, Optional

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import Binding, OnMessage, Topology
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.consuming_connection import ConsumingConnection
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.deferring import KombuDeferring
from tavrida.transports.kombu.polling import Readable
from tavrida.transports.kombu.severing import SeverAt, sever
from tavrida.transports.kombu.unconfirmed import ConfirmTracker

__all__ = ["KombuTransport"]

LOG = logging.getLogger(__name__)


class KombuTransport(KombuDeferring):
    """A :class:`~tavrida.transports.base.Transport` on any kombu broker URL.

    Connections open lazily (first declare, consume, drain or publish).
    Connection errors are retried by :class:`.reconnect.ReconnectPolicy`: the first
    connect ``connection_attempts`` times, later reconnects
    ``reconnect_attempts`` times (-1: for ever), sleeping ``retry_delay``,
    then ``2 * retry_delay``, ... up to :attr:`max_retry_interval`.
    """

    #: Longest wait inside one ``drain_events`` call: bounds how late a queued
    #: ack from another thread, a heartbeat or :meth:`stop` is noticed.
    poll_interval = 0.05
    #: Shortest such wait, used right after handing out a delivery.
    min_poll_interval = 0.001
    #: Seconds to wait for publisher confirms before raising PublishFailed.
    confirm_timeout = 30.0
    #: Longest :meth:`cancel` or :meth:`close` waits for the broker (the calling
    #: thread's :meth:`deadline` may cut it shorter): then the connection is dropped.
    stop_step_timeout = 3.0
    #: Upper bound of the sleep between reconnect attempts.
    max_retry_interval = 10.0
    #: Seconds between checks that a virtual broker (Redis) still has the bindings.
    topology_check_interval = 2.0

    def __init__(self, config: ConnectionConfig, compat: Optional[Compat] = None) -> None:
        if config.is_memory:
            raise exceptions.IncorrectAMQPConfig(
                reason="memory:// is tavrida's own transport; kombu's is kombu+memory://")
        #: Private upstream names on (the default) or off (:mod:`.compat`).
        context = self._context = KombuContext(
            config, compat or Compat.from_environment(), self.max_retry_interval,
            self.stop_step_timeout)
        self._consuming = ConsumingConnection(
            context, self.poll_interval, self.min_poll_interval, self.topology_check_interval)
        # Fixed for the transport's life: read by the publishing parts.
        self._config = config
        self._local = context.local
        self._lifecycle = context.lifecycle
        self._compat = context.compat
        self._connector = context.connector
        self._is_amqp = context.is_amqp
        self._confirms = context.confirms
        self._retry_errors = context.retry_errors
        self._connection_errors = context.connection_errors
        self._channel_errors = context.channel_errors
        self._confirm_poll = Readable()
        self._pub_poll = Readable()
        self._sockets_poll = Readable()

        # Publishing connection: state guarded by _publish_lock.
        self._publish_lock = threading.Lock()
        self._pub_conn = None
        self._pub_channel = None
        self._pub_ever_connected = False
        self._pub_confirming = False
        self._unconfirmed = ConfirmTracker()
        #: A request is reading the publishing connection for everyone (see _confirm_or_answer).
        self._pub_reader = False
        #: Requests waiting while another reads: (batch, its condition, answered).
        self._pub_idle = []
        self._deferred = collections.deque()
        self._pub_exchanges = set()

    @property
    def connection_name(self) -> str:
        """Base of the names the connections give the broker: ``<name>:consume`` and
        ``<name>:publish`` (RabbitMQ ``connection_name``, Redis ``CLIENT SETNAME``)."""
        return self._connector.connection_name

    def __repr__(self) -> str:
        return f"KombuTransport({self._config.safe_url!r})"

    @property
    def holds_delays(self) -> bool:  # type: ignore[override]
        """RabbitMQ (TTL queues) and Redis (:mod:`.redis_delays`); not kombu's memory."""
        return self._consuming.holds_delays

    @property
    def reconnects(self) -> int:
        """Times the consuming connection was opened again after the first (for metrics)."""
        return self._consuming.reconnects

    def deadline(self, timeout: Optional[float]) -> "contextlib.AbstractContextManager[None]":
        """Bound this thread's blocking operations inside the block (see the base class)."""
        return self._context.deadline(timeout)

    def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues, bindings (tavrida 1.0 style); again after reconnects.

        See :meth:`.Declarer.declare` for what the broker may refuse.
        """
        self._consuming.declare(topology)

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare a private queue that goes away with this transport.

        See :meth:`.Declarer.declare_reply_queue`.
        """
        self._consuming.declare_reply_queue(queue, bindings)

    def queue_size(self, queue: str) -> Optional[int]:
        """Messages ready in ``queue``; None when it does not exist (RabbitMQ)."""
        return self._consuming.queue_size(queue)

    def delete(self, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Delete queues, then exchanges, and forget them (missing ones are fine)."""
        exchanges = list(exchanges)
        self._consuming.delete(exchanges, queues)
        with self._publish_lock:
            self._pub_exchanges.difference_update(exchanges)

    def consume(self, queue: str, on_message: OnMessage, prefetch_count: int) -> None:
        """Deliver ``queue`` to ``on_message`` inside :meth:`drain` (manual acks).

        See :meth:`.ConsumingConnection.consume`.
        """
        self._consuming.consume(queue, on_message, prefetch_count)

    def cancel(self) -> None:
        """Stop taking messages; received ones not yet handed out go back to their queue.

        Consumer channels stay open until :meth:`close`, so deliveries already
        handed out can still be acked or rejected. Bounded by this thread's
        :meth:`deadline` and :attr:`stop_step_timeout`.
        """
        self._consuming.cancel()

    def heartbeat(self) -> None:
        """Send an AMQP heartbeat on the consuming connection now, from any thread."""
        self._consuming.heartbeat()

    def stop(self) -> None:
        """Make a waiting :meth:`drain` return (within :attr:`poll_interval`)."""
        self._consuming.stop()

    def interrupt(self) -> None:
        """Stop reconnecting for good: retries give up at once (see the base class).

        Only flags are set, so a signal handler may call it.
        """
        self._lifecycle.interrupt()
        self._consuming.stop()

    def close(self) -> None:
        """Send queued acks, cancel consumers, close both connections.

        Un-acked messages go back to the broker (RabbitMQ, Redis). Reply queues
        go away (RabbitMQ: with the connection; others: deleted here). Bounded
        by this thread's :meth:`deadline` and :attr:`stop_step_timeout`, one
        bound for both connections: a broker that does not answer in time has
        its connections dropped.
        """
        self._lifecycle.close()
        self._consuming.stop()
        with self.deadline(self.stop_step_timeout):
            deadline = self._context.step_deadline()
            self._consuming.close()
            with SeverAt(deadline, self._sever_publishing, "closing the connection"):
                if self._publish_lock.acquire(
                        timeout=max(deadline - time.monotonic(), 0.0) + 1.0):
                    try:
                        self._close_publishing()
                    finally:
                        self._publish_lock.release()
                else:
                    LOG.warning("could not close the publishing connection in time; dropped")

    def _sever_publishing(self) -> None:
        """Shut the publishing connection's sockets down (any thread)."""
        sever(self._pub_conn, self._connector.raw)

    def _close_publishing(self) -> None:
        """Close the publishing connection (``_publish_lock`` held)."""
        if self._pub_conn is not None:
            try:
                self._pub_conn.release()
            except self._connection_errors + self._channel_errors + (OSError,):
                LOG.debug("ignoring error while closing the publisher", exc_info=True)
        self._drop_publisher()
        # Their messages were never acked: the broker delivers them again.
        self._deferred.clear()
