"""Consumers: start, cancel and resume them, turn broker messages into deliveries.

Each consumer has its own channel (its own prefetch window). kombu's
``Consumer`` is not used: it decodes bodies and wraps them in kombu
messages (tavrida hands bytes and headers on untouched), and it has no
``on_cancel`` for RabbitMQ cancelling a consumer whose queue was deleted;
each consumer is a ``basic_consume`` on a channel of its own instead.
Deliveries received wait in :class:`ConsumerSet` until the draining thread
hands them out (:meth:`.Settlement.hand_out`), outside the connection's lock.
"""

from __future__ import annotations

import collections
import functools
import logging
from typing import Any, Deque, Dict, Iterable, List, Tuple

import amqp

from tavrida.transports.base import OnMessage
from tavrida.transports.kombu.compat.pyamqp import PROPERTY_NAMES, PROPERTY_SET, text_key
from tavrida.transports.kombu.compat.redis_fetch import RedisFetch
from tavrida.transports.kombu.compat.virtual import (
    ORIGIN,
    own_copies,
    public_payload,
    raw_payload,
)
from tavrida.transports.kombu.connector import REDIS_SCHEMES
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.deliveries import Consumer, KombuDelivery
from tavrida.transports.kombu.settlement import Settlement

LOG = logging.getLogger(__name__)

#: A delivery received and the callback it goes to.
Ready = Tuple[KombuDelivery, OnMessage]


def close_channel(channel: Any) -> None:
    """Close ``channel`` (None: nothing), ignoring errors: closing is best effort."""
    if channel is None:
        return
    try:
        channel.close()
    except Exception:  # closing is best effort
        LOG.debug("ignoring error while closing a channel", exc_info=True)


