"""The facade: :class:`KombuTransport`, its shared state, connecting as a whole, closing.

The parts it is made of, and what the adapter guarantees, are described in
the package's docstring (:mod:`tavrida.transports.kombu`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from typing import Optional, Tuple

import amqp

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import Binding
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.connector import Connector
from tavrida.transports.kombu.deadlines import ThreadState
from tavrida.transports.kombu.declarations import Declarations
from tavrida.transports.kombu.deferring import KombuDeferring
from tavrida.transports.kombu.heartbeat import Heartbeat
from tavrida.transports.kombu.lifecycle import Lifecycle
from tavrida.transports.kombu.polling import Readable
from tavrida.transports.kombu.reconnect import ReconnectPolicy
from tavrida.transports.kombu.severing import SeverAt
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
        #: Per-thread deadline of blocking operations (see deadline()).
        self._local = ThreadState()
        self._lifecycle = Lifecycle()
        #: Private upstream names on (the default) or off (:mod:`.compat`).
        self._compat = compat or Compat.from_environment()
        self._connector = Connector(config, self._local, self._lifecycle, self._compat)
        self._policy = ReconnectPolicy.from_config(config, self.max_retry_interval)
        # Fixed for the transport's life: read by every part.
        self._config = config
        self._is_amqp = self._connector.is_amqp
        self._confirms = self._is_amqp and config.publisher_confirms
        self._retry_errors = self._connector.retry_errors
        self._connection_errors = self._connector.connection_errors
        self._channel_errors = self._connector.channel_errors

        # Consuming connection: state guarded by _lock.
        self._lock = threading.RLock()
        self._conn = None
        self._control = None
        self._generation = 0
        self._ever_connected = False
        self._broken = False
        self._declarations = Declarations(self._is_amqp)
        self._consumers = []
        #: Consumers RabbitMQ cancelled (their queue was deleted), to declare and resume.
        self._resume = []
        self._ready = collections.deque()
        #: Deliveries handed out and not yet acked or rejected (set ops are atomic).
        self._unsettled = set()
        self._slice = self.poll_interval
        self._settles = collections.deque()
        #: kombu QoS objects of lost virtual channels whose un-acked messages are not back yet.
        self._unrestored = []
        self._stop = threading.Event()
        #: Keeps heartbeats going while a callback runs on the draining thread (AMQP).
        self._heartbeat = Heartbeat(float(config.heartbeat_interval or 0),
                                    self._lifecycle.closing, self.heartbeat)
        self._ack_poll = Readable()
        self._alive_poll = Readable()
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

    def _connect(self) -> None:
        """One attempt: connect, declare everything remembered, consume again."""
        self._drop_connection()
        heartbeat = self._config.heartbeat_interval or 0
        self._conn = self._connector.open("consume", heartbeat if self._is_amqp else 0)
        self._generation += 1
        if self._is_amqp and heartbeat:
            self._heartbeat.start(f"tavrida-heartbeat-{self.connection_name}")
        self._ever_connected = True
        try:
            self._control = self._connector.channel(self._conn)
            self._declarations.declare_all(self._control)
            for queue, bindings in list(self._declarations.reply_queues.items()):
                self._declare_reply_again(queue, bindings)
            for consumer in self._consumers:
                self._start_consumer(consumer)
        except BaseException:
            self._drop_connection()
            raise
        if self._unrestored:
            self._restore_unacked()

    def _declare_reply_again(self, queue: str, bindings: Tuple[Binding, ...]) -> None:
        """Declare a reply queue again after a reconnect (:meth:`_connect`).

        RabbitMQ deletes an exclusive queue a moment after its connection is
        gone; until then it refuses it to the new connection (405
        RESOURCE_LOCKED), the holder being this client's own previous
        connection. The reply queue then takes a fresh name at once (py-amqp
        reopens the channel the broker closed): answers find it by its binding
        (the client's service name), not by its name, so none waits for the
        old one to go and no caller sees py-amqp's error.
        """
        try:
            self._declarations.declare_reply_on(self._control, queue, bindings)
            return
        except amqp.ResourceLocked:
            fresh = f"{queue.partition('~')[0]}~{uuid.uuid4().hex[:8]}"
        LOG.info("reply queue %s is still held by the previous connection; using %s",
                 queue, fresh)
        self._declarations.declare_reply_on(self._control, fresh, bindings)
        self._declarations.rename_reply_queue(queue, fresh)
        for consumer in self._consumers:
            if consumer.queue == queue:
                consumer.queue = fresh

    def interrupt(self) -> None:
        """Stop reconnecting for good: retries give up at once (see the base class).

        Only flags are set, so a signal handler may call it.
        """
        self._lifecycle.interrupt()
        self._stop.set()

    @property
    def reconnects(self) -> int:
        """Times the consuming connection was opened again after the first (for metrics)."""
        return max(self._generation - 1, 0)

    def close(self) -> None:
        """Send queued acks, cancel consumers, close both connections.

        Un-acked messages go back to the broker (RabbitMQ, Redis). Reply queues
        go away (RabbitMQ: with the connection; others: deleted here). Bounded
        by this thread's :meth:`deadline` and :attr:`stop_step_timeout`: a broker
        that does not answer in time has its connections dropped.
        """
        self._lifecycle.close()
        self._stop.set()
        deadline = self._step_deadline()
        with SeverAt(deadline, self._sever_all, "closing the connection"):
            # A lock holder blocked on the broker lets go once the connection is severed.
            if self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0) + 1.0):
                try:
                    self._close_consuming()
                finally:
                    self._lock.release()
            else:
                LOG.warning("could not close the consuming connection in time; dropped")
            if self._publish_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0) + 1.0):
                try:
                    self._close_publishing()
                finally:
                    self._publish_lock.release()
            else:
                LOG.warning("could not close the publishing connection in time; dropped")
        self._heartbeat.join(2)

    def _close_consuming(self) -> None:
        """Settle, cancel and close the consuming connection (``_lock`` held)."""
        try:
            if self._conn is not None and not self._broken and self._conn.connected:
                self._perform_settles()
                for consumer in list(self._consumers):
                    channel = consumer.channel
                    self._cancel_consumer(consumer)
                    if consumer.fetch is not None and channel is not None:
                        # Anything a dead connection popped since: back to the queue.
                        consumer.fetch.recover(self._control)
                if not self._is_amqp and self._declarations.reply_queues:
                    for queue in self._declarations.reply_queues:
                        self._control.queue_delete(queue=queue)
                self._close_channel(self._control)
                self._conn.release()
        except self._connection_errors + self._channel_errors + (OSError,):
            LOG.debug("ignoring error while closing %s", self._config.safe_url,
                      exc_info=True)
        finally:
            self._consumers.clear()
            self._drop_connection()

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
