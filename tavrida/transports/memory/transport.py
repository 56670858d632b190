"""The in-memory transport: the :class:`~tavrida.transports.base.Transport` seam over a broker.

A :class:`MemoryTransport` declares, publishes and deletes through its
:class:`~tavrida.transports.memory.MemoryBroker`, and receives through its
:class:`~tavrida.transports.memory.inbox.Inbox`, the only part of it the
broker touches. See :mod:`tavrida.transports.memory` for how the broker
behaves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import (
    Binding,
    Confirmation,
    OnMessage,
    OutgoingEnvelope,
    Topology,
    Transport,
)
from tavrida.transports.memory.broker import MemoryBroker
from tavrida.transports.memory.inbox import Inbox
from tavrida.transports.memory.records import MemoryTransportError, StoredMessage

LOG = logging.getLogger(__name__)

__all__ = ["MemoryTransport"]


class MemoryTransport(Transport):
    """A connection to the in-process broker named by ``config.virtual_host``."""

    holds_delays = True
    publish_never_blocks = True

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self.broker = MemoryBroker.get(config.virtual_host)
        self._lock = self.broker.lock
        #: What the broker pushed to this connection, and the drains waiting for it.
        self.inbox = Inbox(self.broker)

    def __repr__(self) -> str:
        state = "closed" if self.inbox.closed else "open"
        return f"<MemoryTransport {self.config.safe_url!r} {state}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self.inbox.closed

    def _check_open(self) -> None:
        if self.inbox.closed:
            raise MemoryTransportError(reason=f"{self!r} is closed")

    def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues, then bindings; idempotent, all or nothing."""
        with self._lock:
            self._check_open()
            self.broker.declare_all(topology.exchanges, topology.queues, topology.bindings,
                                    delays=topology.delays if self.holds_delays else ())

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare ``queue`` (deleted when this transport closes) and its bindings.

        Exchanges the bindings name are declared if missing.
        """
        bindings = list(bindings)
        with self._lock:
            self._check_open()
            self.broker.declare_all([binding.exchange for binding in bindings], [queue],
                                    bindings, owner=self.inbox)

    def publish(self, envelope: OutgoingEnvelope) -> Confirmation:
        """Route one message; return its Confirmation, settled already.

        Failed (``wait()`` raises) when its exchange does not exist or the
        transport is closed (:class:`~tavrida.exceptions.PublishFailed`), or
        when no queue takes a ``mandatory`` message
        (:class:`~tavrida.exceptions.Unroutable`).
        """
        message = StoredMessage(envelope)
        with self._lock:
            try:
                if self.inbox.closed:
                    raise exceptions.PublishFailed(exchange=envelope.exchange,
                                                   routing_key=envelope.routing_key,
                                                   reason="the transport is closed")
                self.broker.route(message)
            except exceptions.PublishFailed as exc:
                return Confirmation.failed(envelope, exc)
        return Confirmation.confirmed(envelope)

    def consume(self, queue: str, on_message: OnMessage, prefetch_count: int) -> None:
        """Register a consumer; its messages are delivered by :meth:`drain`."""
        if prefetch_count < 0:
            raise exceptions.IncorrectAMQPConfig(reason="prefetch_count must be >= 0")
        with self._lock:
            self._check_open()
            self.broker.subscribe(queue, on_message, prefetch_count, self.inbox)

    def drain(self, timeout: float | None) -> bool:
        """Run callbacks for every message pushed to this transport so far.

        If none is waiting, block up to ``timeout`` seconds (None: no limit)
        until a publish, an ack freeing prefetch room, :meth:`stop` or
        :meth:`close`. Returns True if any callback ran.

        The in-thread path of blocking calls (with the broker's
        ``inline_calls``): while the drain of a caller's
        connection (one with a reply queue) would block, it runs the
        callbacks of other transports whose own drain is blocked (a server
        thread waiting for work), in the caller's thread: the request is
        handled and answered with no thread hand-off. Their callbacks still
        run one at a time and in order, and their drain returns only after
        them (see :class:`~tavrida.transports.memory.inbox.Inbox`).
        """
        return self.inbox.drain(timeout)

    def heartbeat(self) -> None:
        """Nothing to keep alive in-process."""

    def cancel(self) -> None:
        """Stop taking messages: cancel consumers, give back those not yet handed out.

        Deliveries a callback already has can still be acked or rejected.
        """
        with self._lock:
            if self.inbox.closed:
                return
            for consumer in self.inbox.take_consumers():
                self.broker.unsubscribe(consumer)
            self.broker.give_back(self.inbox.take_pending())

    def stop(self) -> None:
        """Make the current (or next) :meth:`drain` return promptly."""
        with self._lock:
            self.inbox.stop()

    def close(self) -> None:
        """Cancel consumers, requeue un-acked messages, delete reply queues."""
        with self._lock:
            inbox = self.inbox
            if inbox.closed:
                return
            broker = self.broker
            returned = inbox.close()
            broker.withdraw(inbox)
            for consumer in inbox.take_consumers():
                broker.unsubscribe(consumer)
            broker.give_back(returned, redelivered=True)
            for name in inbox.reply_queues:
                broker.delete_queue(name)
            inbox.wake()

    def delete(self, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Delete exchanges and queues with their bindings; missing ones are ignored."""
        with self._lock:
            for name in exchanges:
                self.broker.delete_exchange(name)
            for name in queues:
                self.broker.delete_queue(name)

    def queue_size(self, queue: str) -> int | None:
        """Messages ready in ``queue``; None if it does not exist."""
        return self.broker.queue_size(queue)
