"""The facade: :class:`KombuTransport`, the two connections it composes, closing.

The parts it is made of, and what the adapter guarantees, are described in
the package's docstring (:mod:`tavrida.transports.kombu`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterable, Optional

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import Binding, OnMessage, OutgoingEnvelope, Topology, Transport
from tavrida.transports.confirmation import Confirmation
from tavrida.transports.kombu.compat import Compat
from tavrida.transports.kombu.consuming_connection import ConsumingConnection
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.deadlines import Deadline
from tavrida.transports.kombu.publishing_connection import PublishingConnection
from tavrida.transports.kombu.severing import SeverAt

__all__ = ["KombuTransport"]

LOG = logging.getLogger(__name__)


class KombuTransport(Transport):
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
    #: Seconds a publish waits for its confirm before its handle fails (PublishFailed).
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
        self._publisher = PublishingConnection(context, self._consuming, self.confirm_timeout,
                                               self.poll_interval)
        #: The block whose acks wait for the next drain (the same one each time).
        self._delivering = self._consuming.delivering()
        self._config = config
        self._lifecycle = context.lifecycle
        self._connector = context.connector

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
        # Not through KombuContext.deadline(): bench.profiling "call, tavrida: client".
        return Deadline(self._context.local, timeout)

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
        self._publisher.forget_exchanges(exchanges)

    def publish(self, envelope: OutgoingEnvelope) -> Confirmation:
        """Publish one message; its handle carries the broker's verdict (see the base class).

        Never raises for the message's failure. With confirms over plain TCP
        the handle is pending once the message is written (its waiter reads
        the confirm); elsewhere the publish is done in full and the handle
        settled. See :class:`.PublishingConnection`.
        """
        return self._publisher.publish(envelope)

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

    def drain(self, timeout: float) -> bool:
        """Deliver waiting messages, waiting at most ``timeout`` seconds for one.

        Returns True once something was delivered (see
        :meth:`.ConsumingConnection.drain`). Meanwhile reads the confirms of
        pending publishes with callbacks, publishes again those a lost
        connection took, fails those late, and settles them, oldest first:
        their callbacks run here, their acks go out together.
        """
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
            if fd < 0 or reader.wait_for_sockets(fd, wait):
                if consuming.drain(0.0):
                    return True
            else:
                self._await_publisher(min(wait, self.min_poll_interval))
            if time.monotonic() >= end:
                return False

    def _await_publisher(self, timeout: float) -> None:
        """Only the publishing socket is ready: let a publish holding its lock end first.

        Its confirms are read once the lock is free (``progress`` never waits
        for it); without this the drain would spin on the ready socket while a
        worker publishes (bench scenario 8: polls per call of an aio.Server).
        """
        lock = self._publisher.lock
        if lock.acquire(timeout=timeout):
            lock.release()

    def _settle_watched(self) -> int:
        """Settle the watched handles whose verdict was read (their acks are coalesced)."""
        done = self._publisher.reader.progress()
        if done:
            with self._delivering:
                for handle in done:
                    handle.settle()
        return len(done)

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
            with SeverAt(deadline, self._publisher.sever, "closing the connection"):
                self._publisher.close(deadline)
