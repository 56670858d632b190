"""The in-process broker behind :class:`~tavrida.transports.memory.MemoryTransport`.

Exchanges, queues, bindings and the messages they hold, for one virtual
host, and the deliveries it hands to the transports' consumers. Kept apart
from the transport (connections, draining, settling) as RabbitMQ is from
its clients; :mod:`tavrida.transports.memory` re-exports :class:`MemoryBroker`.
About 500 lines: the broker's routing, queues, round-robin dispatch and
the offers of the in-thread path share one lock and one set of small
records, and read best whole.
"""

from __future__ import annotations

import collections
import copy
import datetime
import decimal
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from tavrida import exceptions
from tavrida.transports.base import Binding, DelayQueue, Delivery, OnMessage, OutgoingEnvelope
from tavrida.transports.memory_delays import MemoryDelays
from tavrida.transports.topic import is_wildcard as _is_wildcard
from tavrida.transports.topic import topic_matcher as _topic_matcher

if TYPE_CHECKING:
    from tavrida.transports.memory import MemoryTransport

LOG = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXCHANGE", "MemoryBroker", "MemoryDelivery", "MemoryTransportError"]

#: The nameless exchange that routes straight to the queue named by the key.
DEFAULT_EXCHANGE = ""
#: Routing keys remembered per exchange before the route cache starts afresh.
_ROUTE_CACHE_SIZE = 4096


class MemoryTransportError(exceptions.TavridaError, RuntimeError):
    """Misuse of the in-memory transport: double ack, use after close, ..."""

    message_template = "Memory transport: %(reason)s"


# --------------------------------------------------------------------------- copying


_ATOMIC = frozenset({
    str, bytes, int, float, bool, complex, type(None), decimal.Decimal,
    datetime.datetime, datetime.date, datetime.time, datetime.timedelta, uuid.UUID,
})


def _copy_value(value: Any) -> Any:
    """Deep copy, fast for the plain JSON-like values header tables hold."""
    kind = type(value)
    if kind in _ATOMIC:
        return value
    if kind is dict:
        return _copy_table(value)
    if kind is list:
        return [_copy_value(item) for item in value]
    if kind is tuple:
        return tuple(_copy_value(item) for item in value)
    return copy.deepcopy(value)


def _copy_table(table: Mapping[str, Any] | None) -> dict[str, Any]:
    if not table:
        return {}
    if _ATOMIC.issuperset(map(type, table.values())):
        return dict(table)  # the usual table: strings and numbers only
    return {key: value if type(value) in _ATOMIC else _copy_value(value)
            for key, value in table.items()}


# --------------------------------------------------------------------------- broker objects


class _Message:
    """A published message as the broker keeps it; never handed out itself."""

    __slots__ = ("body", "exchange", "headers", "mandatory", "properties", "routing_key")

    def __init__(self, envelope: OutgoingEnvelope) -> None:
        self.body = bytes(envelope.body)
        self.headers = _copy_table(envelope.headers)
        properties: dict[str, Any] = {}
        if envelope.content_type is not None:
            properties["content_type"] = envelope.content_type
        if envelope.content_encoding is not None:
            properties["content_encoding"] = envelope.content_encoding
        properties["delivery_mode"] = 2 if envelope.persistent else 1
        self.properties = properties
        self.exchange = envelope.exchange
        self.routing_key = envelope.routing_key
        self.mandatory = envelope.mandatory


class _Queue:
    """FIFO of ready ``(message, redelivered)`` pairs plus its consumers."""

    __slots__ = ("bindings", "consumers", "delay_ms", "delay_target", "live", "messages", "name",
                 "next_consumer", "owner")

    def __init__(self, name: str, owner: MemoryTransport | None = None,
                 delay: DelayQueue | None = None) -> None:
        self.name = name
        #: A delay queue (see :mod:`.memory_delays`): how long it holds messages, and for whom.
        self.delay_ms = 0 if delay is None else delay.delay_ms
        self.delay_target = "" if delay is None else delay.target
        self.messages: collections.deque[tuple[_Message, bool]] = collections.deque()
        self.consumers: list[_Consumer] = []
        self.next_consumer = 0
        #: (exchange, binding key) pairs, to unbind when the queue goes.
        self.bindings: dict[tuple[str, str], None] = {}
        #: The transport whose close() deletes this queue (reply queues).
        self.owner = owner
        #: False once deleted (a queue declared again under its name is a new one).
        self.live = True


