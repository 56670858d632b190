"""What a server asks the broker to declare: exchanges, queues, bindings, delay queues.

Plain data, the same for every transport: a :class:`Topology` lists the
broker objects in the order they are declared, with the queue type and the
arguments each queue gets on RabbitMQ (:meth:`Topology.queue_arguments`).
Re-exported from :mod:`tavrida.transports.base`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, Optional, Tuple

from tavrida.config import check_choice

__all__ = [
    "QUEUE_TYPES",
    "Binding",
    "DelayQueue",
    "Topology",
    "check_queue_type",
    "dead_letter_queue_name",
    "delay_queue_name",
]


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
    and Redis hold it their own way (see
    :attr:`~tavrida.transports.base.Transport.holds_delays`).
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
    return check_choice("queue_type", queue_type, QUEUE_TYPES)


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
    them (:attr:`~tavrida.transports.base.Transport.holds_delays`); others
    leave them out.
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