class ConsumerSet:
    """The consumers of the consuming connection and the deliveries they received.

    Guarded by the consuming connection's lock, except :attr:`ready`, which
    the draining thread empties outside it (:meth:`.Settlement.hand_out`;
    deque operations are atomic).
    """

    def __init__(self, context: KombuContext, settlement: Settlement) -> None:
        self._context = context
        self._settlement = settlement
        self.consumers: List[Consumer] = []
        #: Consumers RabbitMQ cancelled (their queue was deleted), to declare and resume.
        self.resume: List[Consumer] = []
        #: Deliveries received, not yet handed out (by the draining thread).
        self.ready: Deque[Ready] = collections.deque()

    def start(self, consumer: Consumer, conn: Any, generation: int) -> None:
        """Open ``consumer``'s channel on ``conn`` and consume its queue."""
        context = self._context
        channel = context.connector.channel(conn)
        consumer.channel = channel
        consumer.received = set()
        if not context.is_amqp:
            own_copies(channel, consumer.queue)
        if context.config.scheme in REDIS_SCHEMES and context.compat.private:
            if consumer.fetch is None:
                consumer.fetch = RedisFetch(consumer.queue, consumer.tag)
            consumer.fetch.recover(channel)
            consumer.fetch.install(channel)
        channel.basic_qos(0, consumer.prefetch_count, False)
        self.basic_consume(consumer, channel, generation)

    def start_all(self, conn: Any, generation: int) -> None:
        """Consume every queue again on a new connection."""
        for consumer in self.consumers:
            self.start(consumer, conn, generation)

    def basic_consume(self, consumer: Consumer, channel: Any, generation: int) -> None:
        """Consume ``consumer``'s queue on ``channel`` (again, after a broker's cancel)."""
        options: Dict[str, Any] = {}
        if self._context.is_amqp:
            # RabbitMQ cancels a consumer whose queue was deleted: declare it again.
            options["on_cancel"] = lambda tag: self.resume.append(consumer)
            callback: Any = functools.partial(self._on_amqp_message, consumer, channel,
                                              generation)
        else:
            callback = functools.partial(self._on_virtual_message, consumer, channel,
                                         generation)
        channel.basic_consume(
            queue=consumer.queue, no_ack=consumer.no_ack, consumer_tag=consumer.tag,
            callback=callback, **options)

    def add(self, consumer: Consumer) -> None:
        """A new consumer: consumed now (:meth:`start`) and after every reconnect."""
        self.consumers.append(consumer)

    def discard(self, consumer: Consumer) -> None:
        """Forget a consumer that could not start, closing its channel."""
        self.consumers.remove(consumer)
        close_channel(consumer.channel)
        consumer.channel = None

    def cancel(self, consumer: Consumer) -> None:
        """Cancel one consumer on the broker (best effort) and close its channel."""
        self.consumers.remove(consumer)
        channel, consumer.channel = consumer.channel, None
        if channel is not None:
            try:
                channel.basic_cancel(consumer.tag)
            except self._context.connection_errors + self._context.channel_errors:
                LOG.debug("could not cancel consumer of %s", consumer.queue, exc_info=True)
            close_channel(channel)

    def cancel_queues(self, queues: Iterable[str]) -> None:
        """Cancel the consumers of these queues (they are being deleted)."""
        queues = set(queues)
        for consumer in [c for c in self.consumers if c.queue in queues]:
            self.cancel(consumer)

    def stop_all(self) -> List[Consumer]:
        """Forget every consumer (not consumed again after a reconnect); the ones stopped."""
        consumers, self.consumers = self.consumers, []
        return consumers

    def cancel_on_broker(self, consumers: List[Consumer]) -> None:
        """``basic.cancel`` each; py-amqp waits for cancel-ok, so what was in flight is in
        :attr:`ready` after. Raises the connection's errors."""
        for consumer in consumers:
            if consumer.channel is not None:
                consumer.channel.basic_cancel(consumer.tag)
                if consumer.fetch is not None:
                    consumer.fetch.recover(consumer.channel)

    def give_back_ready(self) -> None:
        """Queue a requeue of every delivery received and not handed out (answers stay)."""
        answers, others = self._split_ready()
        for delivery, _ in others:
            self._settlement.give_back(delivery)
        self.ready.extendleft(reversed(answers))  # nothing to give back: handed out

    def close(self, control: Any) -> None:
        """Cancel every consumer before the connection closes; what a Redis fetch popped
        goes back to its queue."""
        for consumer in list(self.consumers):
            channel = consumer.channel
            self.cancel(consumer)
            if consumer.fetch is not None and channel is not None:
                # Anything a dead connection popped since: back to the queue.
                consumer.fetch.recover(control)

    def drop(self) -> List[Any]:
        """The connection is gone: forget its channels (returned) and its deliveries.

        Deliveries not yet handed out came on the dead connection: the broker
        redelivers them -- but not those taken without an ack (answers): those
        are still handed out.
        """
        self.resume = []  # a new connection consumes everything again
        channels = [consumer.channel for consumer in self.consumers
                    if consumer.channel is not None]
        for consumer in self.consumers:
            consumer.channel = None
        answers, _ = self._split_ready()
        self.ready.extendleft(reversed(answers))
        return channels

    def _split_ready(self) -> Tuple[List[Ready], List[Ready]]:
        """Take every delivery out of :attr:`ready`: (answers, the others), in order.

        Popped one at a time, never iterated: the draining thread pops from it
        outside the lock meanwhile (iterating a deque another thread changes
        raises RuntimeError).
        """
        answers: List[Ready] = []
        others: List[Ready] = []
        ready = self.ready
        while True:
            try:
                item = ready.popleft()
            except IndexError:
                return answers, others
            (answers if item[0]._no_ack else others).append(item)

    def take_resume(self) -> List[Consumer]:
        """The consumers RabbitMQ cancelled since the last call."""
        resume, self.resume = self.resume, []
        return resume

    def rename(self, old: str, new: str) -> None:
        """A reply queue declared again under a fresh name: its consumer follows."""
        for consumer in self.consumers:
            if consumer.queue == old:
                consumer.queue = new

    def take_answers(self) -> List[Ready]:
        """Deliveries without acks (answers) taken out of :attr:`ready`; others stay."""
        answers, others = self._split_ready()
        self.ready.extendleft(reversed(others))
        return answers

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
            self._settlement, channel, info["delivery_tag"], generation, body, headers,
            properties, exchange or "", routing_key or "", consumer.queue,
            bool(info.get("redelivered")), consumer.no_ack)
        if not consumer.no_ack:
            consumer.received.add(delivery._delivery_tag)
            delivery._consumer = consumer
        # Handed out by drain() once the connection lock is released.
        self.ready.append((delivery, consumer.on_message))

    def _on_virtual_message(self, consumer: Consumer, channel: Any, generation: int,
                            message: Any) -> None:
        """Wrap a kombu virtual message into a Delivery, handed out by drain()."""
        delivery = self._virtual_delivery(consumer, channel, generation, message)
        self.ready.append((delivery, consumer.on_message))

    def _virtual_delivery(self, consumer: Consumer, channel: Any, generation: int,
                          message: Any) -> KombuDelivery:
        # kombu's Message may have decompressed the body: the stored one is read.
        raw = raw_payload(message) if self._context.compat.private else public_payload(message)
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
        return KombuDelivery(self._settlement, channel, props.get("delivery_tag"), generation,
                             body, headers, properties, exchange, routing_key,
                             consumer.queue, redelivered, consumer.no_ack)
