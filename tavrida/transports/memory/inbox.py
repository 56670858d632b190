"""The receiving side of one in-memory connection: what the broker pushed, and who waits for it.

An :class:`Inbox` is the line between a
:class:`~tavrida.transports.memory.MemoryTransport` and its
:class:`~tavrida.transports.memory.MemoryBroker`. The broker reaches a
transport only through it: :meth:`Inbox.push` a delivery,
:meth:`Inbox.lend` a batch to a caller's drain (the in-thread path),
:meth:`Inbox.forget_consumer` / :meth:`Inbox.forget_reply_queue` when a
queue goes; always with the broker's lock held. The transport drains it
(:meth:`Inbox.drain`), settles through it (:meth:`Inbox.settle`) and
empties it when it cancels or closes.

The in-thread path (the broker's ``inline_calls``): while the drain of a
caller (an inbox with a reply queue) would block, it runs the batch of
another inbox whose own drain is blocked (a server thread waiting for
work), in the caller's thread; the owner's drain stays blocked until the
batch is given back, so its callbacks still run one at a time and in order.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING

from tavrida.transports.memory.records import (
    OPEN,
    REQUEUED,
    MemoryDelivery,
    MemoryTransportError,
    copy_table,
)

if TYPE_CHECKING:
    from tavrida.transports.memory.broker import MemoryBroker
    from tavrida.transports.memory.records import ConsumerRecord

__all__ = ["Inbox"]


class Inbox:
    """Deliveries pushed to one transport, its consumers and reply queues, and its waiting drains.

    Guarded by the broker's lock: every method but :meth:`drain`,
    :meth:`settle` and :meth:`run` (which take it themselves) is called
    with it held.
    """

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self._lock = broker.lock
        #: Held (locked) except between a wake-up and the waiting drain taking it
        #: again: a binary semaphore, lighter than a Condition (see _wait).
        self._wakeup = threading.Lock()
        self._wakeup.acquire()
        #: Deliveries pushed by the broker, waiting for drain() to run them.
        self._pending: collections.deque[MemoryDelivery] = collections.deque()
        #: Every delivery not yet acked or rejected, by tag (pending ones too).
        self._unacked: dict[int, MemoryDelivery] = {}
        self._consumers: list[ConsumerRecord] = []
        self._reply_queues: list[str] = []
        #: True once :meth:`close` ran (read it; only close() sets it).
        self.closed = False
        self._woken = False
        #: Drains blocked on _wakeup, and whether it was released for one of them.
        self._waiting = 0
        self._signalled = False
        #: Another thread runs a batch of ours (see _help); our drain waits.
        self._borrowed = False
        #: In the broker's offers of inboxes a caller's drain may help.
        self._offered = False
        #: Our drain waits for a borrowed batch to end.
        self._reclaim = False
        #: Another thread ran callbacks of ours during the current drain.
        self._helped = False
        #: What a callback run by another thread raised, for our drain to raise.
        self._failure: Exception | None = None

    # ------------------------------------------------------------------ state, read

    @property
    def waiting(self) -> int:
        """How many drains are blocked waiting for deliveries now."""
        return self._waiting

    @property
    def reply_queues(self) -> list[str]:
        """The reply queues of this connection (a copy), deleted when it closes."""
        return list(self._reply_queues)

    # ------------------------------------------------------------------ called by the broker

    def push(self, delivery: MemoryDelivery) -> bool:
        """Take ``delivery`` for the next drain, and wake a waiting one.

        True when the broker should offer this inbox to callers' drains (its
        drain is blocked, and it is not a caller's itself).
        """
        self._unacked[delivery.delivery_tag] = delivery
        self._pending.append(delivery)
        if self._waiting and not self._borrowed:
            self.wake()
            if not self._offered and not self._reply_queues:
                self._offered = True
                return True
        return False

    def lend(self) -> collections.deque[MemoryDelivery] | None:
        """The pending batch, for a caller's drain to run while ours stays blocked; or None.

        None unless a drain of ours is blocked with deliveries pending and
        no batch already lent. The borrower gives it back through
        :meth:`drain`'s in-thread path.
        """
        self._offered = False
        if self._waiting and self._pending and not self._borrowed and not self.closed:
            self._borrowed = True
            batch = self._pending
            self._pending = collections.deque()
            return batch
        return None

    def add_consumer(self, consumer: ConsumerRecord) -> None:
        self._consumers.append(consumer)

    def forget_consumer(self, consumer: ConsumerRecord) -> None:
        """``consumer``'s queue was deleted."""
        self._consumers.remove(consumer)

    def add_reply_queue(self, name: str) -> None:
        self._reply_queues.append(name)

    def forget_reply_queue(self, name: str) -> None:
        """Reply queue ``name`` was deleted."""
        if name in self._reply_queues:
            self._reply_queues.remove(name)

    # ------------------------------------------------------------------ called by the transport

    def take_consumers(self) -> list[ConsumerRecord]:
        """The consumers, forgotten here (the transport cancels them)."""
        consumers, self._consumers = self._consumers, []
        return consumers

    def take_pending(self) -> list[MemoryDelivery]:
        """The deliveries no callback has had yet, no longer pending nor un-acked here."""
        pending = list(self._pending)
        self._pending.clear()
        for delivery in pending:
            del self._unacked[delivery.delivery_tag]
        return pending

    def close(self) -> list[MemoryDelivery]:
        """Closed from now on; return every un-settled delivery, forgotten here."""
        self.closed = True
        returned = list(self._unacked.values())
        self._unacked.clear()
        self._pending.clear()
        return returned

    def stop(self) -> None:
        """Make the current (or next) drain return promptly."""
        self._woken = True
        self.wake()

    def settle(self, delivery: MemoryDelivery, state: str) -> None:
        """Ack, drop or requeue ``delivery`` (``state``; takes the broker's lock)."""
        with self._lock:
            if delivery.state != OPEN:
                raise MemoryTransportError(
                    reason=f"cannot ack or reject delivery #{delivery.delivery_tag} of queue "
                           f"{delivery.queue!r}: it was already {delivery.state}")
            delivery.state = state
            del self._unacked[delivery.delivery_tag]
            self.broker.settled(delivery, requeue=state == REQUEUED)

    def drain(self, timeout: float | None) -> bool:
        """Run the callbacks of every delivery pushed so far; see ``MemoryTransport.drain``."""
        lock = self._lock
        with lock:
            if self.closed:
                return False
            broker = self.broker
            if broker.delays:
                broker.delays.release(broker)
            if not self._pending and not self._woken and (timeout is None or timeout > 0):
                self._block(None if timeout is None else time.monotonic() + timeout)
            self._woken = False
            ran, self._helped = self._helped, False
            if not self._pending:
                return ran
            batch = self._pending
            self._pending = collections.deque()
        self.run(batch)
        return True

    def run(self, batch: collections.deque[MemoryDelivery]) -> None:
        """Run the callbacks of ``batch`` in order (lock not held).

        If one raises, the rest go back to the head of the pending ones.
        """
        while batch:
            delivery = batch.popleft()
            try:
                # Fresh copies for each delivery, made outside the broker lock.
                message = delivery.stored
                delivery.headers = copy_table(message.headers)
                delivery.properties = dict(message.properties)
                delivery.consumer.callback(delivery)
            except BaseException:
                with self._lock:
                    if not self.closed:
                        self._pending.extendleft(reversed(batch))
                raise

    # ------------------------------------------------------------------ blocking, helping

    def _block(self, deadline: float | None) -> None:
        """Wait (lock held) for deliveries, stop, close or ``deadline``; help meanwhile."""
        lock = self._lock
        broker = self.broker
        while True:
            if self._borrowed:
                # Another thread runs our callbacks: wait for them to end.
                self._reclaim = True
                self._wait(-1.0)
                continue
            if self._failure is not None:
                failure, self._failure = self._failure, None
                self._helped = False
                raise failure
            if self._pending or self._woken or self.closed:
                return
            remaining = -1.0 if deadline is None else deadline - time.monotonic()
            if deadline is not None and remaining <= 0:
                return
            delays = broker.delays
            if delays:
                # Wake when the next held message is due, to move it to its queue.
                due = delays.next_due()
                if due is not None and (remaining < 0 or due < remaining):
                    if due <= 0:
                        delays.release(broker)
                        continue
                    remaining = due
            if self._reply_queues and broker.inline_calls:
                borrowed = broker.borrow()
                if borrowed is not None:
                    lock.release()
                    try:
                        self._help(borrowed[0], borrowed[1], deadline)
                    finally:
                        lock.acquire()
                    continue
            self._wait(remaining)

    def _help(self, owner: Inbox, batch: collections.deque[MemoryDelivery],
              deadline: float | None) -> None:
        """Run ``owner``'s ``batch`` here while ``owner``'s drain stays blocked.

        Goes on with what ``owner`` gets meanwhile, while this inbox has
        nothing and its ``deadline`` has not passed. An exception from a
        callback is raised by ``owner``'s drain, as if its own thread had
        run it; an interrupt (KeyboardInterrupt) stays in this thread.
        """
        lock = self._lock
        try:
            while True:
                try:
                    owner.run(batch)
                except Exception as exc:  # noqa: BLE001 - owner's drain raises it
                    with lock:
                        owner._failure = exc
                    return
                with lock:
                    if (self._pending or self.closed or not owner._pending
                            or not owner._waiting or owner.closed
                            or (deadline is not None and time.monotonic() >= deadline)):
                        return
                    batch = owner._pending
                    owner._pending = collections.deque()
        finally:
            with lock:
                owner._borrowed = False
                owner._helped = True
                if owner._reclaim or owner._pending or owner._failure is not None:
                    owner._reclaim = False
                    owner.wake()

    def _wait(self, timeout: float) -> None:
        """Block (broker lock held, released meanwhile) until woken or ``timeout`` (-1: none)."""
        lock = self._lock
        self._waiting += 1
        lock.release()
        taken = False
        try:
            taken = self._wakeup.acquire(True, timeout)
        finally:
            lock.acquire()
            self._waiting -= 1
            if taken:
                self._signalled = False
                if self.closed:
                    self.wake()  # every waiting drain returns once closed
            elif self._signalled and not self._waiting:
                # Released just after our timeout, for nobody else: lock it again.
                self._signalled = False
                self._wakeup.acquire(False)

    def wake(self) -> None:
        """Wake a drain blocked waiting, if any (lock held; once closed, each wakes the next)."""
        if self._waiting and not self._signalled:
            self._signalled = True
            self._wakeup.release()
