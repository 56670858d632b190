"""The transport seam: the few operations the core needs from a broker.

The core (messages, dispatcher, server, proxies) speaks only to
:class:`Transport`; it never imports a broker library. A transport moves
opaque bytes plus a header table between exchanges and queues, with RabbitMQ
topic-exchange semantics. Two implementations ship with tavrida:

* :mod:`tavrida.transports.memory` -- in-process, deterministic, no broker;
* :mod:`tavrida.transports.kombu` -- any kombu URL (RabbitMQ, Redis, ...).

The seam is: :class:`Transport` (declare, publish, consume, drain, settle
through :class:`Delivery`, stop, close), what crosses it
(:class:`OutgoingEnvelope` out, :class:`Delivery` in, the declarations of
:mod:`tavrida.transports.topology`, re-exported here) and the verdict on a
publish (:class:`~tavrida.transports.confirmation.Confirmation`, also
re-exported with :func:`confirm_all` and :func:`publish_error`).

Thread-safety contract: :meth:`Transport.publish`, :meth:`Delivery.ack`,
:meth:`Delivery.reject` and :meth:`Transport.stop` may be called from any
thread, and so may a :class:`~tavrida.transports.confirmation.Confirmation`'s
methods. :meth:`Transport.drain` is called from one thread only (the thread
that runs the server loop); callbacks run on that thread.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from tavrida import headers as header_names
from tavrida.transports.confirmation import Confirmation, confirm_all, publish_error
from tavrida.transports.topology import (
    QUEUE_TYPES,
    Binding,
    DelayQueue,
    Topology,
    check_queue_type,
    dead_letter_queue_name,
    delay_queue_name,
)

__all__ = [
    "DEAD_LETTER_EXCHANGE_HEADER",
    "DEAD_LETTER_QUEUE_HEADER",
    "DEAD_LETTER_REASON_HEADER",
    "DEAD_LETTER_ROUTING_KEY_HEADER",
    "QUEUE_TYPES",
    "Binding",
    "Confirmation",
    "DelayQueue",
    "Delivery",
    "OnMessage",
    "OutgoingEnvelope",
    "Topology",
    "Transport",
    "check_queue_type",
    "confirm_all",
    "dead_letter_queue_name",
    "delay_queue_name",
    "publish_error",
]

#: Header added to dead-lettered messages: why tavrida could not handle them.
DEAD_LETTER_REASON_HEADER = header_names.DEAD_LETTER_REASON
#: Header added to dead-lettered messages: the queue they came from.
DEAD_LETTER_QUEUE_HEADER = header_names.DEAD_LETTER_QUEUE
#: Headers added to dead-lettered messages: where they were first published.
DEAD_LETTER_EXCHANGE_HEADER = header_names.DEAD_LETTER_EXCHANGE
DEAD_LETTER_ROUTING_KEY_HEADER = header_names.DEAD_LETTER_ROUTING_KEY


@dataclasses.dataclass
class OutgoingEnvelope:
    """One message ready to publish: bytes, headers and where they go.

    ``exchange == ""`` is the default exchange: the message goes straight
    to the queue named by ``routing_key`` (used for dead letters).
    ``expiration`` (seconds, None: never) is how long the broker may keep the
    message before dropping it unread: the AMQP per-message TTL, set on the
    requests of blocking calls. Transports that cannot honour it may ignore
    it; the server checks :data:`tavrida.messages.EXPIRES_AT_HEADER` as well.

    ``mandatory``: a message no queue takes is an error
    (:class:`~tavrida.exceptions.Unroutable`), not a silent drop. Requests,
    answers and dead letters are mandatory; notifications are not (pub/sub
    with no subscriber is normal: the transport logs it at DEBUG).
    """

    exchange: str
    routing_key: str
    body: bytes
    headers: Dict[str, Any]
    content_type: Optional[str] = "application/json"
    content_encoding: Optional[str] = "utf-8"
    persistent: bool = True
    expiration: Optional[float] = None
    mandatory: bool = True


class Delivery(abc.ABC):
    """One message handed to a consumer callback.

    Exactly one of :meth:`ack` or :meth:`reject` must be called, once.
    Until then the broker holds the message and redelivers it if the
    connection is lost.
    """

    #: Raw message body, never decoded by the transport.
    body: bytes
    #: AMQP header table as the broker gave it (values may be any type).
    headers: Mapping[str, Any]
    #: Other properties present (content_type, content_encoding, ...).
    properties: Mapping[str, Any]
    exchange: str
    routing_key: str
    queue: str
    redelivered: bool

    @abc.abstractmethod
    def ack(self) -> None:
        """Tell the broker the message is done with."""

    @abc.abstractmethod
    def reject(self, requeue: bool) -> None:
        """Give the message back (``requeue=True``) or drop it."""

    @property
    def redelivery_due(self) -> bool:
        """True when the broker delivers this message again whatever is done with it now.

        (Its connection was lost before it was acked: an ack or reject is
        void.) A server then leaves it alone instead of dead-lettering it.
        The default is False.
        """
        return False


OnMessage = Callable[[Delivery], None]


class Transport(abc.ABC):
    """A connection to a broker, as the core sees it."""

    #: True when :meth:`declare` declares a topology's :attr:`Topology.delays` and
    #: a message published to a delay queue's name through the default exchange
    #: reaches its target after the delay, held by the broker (it survives the
    #: publisher). False: delays are not declared, and a server waits in process.
    holds_delays = False

    #: True when :meth:`publish` never waits on a network (it routes in process): an
    #: event loop may call it (:mod:`tavrida.aio`). False: it may block (a reconnect, a
    #: confirm), so asyncio code publishes from a thread.
    publish_never_blocks = False

    @abc.abstractmethod
    def declare(self, topology: Topology) -> None:
        """Declare exchanges, then queues, then bindings.

        Idempotent; a transport that reconnects declares them again.
        """

    @abc.abstractmethod
    def publish(self, envelope: OutgoingEnvelope) -> Confirmation:
        """Publish one message; return its :class:`Confirmation` once it is written.

        Never raises for the message's own failure: the verdict comes
        through the handle, whose ``wait()`` raises
        :class:`tavrida.exceptions.PublishFailed` when the broker refused it
        (nack, a missing exchange, a body over its limit), with
        ``unencodable`` when it can never be written as it is,
        :class:`~tavrida.exceptions.Unroutable` when no queue took a
        ``mandatory`` one, and
        :class:`~tavrida.exceptions.PublishConnectionFailed` when the broker
        could not be reached within the publish timeout or this thread's
        :meth:`deadline`.

        A transport that knows the verdict at once (memory, Redis) returns
        it settled; a confirming one (RabbitMQ) may return it pending, the
        verdict read by whoever waits on it (``wait``) or, for a handle
        nobody waits on (``add_done_callback``), by :meth:`drain`: its
        callbacks run in one of those two threads. A pending handle is
        failed at the transport's confirm timeout at the latest; a lost
        connection's unconfirmed messages are written again (at least
        once) unless their handle was cancelled. A batch is several
        handles: :func:`confirm_all` (written first, confirmed together).
        """

    def deadline(self, timeout: Optional[float]) -> "contextlib.AbstractContextManager[None]":
        """Bound the blocking operations this thread runs inside the block.

        ``with transport.deadline(2): ...``: connecting, reconnecting,
        declaring, publishing, draining, cancelling and closing give up
        ``timeout`` seconds after the block began (raising
        :class:`~tavrida.exceptions.ConnectionFailed` when the broker could not
        be reached; a cancel or close that cannot finish in time drops the
        connection). Blocks nest (the earliest
        deadline wins); ``None`` adds no bound. Transports that never block
        keep this no-op.
        """
        return contextlib.nullcontext()

    def interrupt(self) -> None:
        """The owner is stopping: wake :meth:`drain` and stop reconnecting.

        While the broker is unreachable, waiting drains return and
        publishes give up at once instead of retrying; nothing changes while
        it is connected (a graceful stop still finishes and acks). From any
        thread or a signal handler.
        """
        self.stop()

    @abc.abstractmethod
    def consume(self, queue: str, on_message: OnMessage, prefetch_count: int) -> None:
        """Start delivering messages of ``queue`` to ``on_message``.

        At most ``prefetch_count`` messages are un-acked at once
        (0 means no limit). Deliveries happen inside :meth:`drain`.
        """

    @abc.abstractmethod
    def drain(self, timeout: float) -> bool:
        """Deliver what is waiting; wait at most ``timeout`` seconds for it.

        Returns True when at least one message was delivered. Keeps
        heartbeats going and reconnects as needed.
        """

    @abc.abstractmethod
    def heartbeat(self) -> None:
        """Keep the connection alive during a long handler (no-op if none)."""

    def cancel(self) -> None:
        """Stop taking new messages: undelivered ones stay in their queues.

        Deliveries already handed out can still be acked or rejected.
        """

    def stop(self) -> None:
        """Wake a :meth:`drain` that is waiting, from any thread."""

    @abc.abstractmethod
    def close(self) -> None:
        """Cancel consumers and close the connection. Un-acked messages go back."""

    def delete(self, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Delete exchanges and queues (tests and reply queues clean up)."""
        raise NotImplementedError

    def queue_size(self, queue: str) -> Optional[int]:
        """Messages ready in ``queue``, if the broker can tell."""
        return None

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare a private auto-delete queue that goes away with this connection.

        Declared again after a reconnect; a RabbitMQ transport may give a
        queue with ``bindings`` a fresh name then (found by its bindings).
        """
        raise NotImplementedError
