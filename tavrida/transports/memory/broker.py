"""The in-process broker behind :class:`~tavrida.transports.memory.MemoryTransport`.

Exchanges, queues, bindings and the messages they hold, for one virtual
host, and the deliveries it pushes to the transports' consumers. Kept apart
from the transport as RabbitMQ is from its clients: the broker reaches a
transport only through its :class:`~tavrida.transports.memory.inbox.Inbox`
(push a delivery, lend a batch, forget a consumer or a reply queue), and a
transport reaches the broker only through the methods below, those under
"with the lock held" called with :attr:`MemoryBroker.lock` held.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from tavrida import exceptions
from tavrida.transports.base import Binding, DelayQueue, OnMessage
from tavrida.transports.memory.delays import MemoryDelays
from tavrida.transports.memory.records import (
    RETURNED,
    ConsumerRecord,
    ExchangeRecord,
    MemoryDelivery,
    MemoryTransportError,
    QueueRecord,
    StoredMessage,
    copy_table,
)

if TYPE_CHECKING:
    from tavrida.transports.memory.inbox import Inbox

LOG = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXCHANGE", "MemoryBroker"]

#: The nameless exchange that routes straight to the queue named by the key.
DEFAULT_EXCHANGE = ""


class MemoryBroker:
    """The in-process broker of one virtual host, shared by its transports.

    All state is guarded by :attr:`lock`; it is held only for dictionary and
    deque operations, never while a callback runs.
    """

    _registry: ClassVar[dict[str, MemoryBroker]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "/") -> None:
        self.name = name
        self.lock = threading.Lock()
        #: Messages that matched no queue and were dropped.
        self.unroutable = 0
        #: False: a ``mandatory`` message no queue takes raises Unroutable (as
        #: RabbitMQ returns it). True: it is dropped and counted like any other
        #: (test harnesses whose services talk to peers that are not running).
        self.drop_unroutable = False
        #: False (the default): every callback runs in its own transport's thread,
        #: so a call times out on a slow or stuck handler as on a broker. True (opt-in,
        #: for speed): a blocking call's drain runs the callbacks of a server whose own
        #: thread waits for work, in the caller's thread (see
        #: :meth:`~tavrida.transports.memory.MemoryTransport.drain`); the call then
        #: returns only once the handler is done, even after its timeout, and a
        #: handler that never returns holds its caller for ever.
        self.inline_calls = False
        self._exchanges: dict[str, ExchangeRecord] = {}
        self._queues: dict[str, QueueRecord] = {}
        self._tags = itertools.count(1)
        #: Inboxes given deliveries while their drain was blocked: a caller may run them.
        self._offers: collections.deque[Inbox] = collections.deque()
        #: The delay queues' due times and the broker's clock.
        self.delays = MemoryDelays()

    @classmethod
    def get(cls, name: str = "/") -> MemoryBroker:
        """The broker of virtual host ``name``, created on first use."""
        with cls._registry_lock:
            broker = cls._registry.get(name)
            if broker is None:
                broker = cls._registry[name] = cls(name)
            return broker

    @classmethod
    def reset(cls, name: str | None = None) -> None:
        """Forget the broker ``name`` (every broker if None), for test isolation.

        Transports already open keep the old broker; new ones get a fresh one.
        """
        with cls._registry_lock:
            if name is None:
                cls._registry.clear()
            else:
                cls._registry.pop(name, None)

    def __repr__(self) -> str:
        return f"<MemoryBroker {self.name!r}>"

    # ------------------------------------------------------------------ introspection

    def exchange_names(self) -> list[str]:
        """Declared exchanges, in declaration order (the default one excluded)."""
        with self.lock:
            return list(self._exchanges)

    def queue_names(self) -> list[str]:
        """Declared queues, in declaration order."""
        with self.lock:
            return list(self._queues)

    def bindings(self) -> list[Binding]:
        """Every binding, per exchange in the order they were made."""
        with self.lock:
            return [Binding(queue_name, exchange.name, pattern)
                    for exchange in self._exchanges.values()
                    for pattern, queue_name in exchange.bindings]

    def messages(self, queue: str) -> list[tuple[dict[str, Any], bytes]]:
        """Copies of the ``(headers, body)`` ready in ``queue``, head first."""
        with self.lock:
            entries = list(self._queue(queue).messages)
        return [(copy_table(message.headers), message.body) for message, _ in entries]

    def queue_size(self, queue: str) -> int | None:
        """Messages ready in ``queue`` (not handed to a consumer); None if no such queue."""
        with self.lock:
            found = self._queues.get(queue)
            return None if found is None else len(found.messages)

    def consumer_count(self, queue: str) -> int:
        """Consumers currently registered on ``queue``."""
        with self.lock:
            return len(self._queue(queue).consumers)

    def advance(self, seconds: float) -> int:
        """Move the broker's clock ``seconds`` ahead: what is due then leaves its delay queue.

        Lets a test run a long retry backoff at once. Returns how many
        messages moved to their queue (waiting drains wake up for them).
        """
        with self.lock:
            self.delays.skipped += max(seconds, 0.0)
            return self.delays.release(self)

    def _queue(self, name: str) -> QueueRecord:
        queue = self._queues.get(name)
        if queue is None:
            raise MemoryTransportError(reason=f"no queue {name!r} in {self!r}")
        return queue

    # ------------------------------------------------------------------ with the lock held

    def find_queue(self, name: str) -> QueueRecord | None:
        """The queue named ``name``, if declared."""
        return self._queues.get(name)

    def declare_all(self, exchanges: Iterable[str], queues: Iterable[str],
                    bindings: Iterable[Binding], owner: Inbox | None = None,
                    delays: Iterable[DelayQueue] = ()) -> None:
        """Declare everything or nothing: names are checked before any change.

        Queues declared with an ``owner`` are its reply queues: exclusive to
        it and deleted when its transport closes.
        """
        exchanges = [name for name in exchanges if name not in self._exchanges]
        for name in exchanges:
            if not isinstance(name, str) or name == DEFAULT_EXCHANGE:
                raise exceptions.IncorrectAMQPConfig(
                    reason=f"cannot declare exchange {name!r}: the default exchange "
                           "always exists and other names must be non-empty strings")
        queues = list(queues)
        for name in queues:
            if not isinstance(name, str) or not name:
                raise exceptions.IncorrectAMQPConfig(
                    reason=f"queue names must be non-empty strings, got {name!r}")
            existing = self._queues.get(name)
            if owner is not None and existing is not None and existing.owner is not owner:
                if existing.owner is None:
                    raise exceptions.IncorrectAMQPConfig(
                        reason=f"cannot declare reply queue {name!r}: it exists as a "
                               "durable queue")
                raise exceptions.QueueLocked(
                    queue=name,
                    reason="another connection holds it as its exclusive queue (another "
                           "client running with this reply queue name?); give each client "
                           "a reply queue of its own")
        bindings = list(bindings)
        for binding in bindings:
            if binding.exchange == DEFAULT_EXCHANGE:
                raise exceptions.IncorrectAMQPConfig(
                    reason=f"cannot bind queue {binding.queue!r} to the default exchange")
            if binding.exchange not in self._exchanges and binding.exchange not in exchanges:
                raise exceptions.IncorrectAMQPConfig(
                    reason=f"cannot bind queue {binding.queue!r} with key "
                           f"{binding.routing_key!r}: exchange {binding.exchange!r} "
                           "is not declared")
            if binding.queue not in self._queues and binding.queue not in queues:
                raise exceptions.IncorrectAMQPConfig(
                    reason=f"cannot bind exchange {binding.exchange!r} with key "
                           f"{binding.routing_key!r}: queue {binding.queue!r} is not declared")
        for name in exchanges:
            self._exchanges.setdefault(name, ExchangeRecord(name))
        for name in queues:
            if name not in self._queues:
                self._queues[name] = QueueRecord(name, owner)
                if owner is not None:
                    owner.add_reply_queue(name)
        for delay in delays:
            if delay.name not in self._queues:
                self._queues[delay.name] = QueueRecord(delay.name, delay=delay)
                self.delays.add(self._queues[delay.name])
        for binding in bindings:
            queue = self._queues[binding.queue]
            self._exchanges[binding.exchange].bind(binding.routing_key, queue)
            queue.bindings[(binding.exchange, binding.routing_key)] = None

    def delete_exchange(self, name: str) -> None:
        """Drop exchange ``name`` and its bindings (nothing if missing)."""
        if name == DEFAULT_EXCHANGE:
            raise exceptions.IncorrectAMQPConfig(reason="the default exchange cannot be deleted")
        exchange = self._exchanges.pop(name, None)
        if exchange is not None:
            for (pattern, _), queue in exchange.bindings.items():
                queue.bindings.pop((name, pattern), None)

    def delete_queue(self, name: str) -> None:
        """Drop the queue, its ready messages, bindings and consumers (nothing if missing)."""
        queue = self._queues.pop(name, None)
        if queue is None:
            return
        queue.live = False
        if queue.delay_ms:
            self.delays.remove(queue)
        for exchange_name, pattern in queue.bindings:
            exchange = self._exchanges.get(exchange_name)
            if exchange is not None:
                exchange.unbind(pattern, queue)
        for consumer in queue.consumers:
            consumer.inbox.forget_consumer(consumer)
        queue.consumers.clear()
        queue.messages.clear()
        if queue.owner is not None:
            queue.owner.forget_reply_queue(name)

    def route(self, message: StoredMessage) -> None:
        """Put ``message`` in every queue it is routed to, and push it to their consumers.

        Raises PublishFailed for an exchange that does not exist, Unroutable
        for a ``mandatory`` message no queue takes (unless
        :attr:`drop_unroutable`).
        """
        if message.exchange == DEFAULT_EXCHANGE:
            queue = self._queues.get(message.routing_key)
            targets: tuple[QueueRecord, ...] = () if queue is None else (queue,)
        else:
            exchange = self._exchanges.get(message.exchange)
            if exchange is None:
                raise exceptions.PublishFailed(
                    exchange=message.exchange, routing_key=message.routing_key,
                    reason=f"no exchange {message.exchange!r} in {self!r}")
            targets = exchange.route(message.routing_key)
        if not targets:
            self.unroutable += 1
            if message.mandatory and not self.drop_unroutable:
                raise exceptions.Unroutable(
                    exchange=message.exchange, routing_key=message.routing_key,
                    reason=f"no queue is bound with a matching key in {self!r}",
                    unroutable=[0])
            LOG.debug("nobody takes %s/%s: dropped", message.exchange, message.routing_key)
            return
        for queue in targets:
            queue.messages.append((message, False))
            if queue.consumers:
                self.dispatch(queue)
            elif queue.delay_ms:
                self.delays.hold(queue)

    def dispatch(self, queue: QueueRecord) -> None:
        """Hand ready messages to consumers with room, round-robin, as RabbitMQ pushes."""
        consumers = queue.consumers
        messages = queue.messages
        count = len(consumers)
        tags = self._tags
        while messages and count:
            if count == 1:
                consumer = consumers[0]
                if consumer.prefetch and consumer.unacked >= consumer.prefetch:
                    return
            else:
                start = queue.next_consumer
                for offset in range(count):
                    index = (start + offset) % count
                    consumer = consumers[index]
                    if not consumer.prefetch or consumer.unacked < consumer.prefetch:
                        break
                else:
                    return
                queue.next_consumer = (index + 1) % count
            message, redelivered = messages.popleft()
            inbox = consumer.inbox
            delivery = MemoryDelivery(inbox, consumer, queue, message, redelivered, next(tags))
            consumer.unacked += 1
            if inbox.push(delivery):
                self._offers.append(inbox)

    def subscribe(self, queue: str, callback: OnMessage, prefetch: int,
                  inbox: Inbox) -> None:
        """Add a consumer of ``queue`` feeding ``inbox``, and push it what is ready."""
        found = self._queues.get(queue)
        if found is None or found.delay_ms:
            raise exceptions.IncorrectAMQPConfig(
                reason=f"cannot consume from queue {queue!r}: it is "
                       + ("a delay queue" if found else "not declared"))
        consumer = ConsumerRecord(found, callback, prefetch, inbox)
        found.consumers.append(consumer)
        inbox.add_consumer(consumer)
        self.dispatch(found)

    def unsubscribe(self, consumer: ConsumerRecord) -> None:
        """Remove ``consumer`` from its queue (its inbox forgets it itself)."""
        queue = consumer.queue
        index = queue.consumers.index(consumer)
        del queue.consumers[index]
        if index < queue.next_consumer:
            queue.next_consumer -= 1
        if queue.next_consumer >= len(queue.consumers):
            queue.next_consumer = 0

    def settled(self, delivery: MemoryDelivery, requeue: bool) -> None:
        """``delivery`` was acked or rejected: free its prefetch room, requeue it if asked."""
        delivery.consumer.unacked -= 1
        queue = delivery.source
        if not queue.live:
            return
        if requeue:
            queue.messages.appendleft((delivery.stored, True))
        if queue.messages and queue.consumers:
            self.dispatch(queue)

    def give_back(self, deliveries: Iterable[MemoryDelivery],
                  redelivered: bool | None = None) -> None:
        """Put un-settled ``deliveries`` back at the head of their queues, in their order.

        ``redelivered`` marks them so (None: as they were); then the queues
        push them again to consumers with room.
        """
        touched: dict[str, QueueRecord] = {}
        for delivery in reversed(list(deliveries)):
            delivery.state = RETURNED
            delivery.consumer.unacked -= 1
            queue = delivery.source
            if queue.live:
                again = delivery.redelivered if redelivered is None else redelivered
                queue.messages.appendleft((delivery.stored, again))
                touched[queue.name] = queue
        for queue in touched.values():
            if queue.live:
                self.dispatch(queue)

    def borrow(self) -> tuple[Inbox, collections.deque[MemoryDelivery]] | None:
        """Take the pending batch of an inbox whose drain is blocked, for a caller to run.

        The owner's drain stays blocked until the caller gives the batch
        back (see :meth:`Inbox.drain <tavrida.transports.memory.inbox.Inbox.drain>`).
        """
        offers = self._offers
        while offers:
            owner = offers.popleft()
            batch = owner.lend()
            if batch is not None:
                return owner, batch
        return None

    def withdraw(self, inbox: Inbox) -> None:
        """Forget the offer of ``inbox`` (its transport closes)."""
        if inbox in self._offers:
            self._offers.remove(inbox)