class _Exchange:
    """A topic exchange: bindings plus an index and a cache for routing."""

    __slots__ = ("bindings", "cache", "exact", "name", "wildcard")

    def __init__(self, name: str) -> None:
        self.name = name
        #: (binding key, queue name) -> queue, in the order they were bound.
        self.bindings: dict[tuple[str, str], _Queue] = {}
        self.exact: dict[str, list[_Queue]] = {}
        self.wildcard: list[tuple[str, Callable[[str], bool], _Queue]] = []
        self.cache: dict[str, tuple[_Queue, ...]] = {}

    def bind(self, pattern: str, queue: _Queue) -> None:
        if (pattern, queue.name) in self.bindings:
            return
        self.bindings[(pattern, queue.name)] = queue
        if _is_wildcard(pattern):
            self.wildcard.append((pattern, _topic_matcher(pattern), queue))
        else:
            self.exact.setdefault(pattern, []).append(queue)
        self.cache.clear()

    def unbind(self, pattern: str, queue: _Queue) -> None:
        if self.bindings.pop((pattern, queue.name), None) is None:
            return
        if _is_wildcard(pattern):
            self.wildcard = [entry for entry in self.wildcard
                             if entry[0] != pattern or entry[2] is not queue]
        else:
            queues = self.exact[pattern]
            queues.remove(queue)
            if not queues:
                del self.exact[pattern]
        self.cache.clear()

    def route(self, routing_key: str) -> tuple[_Queue, ...]:
        """Queues with at least one binding matching ``routing_key``, each once."""
        targets = self.cache.get(routing_key)
        if targets is None:
            found: dict[str, _Queue] = {}
            for queue in self.exact.get(routing_key, ()):
                found[queue.name] = queue
            for _, matches, queue in self.wildcard:
                if queue.name not in found and matches(routing_key):
                    found[queue.name] = queue
            targets = tuple(found.values())
            if len(self.cache) >= _ROUTE_CACHE_SIZE:
                self.cache.clear()
            self.cache[routing_key] = targets
        return targets


class _Consumer:
    """One consume() registration: a queue, a callback and a prefetch window."""

    __slots__ = ("callback", "prefetch", "queue", "transport", "unacked")

    def __init__(self, queue: _Queue, callback: OnMessage, prefetch: int,
                 transport: MemoryTransport) -> None:
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.unacked = 0
        self.transport = transport


# Delivery states (also the words error messages use).
_OPEN = "open"
_ACKED = "acked"
_REJECTED = "rejected"
_REQUEUED = "rejected and requeued"
_RETURNED = "requeued when its transport closed"


