"""Settling deliveries: acks and rejects queued, coalesced and sent by the connection's holder.

Acks and rejects from any thread are queued; whoever holds the consuming
connection next sends them: the caller itself when the connection is idle,
otherwise the draining thread after its current read. Acks made by
callbacks on the draining thread (inside :meth:`Settlement.delivering`)
wait while more messages are ready to be read; sent together, the acks of
one channel covering every message it received up to the highest become
one ``basic.ack`` with ``multiple``.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Deque, Dict, List, Optional, Protocol, Set, Tuple

from tavrida.transports.base import OnMessage
from tavrida.transports.kombu.context import KombuContext
from tavrida.transports.kombu.deliveries import KombuDelivery
from tavrida.transports.kombu.polling import Readable

LOG = logging.getLogger(__name__)

#: One queued settle: the delivery and ``None`` (ack) or its reject's ``requeue``.
Settle = Tuple[KombuDelivery, Optional[bool]]


class Liveness(Protocol):
    """What settling needs of the consuming connection: is it still the deliveries' one."""

    def current(self, generation: int) -> bool:
        """True while the connection of ``generation`` is up (its acks can go)."""

    def mark_broken(self) -> None:
        """A write failed: the connection is to be dropped by the next read."""


class Settlement:
    """The queue of acks and rejects of the consuming connection, and which are out.

    ``lock`` is the consuming connection's: held, the queue may be sent
    (:meth:`perform`); busy, it is left to the holder. Appending needs no
    lock (deque appends are atomic).
    """

    #: Most acks kept back to be sent as one (see :meth:`can_wait`).
    max_coalesced_acks = 25

    def __init__(self, context: KombuContext, lock: threading.RLock, link: Liveness,
                 poll_interval: float, min_poll_interval: float) -> None:
        self._context = context
        self._lock = lock
        self._link = link
        self._poll_interval = poll_interval
        self._min_poll_interval = min_poll_interval
        #: Acks and rejects waiting to be sent (the drain tests it without a call).
        self.queue: Deque[Settle] = collections.deque()
        #: Deliveries handed out and not yet acked or rejected (set ops are atomic; the
        #: drain tests it without a call).
        self.unsettled: Set[KombuDelivery] = set()
        #: How long the next read may block while deliveries are out (see :meth:`next_slice`).
        self._slice = poll_interval
        #: Thread running callbacks in drain() (its acks may be coalesced), else 0.
        self._delivering = 0
        #: Poll of the consuming socket: may acks wait (lock held).
        self._ack_poll = Readable()
        #: The block of :meth:`delivering`, made once (it runs per delivery batch).
        self._block = Delivering(self)

    def current(self, generation: int) -> bool:
        """True while the connection a delivery of ``generation`` came on is up."""
        return self._link.current(generation)

    def hand_out(self, ready: Deque[Tuple[KombuDelivery, OnMessage]]) -> bool:
        """Run the callbacks of the ``ready`` deliveries on this (the draining) thread,
        outside the lock; True.

        Each delivery is out until settled (reads stay short meanwhile); the
        acks the callbacks make wait for the next read (see :meth:`delivering`).
        """
        unsettled = self.unsettled
        self._delivering = threading.get_ident()
        try:
            # Tested first: an empty pop raised at every batch's end (bench.profiling "backlog").
            while ready:
                try:
                    delivery, on_message = ready.popleft()
                except IndexError:  # a reader of answers took the last one meanwhile
                    return True
                if not delivery._settled:
                    unsettled.add(delivery)
                    self._slice = self._min_poll_interval
                on_message(delivery)
            return True
        finally:
            self._delivering = 0

    def forget(self) -> None:
        """The connection is gone: what is out will be redelivered, not settled."""
        self.unsettled.clear()

    def next_slice(self) -> float:
        """How long the next read may block: short while handlers may ack from elsewhere."""
        if not self.unsettled:
            return self._poll_interval
        current = self._slice
        self._slice = min(current * 2, self._poll_interval)
        return current

    def delivering(self) -> "Delivering":
        """A block on the draining thread whose acks are queued, sent by the next read.

        The same block each time: it may be kept and entered again, not nested.
        """
        return self._block

    def give_back(self, delivery: KombuDelivery) -> None:
        """Queue a requeue of a delivery never handed out (lock held; see cancel)."""
        delivery._settled = True
        self.queue.append((delivery, True))

    def settle(self, delivery: KombuDelivery, requeue: Optional[bool]) -> None:
        """Queue an ack (``requeue is None``) or reject; do it now if the connection is free.

        An ack made in a callback on the draining thread waits while more
        messages are already waiting to be read (see :meth:`can_wait`):
        sent together, acks of one channel become one ``basic.ack``.
        """
        if delivery._settled:
            LOG.warning("%r was already acked or rejected; ignoring", delivery)
            return
        delivery._settled = True
        self.unsettled.discard(delivery)
        self._slice = self._min_poll_interval
        self.queue.append((delivery, requeue))
        if requeue is None and self._delivering == threading.get_ident():
            return  # drain() sends it before it waits for the next message
        # Busy means drain() is in the middle of a (short) read: it settles right after.
        if self._lock.acquire(blocking=False):
            try:
                self.perform()
            finally:
                self._lock.release()

    def can_wait(self, raw: Any) -> bool:
        """True while queued acks may wait: a few, and a message is ready to be read.

        Call with the lock held and acks queued; ``raw`` is the consuming
        connection's transport-level connection. A redelivery after a crash
        may then repeat up to :attr:`max_coalesced_acks` handled messages
        (at-least-once allows it).
        """
        context = self._context
        if (len(self.queue) >= self.max_coalesced_acks or not context.is_amqp
                or context.config.ssl or raw is None):
            return False
        transport = raw.transport
        sock = transport.sock if transport is not None else None
        return sock is not None and self._ack_poll.input_waits(transport, sock)

    def perform(self) -> None:
        """Send queued acks/rejects; call with the lock held.

        A channel's acks with nothing else queued for it, covering every
        message received on it up to the highest, go as one ``basic.ack``
        with ``multiple``; anything else goes one by one, in order.
        """
        queued = self.queue
        if not queued:
            return
        # Taken one by one: other threads append without the lock (list() then clear()
        # could drop an ack appended in between).
        settles = [queued.popleft()]
        while queued:
            settles.append(queued.popleft())
        if settles[1:]:
            settles = _coalesced(settles)
        errors = self._context.connection_errors + self._context.channel_errors
        link = self._link
        for delivery, requeue in settles:
            if not link.current(delivery._generation) or delivery._channel is None:
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
            except errors as exc:
                # drain() reconnects; the broker redelivers what was not acked.
                LOG.warning("could not settle %r (%s: %s)", delivery, type(exc).__name__, exc)
                link.mark_broken()
                continue
            if consumer is not None and delivery._channel is consumer.channel:
                if requeue is None and delivery._multiple:
                    tag = delivery._delivery_tag
                    consumer.received = {t for t in consumer.received if t > tag}
                else:
                    consumer.received.discard(delivery._delivery_tag)


class Delivering:
    """The block of :meth:`Settlement.delivering` (a class: it runs once per delivery batch)."""

    __slots__ = ("_settlement",)

    def __init__(self, settlement: Settlement) -> None:
        self._settlement = settlement

    def __enter__(self) -> None:
        self._settlement._delivering = threading.get_ident()

    def __exit__(self, *exc_info: Any) -> None:
        self._settlement._delivering = 0


def _coalesced(settles: List[Settle]) -> List[Settle]:
    """``settles`` with each channel's acks made one ``multiple`` ack where that is exact."""
    by_channel: Dict[int, List[Settle]] = {}
    for item in settles:
        by_channel.setdefault(id(item[0]._channel), []).append(item)
    result: List[Settle] = []
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
