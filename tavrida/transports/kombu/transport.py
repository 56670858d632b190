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
from typing import Iterable, Optional, Tuple

import amqp

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import Binding, OutgoingEnvelope
from tavrida.transports.confirmation import Confirmation
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.declarations import Declarations
from tavrida.transports.kombu.draining import KombuDraining
from tavrida.transports.kombu.heartbeat import Heartbeat
from tavrida.transports.kombu.polling import CAN_POLL, Readable, fileno
from tavrida.transports.kombu.publishing_connection import PublishingConnection
from tavrida.transports.kombu.severing import SeverAt

__all__ = ["KombuTransport"]

LOG = logging.getLogger(__name__)


class KombuTransport(KombuDraining):
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
        self._context = context = KombuContext(config, compat or Compat.from_environment(),
                                               self.max_retry_interval, self.stop_step_timeout)
        #: Per-thread deadline of blocking operations (see deadline()).
        self._local = context.local
        self._lifecycle = context.lifecycle
        self._compat = context.compat
        self._connector = context.connector
        self._policy = context.policy
        # Fixed for the transport's life: read by every part.
        self._config = config
        self._is_amqp = context.is_amqp
        self._confirms = context.confirms
        self._retry_errors = context.retry_errors
        self._connection_errors = context.connection_errors
        self._channel_errors = context.channel_errors

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

        #: The publishing connection, reading the consuming side through its stand-in.
        self._consuming = ConsumingSide(self)
        self._publisher = PublishingConnection(context, self._consuming, self.confirm_timeout,
                                               self.poll_interval)

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

    def publish(self, envelope: OutgoingEnvelope) -> Confirmation:
        """Publish one message; its handle carries the broker's verdict (see the base class).

        Never raises for the message's failure. With confirms over plain TCP
        the handle is pending once the message is written (its waiter reads
        the confirm); elsewhere the publish is done in full and the handle
        settled.
        """
        return self._publisher.publish(envelope)

    def drain(self, timeout: float) -> bool:
        """Deliver waiting messages (see the base class), meanwhile reading the confirms
        of pending publishes with callbacks and settling them, oldest first."""
        reader = self._publisher.reader
        consuming = self._consuming
        if not reader.watched:
            return consuming.drain(timeout)
        end = time.monotonic() + max(timeout, 0.0)
        while True:
            if self._settle_watched():
                consuming.drain(0.0)  # sends the acks just queued, delivers what is ready
                return True
            if not reader.watched:
                return consuming.drain(max(end - time.monotonic(), 0.0))
            if consuming.has_ready():
                return consuming.drain(0.0)
            now = time.monotonic()
            wait = min(max(end - now, 0.0), self.poll_interval,
                       max(reader.next_deadline() - now, 0.0))
            fd = consuming.fileno()
            # No consuming socket: drain() reconnects.
            if (fd < 0 or reader.wait_for_sockets(fd, wait)) and consuming.drain(0.0):
                return True
            if time.monotonic() >= end:
                return False

    def _settle_watched(self) -> int:
        """Settle the watched handles whose verdict was read; their callbacks' acks go
        together with the next drain."""
        done = self._publisher.reader.progress()
        if done:
            with self._consuming.delivering():
                for handle in done:
                    handle.settle()
        return len(done)

    def delete(self, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Delete queues, then exchanges, and forget them (missing ones are fine)."""
        exchanges = list(exchanges)
        super().delete(exchanges, queues)
        self._publisher.forget_exchanges(exchanges)

    def _sever_all(self) -> None:
        """Shut both connections' sockets down (any thread)."""
        self._sever_consuming()
        self._publisher.sever()

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
            self._publisher.close(deadline)
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



class ConsumingSide:
    """What the publishing connection may ask of the consuming side (a stand-in over
    the consuming parts of :class:`KombuTransport`)."""

    __slots__ = ("_transport",)

    def __init__(self, transport: KombuTransport) -> None:
        self._transport = transport

    def reply_fd(self) -> int:
        """The consuming socket while it reads reply queues, else -1."""
        return self._transport._reply_fd()

    def read_answers(self) -> bool:
        """One short read, handing out answers; False when another thread reads."""
        return self._transport._read_answers()

    def check_reply_connection(self) -> None:
        """Before a request goes out: make sure the reply queue it names exists.

        RabbitMQ deletes an exclusive reply queue with its connection, and
        drops answers routed to it until it is declared again -- which
        happens when someone next reads the consuming connection and finds it
        dead. A request published in between would lose its answer (the first
        call after every connection loss timed out). A closed connection
        shows as end-of-file on its socket: peeking at it costs one system
        call, and reconnecting here (which declares the reply queue again)
        comes before the request. (Not for amqps, whose sockets cannot peek,
        nor where ``select.poll`` is missing.)
        """
        transport = self._transport
        if (not transport._declarations.reply_queues or not transport._is_amqp
                or transport._config.ssl or not CAN_POLL):
            return
        if transport._conn is not None and not transport._broken and transport._socket_alive():
            return
        with transport._holding(transport._lock):
            if (transport._conn is not None and not transport._broken
                    and not transport._socket_alive()):
                LOG.warning("the consuming connection to %s is closed",
                            transport._config.safe_url)
                transport._broken = True
            if not transport._lifecycle.closed:
                transport._ensure_connected()

    def fileno(self) -> int:
        """The consuming socket, -1 when there is none or it is broken."""
        transport = self._transport
        if transport._broken:
            return -1
        return fileno(transport._connector.raw(transport._conn))

    def has_ready(self) -> bool:
        """Deliveries wait, or a stop or close was asked for."""
        transport = self._transport
        return bool(transport._ready or transport._stop.is_set()
                    or transport._lifecycle.closed)

    def delivering(self) -> "ConsumingSide":
        """Acks this thread makes inside the block are sent by the next drain, together."""
        return self

    def __enter__(self) -> None:
        self._transport._delivering = threading.get_ident()

    def __exit__(self, *exc_info: object) -> None:
        self._transport._delivering = 0

    def drain(self, timeout: float) -> bool:
        """The consuming connection's drain."""
        return KombuDraining.drain(self._transport, timeout)
