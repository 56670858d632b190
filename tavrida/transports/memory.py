"""In-process transport: a small RabbitMQ look-alike living in this process.

Every :class:`MemoryTransport` whose config names the same virtual host
(``memory://name``; ``memory://`` is ``"/"``) talks to one shared
:class:`MemoryBroker`, so servers and clients in one process -- in threads
or in a single thread -- exchange messages without a real broker.

The broker behaves like RabbitMQ where tavrida can tell the difference:

* exchanges are topic exchanges (``*`` is exactly one word, ``#`` zero or
  more); a message goes once to every queue with a matching binding. A
  message no queue takes is counted in :attr:`MemoryBroker.unroutable`;
  publishing raises :class:`~tavrida.exceptions.Unroutable` for it unless
  the envelope is not ``mandatory`` (a notification nobody subscribes to),
  which is dropped with a DEBUG line;
* the default exchange ``""`` routes to the queue named by the routing key
  (unroutable when there is no such queue, as on RabbitMQ);
  publishing to an exchange that was never declared raises
  :class:`~tavrida.exceptions.PublishFailed`;
* queues are FIFO; competing consumers get messages round-robin, each up to
  its prefetch count; rejected-with-requeue and un-acked messages of a closed
  transport go back to the head of their queue marked ``redelivered``;
* delay queues (:attr:`Topology.delays <tavrida.transports.base.Topology.delays>`)
  hold each message for their delay on the broker's own clock, then move it
  to their target queue (see :mod:`.memory_delays`; a test moves the clock
  with :meth:`MemoryBroker.advance`).

Only bytes, header tables and properties cross the broker, always copied,
so a consumer never shares mutable state with its publisher. There are no
background threads: the broker hands messages to consumers when they are
published (as RabbitMQ pushes them), and a transport runs its callbacks only
inside :meth:`MemoryTransport.drain`. A single thread therefore sees a
deterministic order of events.

With :attr:`MemoryBroker.inline_calls` set (opt-in), blocking calls take
an in-thread path: while a caller waits for its answer,
its drain runs the callbacks of a server whose own thread is blocked waiting
for work, in the caller's thread, so a call to a server thread of the same
process costs no thread hand-off (the server's callbacks still run one at a
time and in order, and its drain returns only after them). A handler run that
way delays its caller even past the call's timeout, which is why it is
off by default (a call to a stuck handler must still time out).

Why one module of over 400 lines: draining, waiting, the in-thread path and
settling are one state machine of each transport (pending deliveries,
waiting drains, a batch borrowed by a caller) under the broker's one lock;
apart, each part would reach into the other's private state.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable

from tavrida import exceptions
from tavrida.config import ConnectionConfig
from tavrida.transports.base import (
    Binding,
    OnMessage,
    OutgoingEnvelope,
    Topology,
    Transport,
    publish_error,
)
from tavrida.transports.memory_broker import (
    _OPEN,
    _REQUEUED,
    _RETURNED,
    DEFAULT_EXCHANGE,
    MemoryBroker,
    MemoryDelivery,
    MemoryTransportError,
    _Consumer,
    _copy_table,
    _Message,
    _Queue,
)
from tavrida.transports.topic import topic_matches

LOG = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EXCHANGE",
    "MemoryBroker",
    "MemoryDelivery",
    "MemoryTransport",
    "MemoryTransportError",
    "topic_matches",
]


class MemoryTransport(Transport):
    """A connection to the in-process broker named by ``config.virtual_host``."""

    holds_delays = True

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        self.broker = MemoryBroker.get(config.virtual_host)
        self._lock = self.broker.lock
        #: Held (locked) except between a wake-up and the waiting drain taking it
        #: again: a binary semaphore, lighter than a Condition (see :meth:`_wait`).
        self._wakeup = threading.Lock()
        self._wakeup.acquire()
        #: Deliveries pushed by the broker, waiting for drain() to run them.
        self._pending: collections.deque[MemoryDelivery] = collections.deque()
        #: Every delivery not yet acked or rejected, by tag (pending ones too).
        self._unacked: dict[int, MemoryDelivery] = {}
        self._consumers: list[_Consumer] = []
        self._reply_queues: list[str] = []
        self._closed = False
        self._woken = False
        #: Drains blocked on _wakeup, and whether it was released for one of them.
        self._waiting = 0
        self._signalled = False
        #: Another thread runs a batch of our callbacks (see _help); our drain waits.
        self._borrowed = False
        #: In the broker's offers of transports a caller's drain may help.
        self._offered = False
        #: Our drain waits for a borrowed batch to end.
        self._reclaim = False
        #: Another thread ran callbacks of ours during the current drain.
        self._helped = False
        #: What a callback run by another thread raised, for our drain to raise.
        self._failure: Exception | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MemoryTransport {self.config.safe_url!r} {state}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryTransportError(reason=f"{self!r} is closed")

    def declare(self, topology: Topology) -> None:
        """Declare exchanges, queues, then bindings; idempotent, all or nothing."""
        with self._lock:
            self._check_open()
            self.broker._declare(topology.exchanges, topology.queues, topology.bindings,
                                 delays=topology.delays if self.holds_delays else ())

    def declare_reply_queue(self, queue: str, bindings: Iterable[Binding]) -> None:
        """Declare ``queue`` (deleted when this transport closes) and its bindings.

        Exchanges the bindings name are declared if missing.
        """
        bindings = list(bindings)
        with self._lock:
            self._check_open()
            self.broker._declare([binding.exchange for binding in bindings], [queue],
                                 bindings, owner=self)

    def publish(self, envelope: OutgoingEnvelope) -> None:
        """Route one message; raises PublishFailed if its exchange does not exist.

        Raises :class:`~tavrida.exceptions.Unroutable` when no queue takes a
        ``mandatory`` message.
        """
        message = _Message(envelope)
        with self._lock:
            if self._closed:
                raise exceptions.PublishFailed(exchange=envelope.exchange,
                                               routing_key=envelope.routing_key,
                                               reason="the transport is closed")
            self.broker._publish(message)

    def publish_many(self, envelopes: Iterable[OutgoingEnvelope]) -> None:
        """Route several messages under one lock.

        Every message is tried; one PublishFailed (an Unroutable when only
        unroutable ones failed) names each that failed in ``failed``.
        """
        envelopes = list(envelopes)
        messages = [_Message(envelope) for envelope in envelopes]
        failed: dict[int, str] = {}
        unroutable = []
        with self._lock:
            for index, message in enumerate(messages):
                if self._closed:
                    failed[index] = "the transport is closed"
                    continue
                try:
                    self.broker._publish(message)
                except exceptions.PublishFailed as exc:
                    failed[index] = exc.kwargs.get("reason", str(exc))
                    if isinstance(exc, exceptions.Unroutable):
                        unroutable.append(index)
        if failed:
            raise publish_error(envelopes, failed, unroutable=unroutable)

    def consume(self, queue: str, on_message: OnMessage, prefetch_count: int) -> None:
        """Register a consumer; its messages are delivered by :meth:`drain`."""
        if prefetch_count < 0:
            raise exceptions.IncorrectAMQPConfig(reason="prefetch_count must be >= 0")
        with self._lock:
            self._check_open()
            found = self.broker._queues.get(queue)
            if found is None or found.delay_ms:
                raise exceptions.IncorrectAMQPConfig(
                    reason=f"cannot consume from queue {queue!r}: it is "
                           + ("a delay queue" if found else "not declared"))
            consumer = _Consumer(found, on_message, prefetch_count, self)
            found.consumers.append(consumer)
            self._consumers.append(consumer)
            self.broker._dispatch(found)

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
        them (see :meth:`_help`).
        """
        lock = self._lock
        with lock:
            if self._closed:
                return False
            if self.broker.delays:
                self.broker.delays.release(self.broker)
            if not self._pending and not self._woken and (timeout is None or timeout > 0):
                self._block(None if timeout is None else time.monotonic() + timeout)
            self._woken = False
            ran, self._helped = self._helped, False
            if not self._pending:
                return ran
            batch = self._pending
            self._pending = collections.deque()
        self._run(batch)
        return True

    def _block(self, deadline: float | None) -> None:
        """Wait (lock held) for deliveries, stop, close or ``deadline``; help meanwhile."""
        lock = self._lock
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
            if self._pending or self._woken or self._closed:
                return
            remaining = -1.0 if deadline is None else deadline - time.monotonic()
            if deadline is not None and remaining <= 0:
                return
            delays = self.broker.delays
            if delays:
                # Wake when the next held message is due, to move it to its queue.
                due = delays.next_due()
                if due is not None and (remaining < 0 or due < remaining):
                    if due <= 0:
                        delays.release(self.broker)
                        continue
                    remaining = due
            if self._reply_queues and self.broker.inline_calls:
                borrowed = self.broker._borrow()
                if borrowed is not None:
                    lock.release()
                    try:
                        self._help(borrowed[0], borrowed[1], deadline)
                    finally:
                        lock.acquire()
                    continue
            self._wait(remaining)

    def _run(self, batch: collections.deque[MemoryDelivery]) -> None:
        """Run the callbacks of ``batch`` in order (lock not held).

        If one raises, the rest go back to the head of the pending ones.
        """
        while batch:
            delivery = batch.popleft()
            try:
                # Fresh copies for each delivery, made outside the broker lock.
                message = delivery._message
                delivery.headers = _copy_table(message.headers)
                delivery.properties = dict(message.properties)
                delivery._consumer.callback(delivery)
            except BaseException:
                with self._lock:
                    if not self._closed:
                        self._pending.extendleft(reversed(batch))
                raise

    def _help(self, owner: MemoryTransport, batch: collections.deque[MemoryDelivery],
              deadline: float | None) -> None:
        """Run ``owner``'s ``batch`` here while ``owner``'s drain stays blocked.

        Goes on with what ``owner`` gets meanwhile, while this transport
        has nothing and its ``deadline`` has not passed. An exception from
        a callback is raised by ``owner``'s drain, as if its own thread had
        run it; an interrupt (KeyboardInterrupt) stays in this thread.
        """
        lock = self._lock
        try:
            while True:
                try:
                    owner._run(batch)
                except Exception as exc:  # noqa: BLE001 - owner's drain raises it
                    with lock:
                        owner._failure = exc
                    return
                with lock:
                    if (self._pending or self._closed or not owner._pending
                            or not owner._waiting or owner._closed
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
                    owner._wake()

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
                if self._closed:
                    self._wake()  # every waiting drain returns once closed
            elif self._signalled and not self._waiting:
                # Released just after our timeout, for nobody else: lock it again.
                self._signalled = False
                self._wakeup.acquire(False)

    def _wake(self) -> None:
        """Wake a drain blocked in :meth:`_wait`, if any (broker lock held)."""
        if self._waiting and not self._signalled:
            self._signalled = True
            self._wakeup.release()

    def heartbeat(self) -> None:
        """Nothing to keep alive in-process."""

    def cancel(self) -> None:
        """Stop taking messages: cancel consumers, give back those not yet handed out.

        Deliveries a callback already has can still be acked or rejected.
        """
        with self._lock:
            if self._closed:
                return
            broker = self.broker
            for consumer in self._consumers:
                broker._cancel(consumer)
            self._consumers.clear()
            touched: dict[str, _Queue] = {}
            for delivery in reversed(self._pending):
                delivery._state = _RETURNED
                delivery._consumer.unacked -= 1
                del self._unacked[delivery.delivery_tag]
                queue = delivery._queue
                if queue.live:
                    queue.messages.appendleft((delivery._message, delivery.redelivered))
                    touched[queue.name] = queue
            self._pending.clear()
            for queue in touched.values():
                broker._dispatch(queue)

    def stop(self) -> None:
        """Make the current (or next) :meth:`drain` return promptly."""
        with self._lock:
            self._woken = True
            self._wake()

    def close(self) -> None:
        """Cancel consumers, requeue un-acked messages, delete reply queues."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            broker = self.broker
            if self._offered:
                self._offered = False
                broker._offers.remove(self)
            for consumer in self._consumers:
                broker._cancel(consumer)
            self._consumers.clear()
            returned = list(self._unacked.values())
            self._unacked.clear()
            self._pending.clear()
            touched: dict[str, _Queue] = {}
            for delivery in reversed(returned):
                delivery._state = _RETURNED
                delivery._consumer.unacked -= 1
                queue = delivery._queue
                if queue.live:
                    queue.messages.appendleft((delivery._message, True))
                    touched[queue.name] = queue
            for name in list(self._reply_queues):
                broker._delete_queue(name)
            for queue in touched.values():
                if queue.live:
                    broker._dispatch(queue)
            self._wake()

    def delete(self, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Delete exchanges and queues with their bindings; missing ones are ignored."""
        with self._lock:
            for name in exchanges:
                self.broker._delete_exchange(name)
            for name in queues:
                self.broker._delete_queue(name)

    def queue_size(self, queue: str) -> int | None:
        """Messages ready in ``queue``; None if it does not exist."""
        return self.broker.queue_size(queue)

    def _settle(self, delivery: MemoryDelivery, state: str) -> None:
        """Ack (``_ACKED``), drop (``_REJECTED``) or requeue (``_REQUEUED``)."""
        with self._lock:
            if delivery._state != _OPEN:
                raise MemoryTransportError(
                    reason=f"cannot ack or reject delivery #{delivery.delivery_tag} of queue "
                           f"{delivery.queue!r}: it was already {delivery._state}")
            delivery._state = state
            del self._unacked[delivery.delivery_tag]
            delivery._consumer.unacked -= 1
            queue = delivery._queue
            if not queue.live:
                return
            if state == _REQUEUED:
                queue.messages.appendleft((delivery._message, True))
            if queue.messages and queue.consumers:
                self.broker._dispatch(queue)
