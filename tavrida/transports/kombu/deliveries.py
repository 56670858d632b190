"""What the consuming side hands out and keeps: deliveries and consumers."""

from __future__ import annotations

import uuid
from typing import Any, Dict, Optional, Protocol, Set

from tavrida.transports.base import Delivery, OnMessage
from tavrida.transports.kombu.compat.redis_fetch import RedisFetch


class _Settles(Protocol):
    """Where a delivery's ack goes: the consuming connection's :class:`~.settlement.Settlement`."""

    def settle(self, delivery: "KombuDelivery", requeue: Optional[bool]) -> None: ...

    def current(self, generation: int) -> bool: ...


class KombuDelivery(Delivery):
    """A message received by :class:`KombuTransport`; ack/reject from any thread."""

    #: The consumer it came to (RabbitMQ, with acks): whose acks may be coalesced.
    _consumer: Optional["Consumer"] = None
    #: Its ack is sent as ``multiple``: it covers every earlier one of its channel.
    _multiple = False

    def __init__(self, settlement: _Settles, channel: Any, delivery_tag: Any,
                 generation: int, body: bytes, headers: Dict[str, Any],
                 properties: Dict[str, Any], exchange: str, routing_key: str, queue: str,
                 redelivered: bool, no_ack: bool = False) -> None:
        self.body = body
        self.headers = headers
        self.properties = properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.queue = queue
        self.redelivered = redelivered
        self._settlement = settlement
        self._channel = channel
        self._delivery_tag = delivery_tag
        self._generation = generation
        #: Taken without an ack (a reply queue): the broker forgot it already.
        self._no_ack = no_ack
        self._settled = no_ack

    def ack(self) -> None:
        """Acknowledge; dropped if the connection it came on is gone (it is redelivered).

        Nothing to do for a delivery taken without an ack (a reply queue).
        """
        if not self._no_ack:
            self._settlement.settle(self, None)

    def reject(self, requeue: bool) -> None:
        """Reject (``requeue=True`` gives it back to the queue); a no-op without acks."""
        if not self._no_ack:
            self._settlement.settle(self, bool(requeue))

    @property
    def redelivery_due(self) -> bool:
        """True once the connection it came on is gone (the broker has it back)."""
        return not self._no_ack and not self._settlement.current(self._generation)

    def __repr__(self) -> str:
        return (f"<KombuDelivery {self.queue!r} from {self.exchange!r}/{self.routing_key!r}"
                f" {len(self.body)} bytes>")


class Consumer:
    """What :meth:`KombuTransport.consume` was asked, kept to consume again after a reconnect."""

    def __init__(self, queue: str, on_message: OnMessage, prefetch_count: int,
                 no_ack: bool = False) -> None:
        self.queue = queue
        self.on_message = on_message
        self.prefetch_count = prefetch_count
        #: Consumed without acks: a reply queue (see :meth:`.ConsumingConnection.consume`).
        self.no_ack = no_ack
        self.tag = f"tavrida-{uuid.uuid4().hex}"
        self.channel: Any = None
        #: Delivery tags received on :attr:`channel` and not yet acked or rejected
        #: (RabbitMQ, with acks): an ack of several at once must cover exactly these.
        self.received: Set[int] = set()
        #: Redis only: the reliable fetch, kept across reconnects (see :class:`RedisFetch`).
        self.fetch: Optional[RedisFetch] = None
