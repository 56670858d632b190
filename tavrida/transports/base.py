"""The transport seam: the few operations the core needs from a broker.

The core (messages, dispatcher, server, proxies) speaks only to
:class:`Transport`; it never imports a broker library. A transport moves
opaque bytes plus a header table between exchanges and queues, with RabbitMQ
topic-exchange semantics. Two implementations ship with tavrida:

* :mod:`tavrida.transports.memory` -- in-process, deterministic, no broker;
* :mod:`tavrida.transports.kombu` -- any kombu URL (RabbitMQ, Redis, ...).

Thread-safety contract: :meth:`Transport.publish`, :meth:`Delivery.ack`,
:meth:`Delivery.reject` and :meth:`Transport.stop` may be called from any
thread. :meth:`Transport.drain` is called from one thread only (the thread
that runs the server loop); callbacks run on that thread.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from tavrida import exceptions
from tavrida import headers as header_names

#: Header added to dead-lettered messages: why tavrida could not handle them.
DEAD_LETTER_REASON_HEADER = header_names.DEAD_LETTER_REASON
#: Header added to dead-lettered messages: the queue they came from.
DEAD_LETTER_QUEUE_HEADER = header_names.DEAD_LETTER_QUEUE
#: Headers added to dead-lettered messages: where they were first published.
DEAD_LETTER_EXCHANGE_HEADER = header_names.DEAD_LETTER_EXCHANGE
DEAD_LETTER_ROUTING_KEY_HEADER = header_names.DEAD_LETTER_ROUTING_KEY


def dead_letter_queue_name(queue: str) -> str:
    """Name of the dead-letter queue that belongs to ``queue``."""
    return queue + ".dead"


def delay_queue_name(queue: str, delay_ms: int) -> str:
    """Name of the queue holding messages ``delay_ms`` milliseconds before ``queue`` gets them."""
    return f"{queue}.retry.{delay_ms}"


@dataclasses.dataclass(frozen=True)
class DelayQueue:
    """A queue holding each message ``delay_ms`` milliseconds, then moving it to ``target``.

    A message published to :attr:`name` through the default exchange waits
    on the broker (not in any process) and then goes to the end of
    ``target``, as if published there through the default exchange: headers,
    body and properties unchanged. On RabbitMQ it is a durable queue with
    ``x-message-ttl`` that dead-letters to ``target``; the memory transport
    and Redis hold it their own way (see :attr:`Transport.holds_delays`).
    Servers declare one per backoff step of their retries.
    """

    target: str
    delay_ms: int

    @property
    def name(self) -> str:
        """The queue to publish to: ``<target>.retry.<delay_ms>``."""
        return delay_queue_name(self.target, self.delay_ms)


@dataclasses.dataclass(frozen=True)
class Binding:
    """Bind ``queue`` to topic ``exchange`` with ``routing_key`` (a pattern)."""

    queue: str
    exchange: str
    routing_key: str


#: Queue types a server may ask for: ``classic`` (tavrida 1.0's) or ``quorum`` (RabbitMQ 3.8+).
QUEUE_TYPES = ("classic", "quorum")


def check_queue_type(queue_type: str) -> str:
    """``queue_type`` if it is one of :data:`QUEUE_TYPES`; else a clear error."""
    if queue_type not in QUEUE_TYPES:
        raise exceptions.IncorrectAMQPConfig(
            reason=f"queue_type must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
    return queue_type


@dataclasses.dataclass(frozen=True)
class Topology:
    """Broker objects a server needs, declared in this order.

    Exchanges are durable topic exchanges with no arguments, queues are
    durable, non-exclusive, non-auto-delete queues with no arguments (the
    tavrida 1.0 declaration, so both versions can share the names).

    ``queue_type="quorum"`` declares every queue as a RabbitMQ quorum queue
    instead (replicated over the cluster; new names only, see
    :func:`queue_arguments`); ``delivery_limit`` bounds how often the broker
    delivers one message of a queue whose dead-letter queue is in the
    topology too, before it dead-letters it there.

    ``delays`` are declared after the queues, by transports that can hold
    them (:attr:`Transport.holds_delays`); others leave them out.
    """

    exchanges: Tuple[str, ...] = ()
    queues: Tuple[str, ...] = ()
    bindings: Tuple[Binding, ...] = ()
    queue_type: str = "classic"
    delivery_limit: Optional[int] = None
    delays: Tuple[DelayQueue, ...] = ()

    @classmethod
    def build(
        cls,
        exchanges: Iterable[str] = (),
        queues: Iterable[str] = (),
        bindings: Iterable[Binding] = (),
        queue_type: str = "classic",
        delivery_limit: Optional[int] = None,
        delays: Iterable[DelayQueue] = (),
    ) -> "Topology":
        """Make a topology, dropping duplicates but keeping the first order."""
        return cls(
            tuple(dict.fromkeys(exchanges)),
            tuple(dict.fromkeys(queues)),
            tuple(dict.fromkeys(bindings)),
            check_queue_type(queue_type),
            delivery_limit,
            tuple(dict.fromkeys(delays)),
        )

    def delay(self, queue: str) -> Optional[DelayQueue]:
        """The delay queue of this topology named ``queue``, if any."""
        for delay in self.delays:
            if delay.name == queue:
                return delay
        return None

    def queue_arguments(self, queue: str) -> Dict[str, Any]:
        """The declare arguments of ``queue``: none for classic ones (the 1.0 declaration).

        A quorum queue gets ``x-queue-type: quorum``; when its dead-letter
        queue (:func:`dead_letter_queue_name`) is in the topology too, the
        broker dead-letters there (``x-dead-letter-exchange`` ``""``,
        ``x-dead-letter-routing-key``) what it delivered ``delivery_limit``
        times without an ack (``x-delivery-limit``: a message that kills
        its consumer every time, say).

        A delay queue (:attr:`delays`) gets ``x-message-ttl`` and dead-letters
        to its target (``x-dead-letter-exchange`` ``""``,
        ``x-dead-letter-routing-key``); quorum as the others.
        """
        delay = self.delay(queue)
        if delay is not None:
            arguments: Dict[str, Any] = {"x-message-ttl": delay.delay_ms,
                                         "x-dead-letter-exchange": "",
                                         "x-dead-letter-routing-key": delay.target}
            if self.queue_type == "quorum":
                arguments["x-queue-type"] = "quorum"
            return arguments
        if self.queue_type != "quorum":
            return {}
        arguments = {"x-queue-type": "quorum"}
        dead = dead_letter_queue_name(queue)
        if dead in self.queues:
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = dead
            if self.delivery_limit is not None:
                arguments["x-delivery-limit"] = self.delivery_limit
        return arguments


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


#: Called with None once a deferred publish was confirmed, or with why it failed.
OnConfirmed = Callable[[Optional[exceptions.PublishFailed]], None]


class Deferral:
    """A publish allowed to return before its confirm (see :meth:`Transport.deferring`)."""

    def __init__(self, on_confirmed: OnConfirmed) -> None:
        self.on_confirmed = on_confirmed
        #: True once a publish was written and its outcome left to ``on_confirmed``.
        self.taken = False


class Transport(abc.ABC):
    """A connection to a broker, as the core sees it."""

    #: True when :meth:`declare` declares a topology's :attr:`Topology.delays` and
    #: a message published to a delay queue's name through the default exchange
    #: reaches its target after the delay, held by the broker (it survives the
    #: publisher). False: delays are not declared, and a server waits in process.
    holds_delays = False

    @abc.abstractmethod
    def declare(self, topology: Topology) -> None:
        """Declare exchanges, then queues, then bindings.

        Idempotent; a transport that reconnects declares them again.
        """

    @abc.abstractmethod
    def publish(self, envelope: OutgoingEnvelope) -> None:
        """Publish one message; return once the broker has it.

        On a confirming transport this waits for the confirm and raises
        :class:`tavrida.exceptions.PublishFailed` if the broker refused it,
        :class:`~tavrida.exceptions.Unroutable` if no queue took a
        ``mandatory`` one, and
        :class:`~tavrida.exceptions.PublishConnectionFailed` when the broker
        could not be reached within the publish timeout or :meth:`deadline`.
        """

    def publish_many(self, envelopes: Iterable[OutgoingEnvelope]) -> None:
        """Publish several messages; return once the broker has all of them.

        Raises one PublishFailed naming every message that failed (see
        :func:`publish_error`). Transports that can pipeline publisher
        confirms override this.
        """
        batch = list(envelopes)
        failed: Dict[int, str] = {}
        unroutable = []
        for index, envelope in enumerate(batch):
            try:
                self.publish(envelope)
            except exceptions.Unroutable as exc:
                failed[index] = exc.kwargs.get("reason", str(exc))
                unroutable.append(index)
        if failed:
            raise publish_error(batch, failed, unroutable=unroutable)

    def publish_request(self, envelope: OutgoingEnvelope,
                        answered: Callable[[], bool]) -> None:
        """Publish the request of a blocking call, whose answer comes to a reply queue here.

        Like :meth:`publish`, but the answer may come before the confirm:
        an answer proves the broker routed the request, so a confirming
        transport may read its reply queue while it waits for the confirm
        and return as soon as ``answered()`` is true. A nack or a return seen
        before that still raises as :meth:`publish` does. The default is
        :meth:`publish`.
        """
        self.publish(envelope)

    def deferring(self, on_confirmed: "OnConfirmed"
                  ) -> "contextlib.AbstractContextManager[Deferral]":
        """Let this thread's next publish inside the block return before its confirm.

        ``with transport.deferring(done) as deferral: ...``: when the
        transport takes the deferral (``deferral.taken`` after the block),
        that publish only wrote the message, and ``done`` is called once,
        later, on the thread running :meth:`drain` (outside the transport's
        locks): with None once the broker confirmed it, or with the
        :class:`~tavrida.exceptions.PublishFailed` saying why not (nack,
        return, no confirm within the confirm timeout, or the broker lost
        for good). Otherwise that publish behaved as :meth:`publish` does and
        ``done`` is never called. Lets a server publish its next answer
        while the broker confirms the last one. The default never defers.
        """
        return contextlib.nullcontext(Deferral(on_confirmed))

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
        """Declare a private auto-delete queue that goes away with this connection."""
        raise NotImplementedError


def publish_error(envelopes: Sequence[OutgoingEnvelope], failed: Mapping[int, str],
                  unencodable: Iterable[int] = (),
                  unroutable: Iterable[int] = ()) -> exceptions.PublishFailed:
    """The one exception that reports the failed messages of a publish.

    ``failed`` maps indexes into ``envelopes`` to reasons. When every
    failure is unroutable it is an :class:`~tavrida.exceptions.Unroutable`,
    else a :class:`~tavrida.exceptions.PublishFailed`; either way ``failed``,
    ``envelopes`` (the failed ones), ``unencodable`` and ``unroutable`` say
    which message failed how.
    """
    first = min(failed)
    envelope = envelopes[first]
    reason = failed[first]
    if len(envelopes) > 1:
        reason = (f"{len(failed)} of {len(envelopes)} messages failed "
                  f"(indexes {sorted(failed)}); first: {reason}")
    unroutable = sorted(unroutable)
    kind = (exceptions.Unroutable if unroutable and len(unroutable) == len(failed)
            else exceptions.PublishFailed)
    return kind(exchange=envelope.exchange, routing_key=envelope.routing_key, reason=reason,
                failed=dict(failed), envelopes=[envelopes[index] for index in sorted(failed)],
                unencodable=sorted(unencodable), unroutable=unroutable)
