"""Consumers: start, cancel and resume them, turn broker messages into deliveries, settle.

Each consumer has its own channel (its own prefetch window). Acks and
rejects from other threads are queued and performed by whoever holds the
consuming connection next (see :meth:`KombuConsuming._settle`).

kombu's ``Consumer`` is not used: it decodes bodies and wraps them in
kombu messages (tavrida hands bytes and headers on untouched), and it has no
``on_cancel`` for RabbitMQ cancelling a consumer whose queue was deleted;
each consumer is a ``basic_consume`` on a channel of its own instead.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import amqp

from tavrida.transports.base import OnMessage
from tavrida.transports.kombu.compat.pyamqp import PROPERTY_NAMES, PROPERTY_SET, text_key
from tavrida.transports.kombu.compat.redis_fetch import RedisFetch
from tavrida.transports.kombu.compat.virtual import (
    ORIGIN,
    delete_broker_bindings,
    forget_bindings,
    own_copies,
    public_payload,
    raw_payload,
)
from tavrida.transports.kombu.connector import REDIS_SCHEMES
from tavrida.transports.kombu.declaring import KombuDeclarations
from tavrida.transports.kombu.deliveries import Consumer, KombuDelivery
from tavrida.transports.kombu.severing import SeverAt

LOG = logging.getLogger(__name__)


class KombuConsuming(KombuDeclarations):
    """The consuming part of :class:`~tavrida.transports.kombu.KombuTransport`."""

    #: Most acks kept back to be sent as one (see :meth:`_settles_can_wait`).
    max_coalesced_acks = 25
    #: Thread running callbacks in :meth:`drain` (its acks may be coalesced), else 0.
    _delivering = 0

    def consume(self, queue: str, on_message: OnMessage, prefetch_count: int) -> None:
        """Deliver ``queue`` to ``on_message`` inside :meth:`drain` (manual acks).

        ``prefetch_count`` bounds the un-acked deliveries of this consumer
        (0: no bound). Consumes again after every reconnect.

        A RabbitMQ reply queue (:meth:`declare_reply_queue`) is consumed
        without acks: it is exclusive and dies with the connection, so an ack
        protects nothing and costs a frame per answer; its deliveries'
        ``ack()`` does nothing, and an answer read is handed out even if the
        connection is lost before that.
        """
        no_ack = self._is_amqp and queue in self._declarations.reply_queues
        consumer = Consumer(queue, on_message, max(int(prefetch_count), 0), no_ack)
        with self._holding(self._lock):
            self._ensure_connected()
            self._consumers.append(consumer)
            try:
                self._start_consumer(consumer)
            except self._retry_errors as exc:
                self._lost(exc)
                self._ensure_connected()
            except BaseException:
                self._consumers.remove(consumer)
                self._close_channel(consumer.channel)
                consumer.channel = None
                raise

    def cancel(self) -> None:
        """Stop taking messages; received ones not yet handed out go back to their queue.

        Consumer channels stay open until :meth:`close`, so deliveries already
        handed out can still be acked or rejected. Not consumed again after a
        reconnect. Bounded by this thread's :meth:`deadline` and
        :attr:`stop_step_timeout`: a broker that does not answer in time has the
        connection dropped (it gives back what it held).
        """
        deadline = self._step_deadline()
        with SeverAt(deadline, self._sever_consuming, "cancelling the consumers"):
            if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.0) + 1.0):
                # Its holder is stuck on a severed connection: the next drain() drops it.
                LOG.warning("could not cancel the consumers in time; the connection is dropped")
                self._consumers = []
                return
            try:
                self._cancel_consumers()
            finally:
                self._lock.release()

    def _cancel_consumers(self) -> None:
        """:meth:`cancel` with ``_lock`` held."""
        consumers, self._consumers = self._consumers, []
        if self._conn is None or self._broken:
            return  # nothing is consuming on the broker
        try:
            for consumer in consumers:
                if consumer.channel is not None:
                    # py-amqp waits for cancel-ok: deliveries still in flight land in _ready.
                    consumer.channel.basic_cancel(consumer.tag)
                    if consumer.fetch is not None:
                        consumer.fetch.recover(consumer.channel)
        except self._connection_errors + self._channel_errors + (OSError,) as exc:
            self._lost(exc)  # the broker gives everything back itself
            return
        kept = []
        while self._ready:
            delivery, on_message = self._ready.popleft()
            if delivery._no_ack:
                kept.append((delivery, on_message))  # nothing to give back: hand it out
                continue
            delivery._settled = True
            self._settles.append((delivery, True))
        self._ready.extend(kept)
        self._perform_settles()

    def delete(self, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Delete queues, then exchanges, and forget them (missing ones are fine)."""
        exchanges, queues = list(exchanges), list(queues)
        with self._lock:
            for consumer in [c for c in self._consumers if c.queue in queues]:
                self._cancel_consumer(consumer)
            self._declarations.forget(queues, exchanges)

            def action(channel: Any) -> None:
                if self._compat.private:
                    delete_broker_bindings(channel, queues)  # Redis: other connections' too
                elif not self._is_amqp:
                    for name in queues:  # what kombu's delete would leave in an unbound queue
                        channel.queue_purge(queue=name)
                for name in queues:
                    channel.queue_delete(queue=name)
                for name in exchanges:
                    channel.exchange_delete(exchange=name)

            self._with_connection(action, lambda: None)

    def _start_consumer(self, consumer: Consumer) -> None:
        assert self._conn is not None
        channel = self._connector.channel(self._conn)
        consumer.channel = channel
        consumer.received = set()
        if not self._is_amqp:
            own_copies(channel, consumer.queue)
        if self._config.scheme in REDIS_SCHEMES and self._compat.private:
            if consumer.fetch is None:
                consumer.fetch = RedisFetch(consumer.queue, consumer.tag)
            consumer.fetch.recover(channel)
            consumer.fetch.install(channel)
        channel.basic_qos(0, consumer.prefetch_count, False)
        self._basic_consume(consumer, channel)

    def _basic_consume(self, consumer: Consumer, channel: Any) -> None:
        generation = self._generation
        options: Dict[str, Any] = {}
        if self._is_amqp:
            # RabbitMQ cancels a consumer whose queue was deleted: declare it again.
            options["on_cancel"] = lambda tag: self._resume.append(consumer)
            callback: Any = functools.partial(self._on_amqp_message, consumer, channel,
                                              generation)
        else:
            callback = functools.partial(self._on_virtual_message, consumer, channel,
                                         generation)
        channel.basic_consume(
            queue=consumer.queue, no_ack=consumer.no_ack, consumer_tag=consumer.tag,
            callback=callback, **options)

    def _check_topology(self) -> None:
        """Declare again what the broker lost while connected; call with ``_lock`` held.

        RabbitMQ: a consumer the broker cancelled (its queue was deleted)
        -- its queue, the other queues and every binding are declared again
        and it consumes again on its channel. Redis and kombu's memory
        transport tell nobody: every :attr:`topology_check_interval` seconds
        the bindings are compared with the broker's tables, and declared
        again when one is missing (a deleted queue, a Redis restarted
        without persistence under a live connection, a FLUSHALL).
        """
        resume = self._resume
        if self._is_amqp:
            if not resume:
                return
        else:
            now = time.monotonic()
            if now < self._declarations.next_check or not self._consumers:
                return
            self._declarations.next_check = now + self.topology_check_interval
            missing = self._declarations.missing(self._control)
            if not missing:
                return
            forget_bindings(self._control, missing)
        self._resume = []
        LOG.warning("queues or bindings on %s disappeared (%s); declaring them again",
                    self._config.safe_url,
                    ", ".join(sorted({c.queue for c in resume})) or "bindings")
        declarations = self._declarations
        declarations.declare_all(self._control)
        for queue, bindings in declarations.reply_queues.items():
            declarations.declare_reply_on(self._control, queue, bindings)
        for consumer in resume:
            if consumer in self._consumers and consumer.channel is not None:
                self._basic_consume(consumer, consumer.channel)

    def _cancel_consumer(self, consumer: Consumer) -> None:
        self._consumers.remove(consumer)
        channel, consumer.channel = consumer.channel, None
        if channel is not None:
            try:
                channel.basic_cancel(consumer.tag)
            except self._connection_errors + self._channel_errors:
                LOG.debug("could not cancel consumer of %s", consumer.queue, exc_info=True)
            self._close_channel(channel)

    def _close_channel(self, channel: Any) -> None:
        if channel is None:
            return
        try:
            channel.close()
        except Exception:  # closing is best effort
            LOG.debug("ignoring error while closing a channel", exc_info=True)

    def _on_amqp_message(self, consumer: Consumer, channel: Any, generation: int,
                         message: amqp.Message) -> None:
        """Wrap a py-amqp message into a Delivery, handed out by drain() (RabbitMQ)."""
        props = message.properties
        info = message.delivery_info
        body = message.body
        if not isinstance(body, bytes):
            body = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        headers = dict(props.get("application_headers") or {})
        for key in headers:  # type(): bench.profiling "cast, tavrida: service" calls/message
            if type(key) is not str:
                # py-amqp keeps a key that is not UTF-8 as bytes; the core expects text.
                headers = {text_key(key): value for key, value in headers.items()}
                break
        properties = {name: value for name, value in props.items()
                      if value is not None and name in PROPERTY_SET}
        exchange = info.get("exchange")
        routing_key = info.get("routing_key")
        delivery = KombuDelivery(
            self, channel, info["delivery_tag"], generation, body, headers, properties,
            exchange or "", routing_key or "", consumer.queue,
            bool(info.get("redelivered")), consumer.no_ack)
        if not consumer.no_ack:
            consumer.received.add(delivery._delivery_tag)
            delivery._consumer = consumer
        # Handed out by drain() once the connection lock is released.
        self._ready.append((delivery, consumer.on_message))

    def _on_virtual_message(self, consumer: Consumer, channel: Any, generation: int,
                            message: Any) -> None:
        """Wrap a kombu virtual message into a Delivery, handed out by drain()."""
        delivery = self._virtual_delivery(consumer, channel, generation, message)
        self._ready.append((delivery, consumer.on_message))

    def _virtual_delivery(self, consumer: Consumer, channel: Any, generation: int,
                          message: Any) -> KombuDelivery:
        # kombu's Message may have decompressed the body: the stored one is read.
        raw = raw_payload(message) if self._compat.private else public_payload(message)
        props = raw.get("properties") or {}
        info = props.get("delivery_info") or {}
        body = raw.get("body") or b""
        if body:
            body = channel.decode_body(body, props.get("body_encoding"))
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = dict(raw.get("headers") or {})
        redelivered = bool(info.get("redelivered") or raw.get("redelivered"))
        if redelivered and headers.get("redelivered") is True:
            headers.pop("redelivered")  # added by kombu's Redis restore, not by the sender
        properties = {name: props[name] for name in PROPERTY_NAMES
                      if props.get(name) is not None}
        if properties.get("priority") == 0:
            del properties["priority"]  # kombu's filler, not the sender's
        for name, key in (("content_type", "content-type"),
                          ("content_encoding", "content-encoding")):
            if raw.get(key) is not None:
                properties[name] = raw[key]
        exchange, routing_key = props.get(ORIGIN) or ["", consumer.queue]
        return KombuDelivery(self, channel, props.get("delivery_tag"), generation, body,
                             headers, properties, exchange, routing_key, consumer.queue,
                             redelivered)

    def _settle(self, delivery: KombuDelivery, requeue: Optional[bool]) -> None:
        """Queue an ack (``requeue is None``) or reject; do it now if the connection is free.

        An ack made in a callback on the draining thread waits while more
        messages are already waiting to be read (see :meth:`_settles_can_wait`):
        sent together, acks of one channel become one ``basic.ack``.
        """
        if delivery._settled:
            LOG.warning("%r was already acked or rejected; ignoring", delivery)
            return
        delivery._settled = True
        self._unsettled.discard(delivery)
        self._slice = self.min_poll_interval
        self._settles.append((delivery, requeue))
        if requeue is None and self._delivering == threading.get_ident():
            return  # drain() sends it before it waits for the next message
        # Busy means drain() is in the middle of a (short) read: it settles right after.
        if self._lock.acquire(blocking=False):
            try:
                self._perform_settles()
            finally:
                self._lock.release()

    def _settles_can_wait(self, raw: Any) -> bool:
        """True while queued acks may wait: a few, and a message is ready to be read.

        Call with ``_lock`` held and acks queued; ``raw`` is the consuming
        connection (:meth:`_raw_connection`). A redelivery after a crash may then
        repeat up to :attr:`max_coalesced_acks` handled messages (at-least-once allows it).
        """
        if (len(self._settles) >= self.max_coalesced_acks or not self._is_amqp
                or self._config.ssl or raw is None):
            return False
        transport = raw.transport
        sock = transport.sock if transport is not None else None
        return sock is not None and self._ack_poll(sock)

    def _perform_settles(self) -> None:
        """Send queued acks/rejects; call with ``_lock`` held.

        A channel's acks with nothing else queued for it, covering every
        message received on it up to the highest, go as one ``basic.ack``
        with ``multiple``; anything else goes one by one, in order.
        """
        queued = self._settles
        if not queued:
            return
        # Taken one by one: other threads append without the lock (list() then clear()
        # could drop an ack appended in between).
        settles = [queued.popleft()]
        while queued:
            settles.append(queued.popleft())
        if settles[1:]:
            settles = self._coalesced(settles)
        for delivery, requeue in settles:
            if (self._conn is None or self._broken or delivery._generation != self._generation
                    or delivery._channel is None):
                LOG.debug("dropping ack of %r: its connection is gone", delivery)
                continue
            consumer = delivery._consumer
            try:
                if requeue is None and delivery._multiple:
                    delivery._channel.basic_ack(delivery._delivery_tag, multiple=True)
                elif requeue is None:
                    delivery._channel.basic_ack(delivery._delivery_tag)
                else:
                    delivery._channel.basic_reject(delivery._delivery_tag, requeue=requeue)
            except self._connection_errors + self._channel_errors as exc:
                # drain() reconnects; the broker redelivers what was not acked.
                LOG.warning("could not settle %r (%s: %s)", delivery, type(exc).__name__, exc)
                self._broken = True
                continue
            if consumer is not None and delivery._channel is consumer.channel:
                if requeue is None and delivery._multiple:
                    tag = delivery._delivery_tag
                    consumer.received = {t for t in consumer.received if t > tag}
                else:
                    consumer.received.discard(delivery._delivery_tag)

    def _coalesced(self, settles: List[Tuple[KombuDelivery, Optional[bool]]]
                   ) -> List[Tuple[KombuDelivery, Optional[bool]]]:
        """``settles`` with each channel's acks made one ``multiple`` ack where that is exact."""
        by_channel: Dict[int, List[Tuple[KombuDelivery, Optional[bool]]]] = {}
        for item in settles:
            by_channel.setdefault(id(item[0]._channel), []).append(item)
        result: List[Tuple[KombuDelivery, Optional[bool]]] = []
        for items in by_channel.values():
            consumer = items[0][0]._consumer
            if (len(items) > 1 and consumer is not None
                    and all(d._consumer is consumer and d._channel is consumer.channel
                            and requeue is None for d, requeue in items)):
                tags = {d._delivery_tag for d, _ in items}
                last = max(items, key=lambda item: item[0]._delivery_tag)[0]
                highest = last._delivery_tag
                if all(t in tags for t in consumer.received if t <= highest):
                    last._multiple = True
                    result.append((last, None))
                    continue
            result.extend(items)
        return result
