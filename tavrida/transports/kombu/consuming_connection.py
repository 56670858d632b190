"""The consuming side of the kombu transport: :class:`ConsumingConnection`.

It owns the lock of the consuming connection and composes the parts that
lock guards: the :class:`~.link.Link` (the kombu connection), the
:class:`~.consumers.ConsumerSet`, the :class:`~.settlement.Settlement` (acks
and rejects), the :class:`~.declarer.Declarer` and the
:class:`~.heartbeat.Heartbeat` thread. :meth:`ConsumingConnection.drain` is
driven by one thread at a time; callbacks run on it outside the lock, so a
callback may ack, declare or send heartbeats at will.

Reads go through kombu's ``Transport.drain_events`` on the raw connection
(no implicit reconnect) and ``Transport.heartbeat_check``; a lost
connection is dropped and opened again -- declaring everything and
consuming again -- on the next read, per the reconnect policy.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Iterable, List, Optional

from tavrida import exceptions
from tavrida.transports.base import Binding, OnMessage, Topology
from tavrida.transports.kombu.connector import REDIS_SCHEMES
from tavrida.transports.kombu.consumers import ConsumerSet, close_channel
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.deadlines import take
from tavrida.transports.kombu.declarer import Declarer
from tavrida.transports.kombu.deliveries import Consumer
from tavrida.transports.kombu.heartbeat import Heartbeat
from tavrida.transports.kombu.link import Link
from tavrida.transports.kombu.polling import CAN_POLL, fileno
from tavrida.transports.kombu.settlement import Delivering, Settlement
from tavrida.transports.kombu.severing import SeverAt

# It logs as the connections always have (operators filter on that name).
LOG = logging.getLogger("tavrida.transports.kombu.connections")


class ConsumingConnection:
    """The consuming connection: declarations, consumers, acks, heartbeats, draining.

    Every part is touched under its ``_lock`` (an ``RLock``), except what
    another thread may ask without waiting: :meth:`fileno`,
    :meth:`reply_fd`, :meth:`has_ready`, :meth:`stop`, :meth:`sever`.
    """

    def __init__(self, context: KombuContext, poll_interval: float,
                 min_poll_interval: float, topology_check_interval: float) -> None:
        self._context = context
        self._poll_interval = poll_interval
        self._min_poll_interval = min_poll_interval
        self._lock = threading.RLock()
        self._link = Link(context, self._lock, self._setup, self._teardown)
        self._stop = threading.Event()
        self.settlement = Settlement(context, self._lock, self._link, poll_interval,
                                     min_poll_interval)
        self.consumers = ConsumerSet(context, self.settlement)
        self.declarer = Declarer(context, self._lock, self._link, self.consumers,
                                 topology_check_interval)
        #: Keeps heartbeats going while a callback runs on the draining thread (AMQP).
        self._heartbeat = Heartbeat(context, self._lock, self._link)

    # -- what the facade asks ----------------------------------------------------------------

    @property
    def reconnects(self) -> int:
        """Times the connection was opened again after the first (for metrics)."""
        return max(self._link.generation - 1, 0)

    @property
    def holds_delays(self) -> bool:
        """RabbitMQ (TTL queues) and Redis (:mod:`.redis_delays`); not kombu's memory."""
        return self.declarer.holds_delays

    def declare(self, topology: Topology) -> None:
        """Declare a topology, again after every reconnect (see :meth:`Declarer.declare`)."""
        self.declarer.declare(topology)

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare a private reply queue (see :meth:`Declarer.declare_reply_queue`)."""
        self.declarer.declare_reply_queue(queue, bindings)

    def queue_size(self, queue: str) -> Optional[int]:
        """Messages ready in ``queue``; None when it does not exist (RabbitMQ)."""
        return self.declarer.queue_size(queue)

    def delete(self, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Delete queues, then exchanges, and forget them (missing ones are fine)."""
        self.declarer.delete(list(exchanges), list(queues))

    def consume(self, queue: str, on_message: OnMessage, prefetch_count: int) -> None:
        """Deliver ``queue`` to ``on_message`` inside :meth:`drain` (manual acks).

        ``prefetch_count`` bounds the un-acked deliveries of this consumer
        (0: no bound). Consumes again after every reconnect.

        A reply queue on RabbitMQ or Redis is consumed without acks; its
        deliveries' ``ack()`` does nothing, and an answer read is handed out
        even if the connection is lost before that. On RabbitMQ it is
        exclusive and dies with the connection, so an ack protects nothing and
        costs a frame per answer. On Redis an answer read is in the in-flight
        list until it is in this process (:mod:`.compat.redis_fetch`), so the
        ack's un-acked record (and its removal) would only protect it against
        the crash of the process waiting for it: two round trips per answer.
        """
        context = self._context
        no_ack = ((context.is_amqp or context.config.scheme in REDIS_SCHEMES)
                  and queue in self.declarer.declarations.reply_queues)
        consumer = Consumer(queue, on_message, max(int(prefetch_count), 0), no_ack)
        with context.holding(self._lock):
            self._link.ensure()
            self.consumers.add(consumer)
            try:
                self.consumers.start(consumer, self._link.conn, self._link.generation)
            except context.retry_errors as exc:
                self._link.lost(exc)
                self._link.ensure()
            except BaseException:
                self.consumers.discard(consumer)
                raise

    def cancel(self) -> None:
        """Stop taking messages; received ones not yet handed out go back to their queue.

        Consumer channels stay open until :meth:`close`, so deliveries already
        handed out can still be acked or rejected. Not consumed again after a
        reconnect. Bounded by this thread's deadline and ``stop_step_timeout``:
        a broker that does not answer in time has the connection dropped (it
        gives back what it held).
        """
        deadline = self._context.step_deadline()
        with SeverAt(deadline, self.sever, "cancelling the consumers"):
            if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0) + 1.0):
                # Its holder is stuck on a severed connection: the next drain() drops it.
                LOG.warning("could not cancel the consumers in time; the connection is dropped")
                self.consumers.stop_all()
                return
            try:
                self._cancel_consumers()
            finally:
                self._lock.release()

    def _cancel_consumers(self) -> None:
        """:meth:`cancel` with the lock held."""
        consumers = self.consumers.stop_all()
        if not self._link.up:
            return  # nothing is consuming on the broker
        context = self._context
        try:
            self.consumers.cancel_on_broker(consumers)
        except context.connection_errors + context.channel_errors + (OSError,) as exc:
            self._link.lost(exc)  # the broker gives everything back itself
            return
        self.consumers.give_back_ready()
        self.settlement.perform()

    def heartbeat(self) -> None:
        """Send an AMQP heartbeat now, from any thread (see :meth:`.Heartbeat.beat`)."""
        self._heartbeat.beat()

    def stop(self) -> None:
        """Make a waiting :meth:`drain` return (within ``poll_interval``)."""
        self._stop.set()

    def sever(self) -> None:
        """Shut the connection's sockets down (any thread): its reads end now."""
        self._link.sever()

    def close(self) -> None:
        """Send queued acks, cancel consumers, close the connection (for good).

        Bounded by this thread's deadline and ``stop_step_timeout``: a broker
        that does not answer in time has the connection dropped. The
        transport's lifecycle is closed first (by the facade).
        """
        self._stop.set()
        deadline = self._context.step_deadline()
        with SeverAt(deadline, self.sever, "closing the connection"):
            # A lock holder blocked on the broker lets go once the connection is severed.
            if self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0) + 1.0):
                try:
                    self._close()
                finally:
                    self._lock.release()
            else:
                LOG.warning("could not close the consuming connection in time; dropped")
        self._heartbeat.join(2)

    def _close(self) -> None:
        """Settle, cancel and close (lock held)."""
        context = self._context
        link = self._link
        try:
            if link.up and link.conn is not None and link.conn.connected:
                self.settlement.perform()
                self.consumers.close(link.control)
                reply_queues = self.declarer.declarations.reply_queues
                if not context.is_amqp and reply_queues:
                    for queue in reply_queues:
                        link.control.queue_delete(queue=queue)
                close_channel(link.control)
                link.conn.release()
        except context.connection_errors + context.channel_errors + (OSError,):
            LOG.debug("ignoring error while closing %s", context.config.safe_url, exc_info=True)
        finally:
            self.consumers.stop_all()
            self._link.drop()

    # -- what the publishing side asks -------------------------------------------------------

    def fileno(self) -> int:
        """The consuming socket's descriptor; -1 without one, or while broken."""
        return self._link.fileno()

    def reply_fd(self) -> int:
        """The consuming socket's descriptor while it reads reply queues, else -1.

        Read without the lock (a publishing thread polls it): at worst it is
        a connection just dropped, whose reads :meth:`read_answers` skips.
        """
        link = self._link
        if not self.declarer.declarations.reply_queues or link.conn is None or link.broken:
            return -1
        # Not link.fileno(): a call per blocking call (bench.profiling "call, tavrida: client").
        return fileno(self._context.connector.raw(link.conn))

    def frame_waits(self) -> bool:
        """A whole frame waits read ahead: input the socket's poll misses (any thread)."""
        return self._link.frame_waits()

    def has_ready(self) -> bool:
        """Deliveries wait, a stop was asked or the transport closed: drain now."""
        return (bool(self.consumers.ready) or self._stop.is_set()
                or self._context.lifecycle.closed)

    def delivering(self) -> Delivering:
        """A block whose acks (made on this thread) wait to be coalesced by the next drain:
        the same block each time (see :meth:`.Settlement.delivering`)."""
        return self.settlement.delivering()

    def check_reply_connection(self) -> None:
        """Before a request goes out: make sure the reply queue it names exists.

        RabbitMQ deletes an exclusive reply queue with its connection and drops the
        answers routed to it until someone reads the connection, finds it dead and
        declares it again. A closed connection shows as end-of-file on its socket
        (:meth:`reply_connection_ok`): reconnecting here comes before the request.
        """
        if self.reply_connection_ok():
            return
        context, link = self._context, self._link
        with context.holding(self._lock):
            if link.up and not link.alive():
                LOG.warning("the consuming connection to %s is closed", context.config.safe_url)
                link.broken = True
            if not context.lifecycle.closed:
                self._link.ensure()

    def reply_connection_ok(self) -> bool:
        """No need for :meth:`check_reply_connection`: no reply queue, not RabbitMQ
        over plain TCP (amqps sockets cannot peek; no ``select.poll``), or its
        connection alive (one peek; never blocks)."""
        context = self._context
        if (not self.declarer.declarations.reply_queues or not context.is_amqp
                or context.config.ssl or not CAN_POLL):
            return True
        return self._link.alive()

    def read_answers(self) -> bool:
        """One short read, then hand out the answers read.

        For a publishing thread waiting for a confirm: only deliveries without
        acks (answers) are handed out here; the others stay for :meth:`drain`.
        False when another thread holds the connection (it delivers).
        """
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._context.lifecycle.closed or not self._link.up:
                return True
            self._drain_once(self._min_poll_interval)
            answers = self.consumers.take_answers()
        except exceptions.ConnectionFailed:
            return True  # the caller's own drain reconnects or reports it
        finally:
            self._lock.release()
        for delivery, on_message in answers:
            on_message(delivery)
        return True

    # -- draining ----------------------------------------------------------------------------

    def drain(self, timeout: float) -> bool:
        """Deliver waiting messages, waiting at most ``timeout`` seconds for one.

        Returns True once something was delivered. Pumps heartbeats, performs
        queued acks and reconnects (re-declaring and consuming again) when the
        connection is lost; raises only when reconnect attempts run out.
        """
        now = time.monotonic()
        deadline = now + max(timeout, 0.0)
        lock = self._lock
        context = self._context
        lifecycle = context.lifecycle
        consumers = self.consumers
        settlement = self.settlement
        while not lifecycle.closed:
            if consumers.ready:
                return settlement.hand_out(consumers.ready)
            if self._stop.is_set():
                break
            remaining = deadline - now
            if not consumers.consumers and not self._link.up:
                # Nothing to read or keep alive (after cancel(), acks of a lost
                # connection are void: no reconnect for them): wait to be stopped.
                self._stop.wait(max(remaining, 0.0))
                break
            try:
                # take() direct, not context.take(): bench.profiling "cast, tavrida: service".
                take(context.local, lock, context.connector.failed)
                try:
                    read = settlement.next_slice() if settlement.unsettled else self._poll_interval
                    self._drain_once(min(max(remaining, self._min_poll_interval), read))
                finally:
                    lock.release()
            except exceptions.ConnectionFailed:
                if lifecycle.closed or lifecycle.interrupted:
                    break  # stopping during an outage: nothing in hand can be acked anyway
                raise
            if consumers.ready:
                return settlement.hand_out(consumers.ready)
            now = time.monotonic()
            if now >= deadline:
                break
        self._stop.clear()
        return False

    def _drain_once(self, timeout: float) -> None:
        """One bounded read on the connection; call with the lock held."""
        context = self._context
        if context.lifecycle.closed:
            return
        link = self._link
        conn = link.conn
        raw = context.connector.raw(conn)
        if not (context.is_amqp and raw is not None and not link.broken and raw.connected):
            self._link.ensure()
            conn = link.conn
            raw = context.connector.raw(conn)
        settlement = self.settlement
        if settlement.queue and not settlement.can_wait(raw):
            settlement.perform()
        assert conn is not None  # ensure() raises otherwise
        errors = context.connection_errors + context.channel_errors
        try:
            if context.is_amqp:
                raw.drain_events(timeout=timeout)  # what kombu's transport calls
            else:
                conn.transport.drain_events(raw, timeout=timeout)
        except socket.timeout:
            pass
        except errors as exc:
            self._link.lost(exc)
            return
        if self.consumers.resume or not context.is_amqp:
            try:
                self.declarer.check_topology(link.control, link.generation)
            except errors as exc:
                self._link.lost(exc)  # reconnecting declares everything anyway
                return
        heartbeat = self._heartbeat
        now = time.monotonic()
        # Its interval tested here, not in check(): bench.profiling "cast, tavrida: service".
        if now - heartbeat.last >= heartbeat.check_interval:
            try:
                heartbeat.check(conn, now)
            except context.connection_errors as exc:
                self._link.lost(exc)
                return
        if settlement.queue and not settlement.can_wait(raw):
            settlement.perform()

    # -- a new connection and a dropped one --------------------------------------------------

    def _setup(self) -> None:
        """On a new connection (lock held): heartbeats, declarations, consumers again."""
        link = self._link
        self._heartbeat.start()
        self.declarer.declare_all(link.control)
        self.consumers.start_all(link.conn, link.generation)

    def _teardown(self) -> List[Any]:
        """On a dropped connection (lock held): its deliveries are void; its channels."""
        channels = self.consumers.drop()
        self.settlement.forget()
        return channels
