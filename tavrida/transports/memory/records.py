"""The small records of the in-memory broker: messages, queues, exchanges, consumers, deliveries.

Shared by :mod:`.broker` (which keeps them under its lock) and
:mod:`.inbox` (which hands deliveries to callbacks); none of them has a
lock of its own. Everything that crosses the broker is copied here, so a
consumer never shares mutable state with its publisher.
"""

from __future__ import annotations

import collections
import copy
import datetime
import decimal
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tavrida import exceptions
from tavrida.transports.base import DelayQueue, Delivery, OnMessage, OutgoingEnvelope
from tavrida.transports.topic import is_wildcard, topic_matcher

if TYPE_CHECKING:
    from tavrida.transports.memory.inbox import Inbox

__all__ = ["MemoryDelivery", "MemoryTransportError"]

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
        return copy_table(value)
    if kind is list:
        return [_copy_value(item) for item in value]
    if kind is tuple:
        return tuple(_copy_value(item) for item in value)
    return copy.deepcopy(value)


def copy_table(table: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep copy of a header table (plain ones are copied shallowly: their values are atomic)."""
    if not table:
        return {}
    if _ATOMIC.issuperset(map(type, table.values())):
        return dict(table)  # the usual table: strings and numbers only
    return {key: value if type(value) in _ATOMIC else _copy_value(value)
            for key, value in table.items()}


# --------------------------------------------------------------------------- broker records


class StoredMessage:
    """A published message as the broker keeps it; never handed out itself."""

    __slots__ = ("body", "exchange", "headers", "mandatory", "properties", "routing_key")

    def __init__(self, envelope: OutgoingEnvelope) -> None:
        self.body = bytes(envelope.body)
        self.headers = copy_table(envelope.headers)
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


class QueueRecord:
    """FIFO of ready ``(message, redelivered)`` pairs plus its consumers."""

    __slots__ = ("bindings", "consumers", "delay_ms", "delay_target", "live", "messages", "name",
                 "next_consumer", "owner")

    def __init__(self, name: str, owner: Inbox | None = None,
                 delay: DelayQueue | None = None) -> None:
        self.name = name
        #: A delay queue (see :mod:`.delays`): how long it holds messages, and for whom.
        self.delay_ms = 0 if delay is None else delay.delay_ms
        self.delay_target = "" if delay is None else delay.target
        self.messages: collections.deque[tuple[StoredMessage, bool]] = collections.deque()
        self.consumers: list[ConsumerRecord] = []
        self.next_consumer = 0
        #: (exchange, binding key) pairs, to unbind when the queue goes.
        self.bindings: dict[tuple[str, str], None] = {}
        #: The inbox of the transport whose close() deletes this queue (reply queues).
        self.owner = owner
        #: False once deleted (a queue declared again under its name is a new one).
        self.live = True


class ExchangeRecord:
    """A topic exchange: bindings plus an index and a cache for routing."""

    __slots__ = ("bindings", "cache", "exact", "name", "wildcard")

    def __init__(self, name: str) -> None:
        self.name = name
        #: (binding key, queue name) -> queue, in the order they were bound.
        self.bindings: dict[tuple[str, str], QueueRecord] = {}
        self.exact: dict[str, list[QueueRecord]] = {}
        self.wildcard: list[tuple[str, Callable[[str], bool], QueueRecord]] = []
        self.cache: dict[str, tuple[QueueRecord, ...]] = {}

    def bind(self, pattern: str, queue: QueueRecord) -> None:
        if (pattern, queue.name) in self.bindings:
            return
        self.bindings[(pattern, queue.name)] = queue
        if is_wildcard(pattern):
            self.wildcard.append((pattern, topic_matcher(pattern), queue))
        else:
            self.exact.setdefault(pattern, []).append(queue)
        self.cache.clear()

    def unbind(self, pattern: str, queue: QueueRecord) -> None:
        if self.bindings.pop((pattern, queue.name), None) is None:
            return
        if is_wildcard(pattern):
            self.wildcard = [entry for entry in self.wildcard
                             if entry[0] != pattern or entry[2] is not queue]
        else:
            queues = self.exact[pattern]
            queues.remove(queue)
            if not queues:
                del self.exact[pattern]
        self.cache.clear()

    def route(self, routing_key: str) -> tuple[QueueRecord, ...]:
        """Queues with at least one binding matching ``routing_key``, each once."""
        targets = self.cache.get(routing_key)
        if targets is None:
            found: dict[str, QueueRecord] = {}
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


class ConsumerRecord:
    """One consume() registration: a queue, a callback, a prefetch window, the inbox it feeds."""

    __slots__ = ("callback", "inbox", "prefetch", "queue", "unacked")

    def __init__(self, queue: QueueRecord, callback: OnMessage, prefetch: int,
                 inbox: Inbox) -> None:
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.unacked = 0
        self.inbox = inbox


# Delivery states (also the words error messages use).
OPEN = "open"
ACKED = "acked"
REJECTED = "rejected"
REQUEUED = "rejected and requeued"
RETURNED = "requeued when its transport closed"


class MemoryDelivery(Delivery):
    """A message handed to one consumer; its own copies of headers and properties.

    ``consumer``, ``source`` (the queue record), ``stored`` (the broker's
    message) and ``state`` are the broker's and the inbox's bookkeeping.
    """

    def __init__(self, inbox: Inbox, consumer: ConsumerRecord, queue: QueueRecord,
                 message: StoredMessage, redelivered: bool, tag: int) -> None:
        self.body = message.body
        self.exchange = message.exchange
        self.routing_key = message.routing_key
        self.queue = queue.name
        self.redelivered = redelivered
        self.delivery_tag = tag
        self.consumer = consumer
        self.source = queue
        self.stored = message
        self.state = OPEN
        self._inbox = inbox

    def ack(self) -> None:
        """Remove the message from the broker for good."""
        self._inbox.settle(self, ACKED)

    def reject(self, requeue: bool) -> None:
        """Put the message back at the head of its queue, or drop it."""
        self._inbox.settle(self, REQUEUED if requeue else REJECTED)

    def __repr__(self) -> str:
        return (f"<MemoryDelivery #{self.delivery_tag} {self.exchange!r}/{self.routing_key!r}"
                f" -> {self.queue!r}: {self.state}>")