class MemoryDelivery(Delivery):
    """A message handed to one consumer; its own copies of headers and properties."""

    def __init__(self, transport: MemoryTransport, consumer: _Consumer, queue: _Queue,
                 message: _Message, redelivered: bool, tag: int) -> None:
        self.body = message.body
        self.exchange = message.exchange
        self.routing_key = message.routing_key
        self.queue = queue.name
        self.redelivered = redelivered
        self.delivery_tag = tag
        self._transport = transport
        self._consumer = consumer
        self._queue = queue
        self._message = message
        self._state = _OPEN

    def ack(self) -> None:
        """Remove the message from the broker for good."""
        self._transport._settle(self, _ACKED)

    def reject(self, requeue: bool) -> None:
        """Put the message back at the head of its queue, or drop it."""
        self._transport._settle(self, _REQUEUED if requeue else _REJECTED)

    def __repr__(self) -> str:
        return (f"<MemoryDelivery #{self.delivery_tag} {self.exchange!r}/{self.routing_key!r}"
                f" -> {self.queue!r}: {self._state}>")


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
        #: :meth:`MemoryTransport.drain`); the call then returns only once the handler
        #: is done, even after its timeout, and a handler that never returns holds
        #: its caller for ever.
        self.inline_calls = False
        self._exchanges: dict[str, _Exchange] = {}
        self._queues: dict[str, _Queue] = {}
        self._tags = itertools.count(1)
        #: Transports given deliveries while their drain was blocked: a caller may run them.
        self._offers: collections.deque[MemoryTransport] = collections.deque()
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
        return [(_copy_table(message.headers), message.body) for message, _ in entries]

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

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            raise MemoryTransportError(reason=f"no queue {name!r} in {self!r}")
        return queue

    # ------------------------------------------------------------------ with the lock held

    def _declare(self, exchanges: Iterable[str], queues: Iterable[str],
                 bindings: Iterable[Binding], owner: MemoryTransport | None = None,
                 delays: Iterable[DelayQueue] = ()) -> None:
        """Declare everything or nothing: names are checked before any change."""
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
            self._exchanges.setdefault(name, _Exchange(name))
        for name in queues:
            if name not in self._queues:
                self._queues[name] = _Queue(name, owner)
                if owner is not None:
                    owner._reply_queues.append(name)
        for delay in delays:
            if delay.name not in self._queues:
                self._queues[delay.name] = _Queue(delay.name, delay=delay)
                self.delays.add(self._queues[delay.name])
        for binding in bindings:
            queue = self._queues[binding.queue]
            self._exchanges[binding.exchange].bind(binding.routing_key, queue)
            queue.bindings[(binding.exchange, binding.routing_key)] = None

    def _delete_exchange(self, name: str) -> None:
        if name == DEFAULT_EXCHANGE:
            raise exceptions.IncorrectAMQPConfig(reason="the default exchange cannot be deleted")
        exchange = self._exchanges.pop(name, None)
        if exchange is not None:
            for (pattern, _), queue in exchange.bindings.items():
                queue.bindings.pop((name, pattern), None)

    def _delete_queue(self, name: str) -> None:
        """Drop the queue, its ready messages, bindings and consumers."""
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
            consumer.transport._consumers.remove(consumer)
        queue.consumers.clear()
        queue.messages.clear()
        if queue.owner is not None and name in queue.owner._reply_queues:
            queue.owner._reply_queues.remove(name)

    def _publish(self, message: _Message) -> None:
        if message.exchange == DEFAULT_EXCHANGE:
            queue = self._queues.get(message.routing_key)
            targets: tuple[_Queue, ...] = () if queue is None else (queue,)
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
                self._dispatch(queue)
            elif queue.delay_ms:
                self.delays.hold(queue)

    def _dispatch(self, queue: _Queue) -> None:
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
            transport = consumer.transport
            tag = next(tags)
            delivery = MemoryDelivery(transport, consumer, queue, message, redelivered, tag)
            consumer.unacked += 1
            transport._unacked[tag] = delivery
            transport._pending.append(delivery)
            if transport._waiting and not transport._borrowed:
                transport._wake()
                if not transport._offered and not transport._reply_queues:
                    transport._offered = True
                    self._offers.append(transport)

    def _borrow(self) -> tuple[MemoryTransport, collections.deque[MemoryDelivery]] | None:
        """Take the pending batch of a transport whose drain is blocked, for a caller to run.

        The owner's drain stays blocked until the caller gives the batch
        back (see :meth:`MemoryTransport._help`).
        """
        offers = self._offers
        while offers:
            owner = offers.popleft()
            owner._offered = False
            if owner._waiting and owner._pending and not owner._borrowed and not owner._closed:
                owner._borrowed = True
                batch = owner._pending
                owner._pending = collections.deque()
                return owner, batch
        return None

    def _cancel(self, consumer: _Consumer) -> None:
        queue = consumer.queue
        index = queue.consumers.index(consumer)
        del queue.consumers[index]
        if index < queue.next_consumer:
            queue.next_consumer -= 1
        if queue.next_consumer >= len(queue.consumers):
            queue.next_consumer = 0
